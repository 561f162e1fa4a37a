"""The test-set evaluation, run once at the end: accuracy, loss, F1, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score

_EPSILON = 1e-7  # Keras clips probabilities the same way in its cross-entropy


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # categorical cross-entropy, as Keras computes it
    macro_f1: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    report: dict  # scikit-learn's per-class precision, recall, F1 and support
    predicted: np.ndarray  # predicted class per test image

    def metrics(self) -> dict[str, float]:
        return {"test_accuracy": self.accuracy, "test_loss": self.loss, "macro_f1": self.macro_f1}


def loss_and_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Categorical cross-entropy, as Keras computes it, and accuracy of predicted class
    probabilities (N, classes) against integer labels (N,)."""
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0 - _EPSILON))))
    return loss, float(np.mean(probabilities.argmax(axis=1) == labels))


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Score predicted class probabilities (N, classes) against integer labels (N,)."""
    classes = np.arange(probabilities.shape[1])
    predicted = probabilities.argmax(axis=1)
    loss, accuracy = loss_and_accuracy(probabilities, labels)
    return Evaluation(
        accuracy=accuracy,
        loss=loss,
        macro_f1=float(f1_score(labels, predicted, labels=classes, average="macro")),
        confusion=confusion_matrix(labels, predicted, labels=classes),
        report=classification_report(
            labels, predicted, labels=classes, output_dict=True, zero_division=0
        ),
        predicted=predicted,
    )
