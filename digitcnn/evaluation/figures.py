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
    """A grid of up to `limit` misclassified test images, each captioned true -> predicted.

    Drawn as one mosaic in a single axes: 36 separate subplots take about a second to render.
    """
    wrong = np.flatnonzero(predicted != labels)[:limit]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    h, w = images.shape[1:3]
    pad, caption = max(1, h // 14), max(4, h // 3)
    cell_h, cell_w = h + caption + pad, w + pad
    mosaic = np.ones((rows * cell_h, cols * cell_w), np.float32)  # white paper
    fig, ax = plt.subplots(figsize=(cols * 1.6, rows * 1.9 + 0.6))
    for k, i in enumerate(wrong):
        top, left = (k // cols) * cell_h + caption, (k % cols) * cell_w
        mosaic[top : top + h, left : left + w] = 1.0 - images[i].squeeze()  # dark ink
        ax.text(
            left + w / 2,
            top - 1,
            f"{labels[i]} -> {predicted[i]}",
            ha="center",
            va="bottom",
            fontsize=10,
        )
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    total = int(np.sum(predicted != labels))
    ax.set_title(f"Misclassified test images: true -> predicted ({len(wrong)} of {total})")
    fig.tight_layout()
    return fig


def objective_figure(series: dict[str, list[tuple[str, float]]], objective: str) -> Figure:
    """One panel per swept parameter: the objective of each job against the value it had.

    Numeric values get a numeric axis (log-scaled when they span a decade or more);
    others are categories.
    """
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.8), squeeze=False)
    for ax, (key, points) in zip(axes.flat, series.items(), strict=True):
        values = [v for v, _ in points]
        scores = [s for _, s in points]
        try:
            numeric = [float(v) for v in values]
        except ValueError:
            categories = sorted(set(values))
            ax.scatter([categories.index(v) for v in values], scores)
            ax.set_xticks(range(len(categories)), categories, rotation=30)
        else:
            ax.scatter(numeric, scores)
            positive = [v for v in numeric if v > 0]
            if len(positive) == len(numeric) and positive and max(positive) / min(positive) >= 10:
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{objective} per job")
    fig.tight_layout()
    return fig
