"""The Keras callback that hands each epoch's metrics to a recorder; no MLflow here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import keras


class EpochRecorder(Protocol):
    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None: ...


class EpochMetricsLogger(keras.callbacks.Callback):
    """One `log_batch` per epoch, step = epoch number (1-based), written in the background;
    nothing per batch."""

    def __init__(self, recorder: EpochRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.recorder.log_epoch(dict(logs or {}), step=epoch + 1)
