"""Debug modes (`debug=fast_dev_run|overfit|profile`): what each changes in a job, the Keras
callbacks it adds, and its verdict."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import keras

from digitcnn.core.config import Config
from digitcnn.core.errors import InputError
from digitcnn.data import Dataset

log = logging.getLogger("digitcnn")


def prepare(typed: Config, data: Dataset) -> tuple[Config, Dataset]:
    """The config and data a debug mode runs with; a debug run never registers a model."""
    debug, trainer = typed.debug, typed.trainer
    if debug.mode == "none":
        return typed, data
    typed = dataclasses.replace(
        typed, tracking=dataclasses.replace(typed.tracking, register_as=None)
    )
    n = debug.batches * trainer.batch_size
    if debug.mode == "fast_dev_run":
        data = dataclasses.replace(
            data, x_train=data.x_train[:n], y_train=data.y_train[:n], x_val=data.x_val[:n],
            y_val=data.y_val[:n], x_test=data.x_test[:n], y_test=data.y_test[:n],
        )  # fmt: skip
    elif debug.mode == "overfit":
        x, y = data.x_train[:n], data.y_train[:n]  # fixed: the same batches every epoch
        data = dataclasses.replace(data, x_train=x, y_train=y, x_val=x, y_val=y)
        trainer = dataclasses.replace(trainer, epochs=debug.max_epochs)
        typed = dataclasses.replace(typed, trainer=trainer)
    return typed, data


class StopWhenFitted(keras.callbacks.Callback):
    """Stops training once the epoch's training accuracy reaches `target`."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.fitted_after: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (logs or {}).get("accuracy", 0.0) >= self.target:
            self.fitted_after = epoch + 1
            self.model.stop_training = True


def callbacks(typed: Config, output_dir: Path) -> list[keras.callbacks.Callback]:
    if typed.debug.mode == "overfit":
        return [StopWhenFitted(typed.debug.target_accuracy)]
    if typed.debug.mode == "profile":
        first, last = typed.debug.profile_batches
        return [ProfileSteps(output_dir / "profile", first, last)]
    return []


def verdict(typed: Config, added: list[keras.callbacks.Callback], history: dict) -> dict:
    """The debug run's own metrics; an overfit run that never fitted its batches fails."""
    if typed.debug.mode != "overfit":
        return {}
    (stop,) = [c for c in added if isinstance(c, StopWhenFitted)]
    reached = max(history.get("accuracy", [0.0]))
    if stop.fitted_after is None:
        raise InputError(
            f"debug=overfit: {typed.debug.batches} batches not fitted in "
            f"debug.max_epochs={typed.debug.max_epochs} (training accuracy {reached:.4f} < "
            f"{typed.debug.target_accuracy}): the model or the loss cannot learn them"
        )
    log.info("overfit: %d batches fitted (accuracy %.4f) after %d epochs",
             typed.debug.batches, reached, stop.fitted_after)  # fmt: skip
    return {"overfit_epochs": stop.fitted_after, "overfit_accuracy": reached}


class ProfileSteps(keras.callbacks.Callback):
    """The backend's own profiler over training steps `first`..`last` (1-based), its trace
    written under `folder`: TensorFlow's and JAX's XPlane traces (TensorBoard's profile plugin
    and Perfetto read them), torch's Chrome trace."""

    def __init__(self, folder: Path, first: int, last: int) -> None:
        super().__init__()
        self.folder, self.first, self.last = folder, first, last
        self._step = 0
        self._torch = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._step += 1
        if self._step == self.first:
            self.folder.mkdir(parents=True, exist_ok=True)
            backend = keras.backend.backend()
            if backend == "tensorflow":
                import tensorflow as tf

                tf.profiler.experimental.start(str(self.folder))
            elif backend == "jax":
                import jax

                jax.profiler.start_trace(str(self.folder))
            else:
                import torch

                self._torch = torch.profiler.profile()
                self._torch.start()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._step == self.last:
            self._stop()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.first <= self._step < self.last:  # the epoch ended first
            self._stop()

    def _stop(self) -> None:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            tf.profiler.experimental.stop()
        elif backend == "jax":
            import jax

            jax.profiler.stop_trace()
        elif self._torch is not None:
            self._torch.stop()
            self._torch.export_chrome_trace(str(self.folder / "trace.json"))
