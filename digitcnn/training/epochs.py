"""The epochs a run has yet to train: from its checkpoint (or the start) to `trainer.epochs`,
a checkpoint saved after each, and what the fit took, split into warm-up and steady state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from digitcnn.core import faults
from digitcnn.core.config import Config
from digitcnn.data import Dataset
from digitcnn.training import debug
from digitcnn.training.checkpointing import EpochCheckpoint
from digitcnn.training.fit import TrainResult, train
from digitcnn.training.timing import Timings, process_age

log = logging.getLogger("digitcnn")


@dataclass(frozen=True)
class Trained:
    history: dict[str, list[float]]  # every epoch's metrics, those before a resume included
    metrics: dict[str, float] = field(default_factory=dict)  # none when nothing was left
    validation_probabilities: np.ndarray | None = None  # the last epoch's, when it trained


def train_remaining(
    typed: Config,
    model: keras.Model,
    data: Dataset,
    saver: EpochCheckpoint,
    callbacks: list[keras.callbacks.Callback],
    timings: Timings,
    done: int = 0,
) -> Trained:
    """Train the epochs after the `done` ones (a resumed run's, in `saver`'s history) with
    `callbacks` after the checkpoint's (a pruned trial's last epoch is then saved); nothing
    when all were trained already (a run stopped while it was tested and recorded)."""
    if done >= typed.trainer.epochs:
        log.info("all %d epochs were trained; evaluating and recording", done)
        return Trained(saver.history, history_metrics(saver.history, len(data.x_train)))
    timings.set("fit_start_seconds", process_age())
    checks = debug.callbacks(typed, Path(typed.paths.output_dir))
    result = train(
        model,
        data,
        typed.optimizer,
        typed.trainer,
        [saver, *callbacks, *checks],
        initial_epoch=done,
        seed=typed.seed + done,
    )
    timings.set("fit_seconds", result.train_seconds)
    if done:  # a resumed run: the time of all its epochs, whichever process trained them
        metrics = history_metrics(saver.history, len(data.x_train))
    else:
        metrics = fit_metrics(result, len(data.x_train))
    for name, value in metrics.items():
        timings.set(name, value)
    metrics |= debug.verdict(typed, checks, saver.history)
    return Trained(saver.history, metrics, result.validation_probabilities)


def history_metrics(history: dict[str, list[float]], train_size: int) -> dict[str, float]:
    """`fit_metrics` of a run trained by several processes (stopped and resumed), from each
    epoch's own time in its history: `train_seconds` is their sum (the time between epochs,
    a resumed process's start-up, is not in it), `first_epoch_seconds` the run's first
    epoch's, the steady state the median of the others."""
    seconds = history.get("epoch_seconds") or [0.0]
    total = sum(seconds)
    metrics = {
        "train_seconds": total,
        "images_per_second": train_size * len(seconds) / total if total > 0 else 0.0,
        "first_epoch_seconds": seconds[0],
    }
    if len(seconds) > 1:
        steady = sorted(seconds[1:])[len(seconds[1:]) // 2]
        metrics["steady_images_per_second"] = train_size / steady
        metrics["warmup_seconds"] = max(seconds[0] - steady, 0.0)
    return metrics


def fit_metrics(result: TrainResult, train_size: int) -> dict[str, float]:
    """The fit's time, split into its first epoch (tracing and compilation included) and the
    steady state of the epochs after it: `warmup_seconds` is how much longer the first took
    than a steady epoch (mostly compilation)."""
    seconds = result.history["epoch_seconds"]
    metrics = {
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "first_epoch_seconds": seconds[0],
    }
    if len(seconds) > 1:
        steady = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median steady epoch
        metrics["steady_images_per_second"] = train_size / steady
        metrics["warmup_seconds"] = max(seconds[0] - steady, 0.0)
    return metrics


class EpochFaultPoints(keras.callbacks.Callback):
    """The fault point after each epoch (`epoch-N`, see digitcnn.core.faults): its checkpoint
    saved and its metrics written by `settle`. Last in the callbacks."""

    def __init__(self, settle, job: int | None = None) -> None:
        super().__init__()
        self.settle, self.job = settle, job

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        faults.point(f"epoch-{epoch + 1}", self.settle, self.job)


class MidEpochFaultPoints(EpochFaultPoints):
    """Also `mid-epoch-N`, once half of epoch N's batches are trained (before its end): used
    only while such a point is armed, since a batch hook makes Keras call back after every
    batch."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.passed = epoch + 1, False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # `batch` is the last of the batches one call ran (steps_per_execution of them)
        if not self.passed and batch + 1 >= max(1, (self.params.get("steps") or 2) // 2):
            self.passed = True
            faults.point(f"mid-epoch-{self.epoch}", self.settle, self.job)


def fault_points(settle, job: int | None = None) -> EpochFaultPoints:
    """The callback that passes the fault points of epochs (see digitcnn.core.faults)."""
    kind = MidEpochFaultPoints if faults.armed_inside_epochs() else EpochFaultPoints
    return kind(settle, job)
