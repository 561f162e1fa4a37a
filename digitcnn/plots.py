"""Figures of a finished run: confusion matrix, learning curves, misclassified images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure


def confusion_figure(confusion: np.ndarray, accuracy: float) -> Figure:
    """Seaborn heatmap of counts, true classes down, predicted across."""
    fig, ax = plt.subplots(figsize=(8, 6.5))
    sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", cbar=True, ax=ax, square=True)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(f"Confusion matrix (test accuracy {accuracy:.2%}, n={confusion.sum()})")
    fig.tight_layout()
    return fig


def learning_curves_figure(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    fig.tight_layout()
    return fig


def misclassified_figure(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, limit: int = 36
) -> Figure:
    """A grid of up to `limit` misclassified test images, titled true -> predicted."""
    wrong = np.flatnonzero(predicted != labels)[:limit]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[i].squeeze(), cmap="gray_r")
        ax.set_title(f"{labels[i]} -> {predicted[i]}", fontsize=10)
    total = int(np.sum(predicted != labels))
    fig.suptitle(f"Misclassified test images: true -> predicted ({len(wrong)} of {total})")
    fig.tight_layout()
    return fig
