"""Seeding, backend settings and Keras `fit`. Knows nothing of MLflow: recorders come in as
callbacks."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import keras
import numpy as np

from digitcnn.core import stops
from digitcnn.core.config_groups import OptimizerConfig, TrainerConfig
from digitcnn.core.errors import ConfigValueError
from digitcnn.core.runtime import native_stderr_hidden
from digitcnn.data import Dataset
from digitcnn.models.optimizers import build_optimizer
from digitcnn.training.averaging import averaged_weights
from digitcnn.training.backends import resolved_jit
from digitcnn.training.batching import training_batches
from digitcnn.training.batchnorm import RecalibratedValidation

log = logging.getLogger(__name__)


def configure_backend(cfg: TrainerConfig, seed: int, threads: tuple[int, int] = (0, 0)) -> None:
    """Threads (intra-op, inter-op; 0 = the backend's choice), determinism, precision and
    seeds; call before the first tensor is made and before the model is built."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Each BatchNorm statistics pass is a model of its own, predicted once per epoch and
        # traced once; in a sweep's process their count trips tf.function's retracing
        # heuristic, whose warning would then be a false alarm.
        logging.getLogger("tensorflow").addFilter(_not_a_retracing_notice)

        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        if cfg.steps_per_execution != 1:  # Keras's torch trainer runs one batch per call
            raise ConfigValueError(
                "trainer.steps_per_execution",
                cfg.steps_per_execution,
                "1 on the torch backend (Keras runs one batch per call there)",
            )
        _configure_torch(cfg.deterministic, threads)
    elif any(threads) or cfg.deterministic:
        # JAX reads its threads and determinism from XLA_FLAGS when it starts, before this.
        log.warning(
            "trainer threads and deterministic are not applied on the %s backend; "
            "set them through XLA_FLAGS",
            backend,
        )
    set_precision(cfg.precision)
    # Python, NumPy and the backend; Keras also seeds TensorFlow where it is installed, whatever
    # the backend, and that import prints TensorFlow's start-up notices.
    with native_stderr_hidden():
        keras.utils.set_random_seed(seed)


def _not_a_retracing_notice(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def _configure_torch(deterministic: bool, threads: tuple[int, int]) -> None:
    import torch

    if threads[0]:
        torch.set_num_threads(threads[0])
    if threads[1] and torch.get_num_interop_threads() != threads[1]:
        try:
            torch.set_num_interop_threads(threads[1])
        except RuntimeError:  # torch allows it once, before any inter-op work
            log.warning(
                "torch inter-op threads were already fixed; left at %d",
                torch.get_num_interop_threads(),
            )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)


def set_precision(precision: str) -> None:
    """`float32`, or `mixed_bfloat16` (bf16 compute, float32 weights) for layers built after
    this call; the model's probabilities stay float32 either way."""
    keras.config.set_dtype_policy(precision)


class EpochStats(keras.callbacks.Callback):
    """Adds `epoch_seconds` and `learning_rate` to each epoch's logs and prints one line, with
    the time left at this pace (the progress indicator: no per-batch hook, so no per-batch
    copy of metrics to the host); stops training with an error when the loss is no longer
    finite.

    Callbacks after this one in the list see the added values.
    """

    def __init__(self, epochs: int, train_size: int) -> None:
        super().__init__()
        self.epochs, self.train_size = epochs, train_size
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        if not math.isfinite(logs["loss"]):  # fail the run rather than record a broken model
            raise FloatingPointError(
                f"training diverged: loss is {logs['loss']} after epoch {epoch + 1}; "
                "lower optimizer.lr"
            )
        seconds = time.perf_counter() - self._started
        logs["epoch_seconds"] = seconds
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  lr %.2e  %.1fs"
            "  (%.0f img/s)%s",
            epoch + 1,
            self.epochs,
            logs["loss"],
            logs["accuracy"],
            logs["val_loss"],
            logs["val_accuracy"],
            logs["learning_rate"],
            seconds,
            self.train_size / seconds,
            _eta(seconds * (self.epochs - epoch - 1)),
        )


def _eta(seconds: float) -> str:
    """`  eta 4m05s` for the epochs still to come (at the last epoch's pace), or nothing."""
    if seconds <= 0:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"  eta {minutes}m{secs:02d}s" if minutes else f"  eta {secs}s"


class StopOnInterrupt(keras.callbacks.Callback):
    """Makes one stop signal stop training for sure.

    A stop raises its exception wherever the main thread is; when that is a finalizer
    (TensorFlow frees tensors and iterators in `__del__`), Python prints and drops it, and
    training would go on. This callback raises the stop that was asked for (digitcnn.core.stops)
    at the end of the epoch; a process without digitcnn's handlers gets the same for Ctrl-C
    while `watching()`. (No per-batch hook: one would make Keras copy every batch's metrics to
    Python, synchronously.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    @contextmanager
    def watching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread() or stops.installed():
            yield  # only the main thread may handle signals; digitcnn's handler records them
            return

        def on_sigint(signum, frame) -> None:
            self.interrupted = True
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        stop = stops.requested()
        if stop is not None:
            raise stop
        if self.interrupted:
            raise KeyboardInterrupt


@dataclass(frozen=True)
class TrainResult:
    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_*, epoch_seconds, lr
    train_seconds: float  # the whole `fit`, compilation included
    images_per_second: float  # training images processed per second of `fit`
    # The trained model's class probabilities for the validation images (its last validation)
    validation_probabilities: np.ndarray | None = None


def train(
    model: keras.Model,
    data: Dataset,
    optimizer_cfg: OptimizerConfig,
    cfg: TrainerConfig,
    callbacks: list[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    seed: int = 0,
) -> TrainResult:
    """Compile with categorical cross-entropy (as the reference) and fit epochs
    `initial_epoch`..`cfg.epochs`; a model resumed from a checkpoint comes compiled. `seed`
    picks the training batches that BatchNorm's statistics are recomputed from."""
    one_hot = np.eye(data.num_classes, dtype=np.float32)
    batches, steps_per_epoch = training_batches(
        data.x_train, one_hot[data.y_train], cfg.batch_size, seed
    )
    if initial_epoch == 0:
        model.compile(
            optimizer=build_optimizer(optimizer_cfg, steps_per_epoch, cfg.epochs),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=["accuracy"],
            steps_per_execution=cfg.steps_per_execution,
            jit_compile=resolved_jit(cfg.jit_compile),
        )
    # Validation runs in a callback, after BatchNorm's statistics are recomputed.
    validation = RecalibratedValidation(
        data.x_train,
        data.x_val,
        data.y_val,
        cfg.bn_recalibration_batches,
        cfg.batch_size,
        seed,
    )
    stop = StopOnInterrupt()
    started = time.perf_counter()
    with stop.watching():
        history = model.fit(
            **batches,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            verbose=1 if cfg.progress_bar else 0,
            callbacks=[
                stop,
                *averaged_weights(model, resumed=initial_epoch > 0),
                validation,
                EpochStats(cfg.epochs, len(data.x_train)),
                *callbacks,
            ],
        )
    seconds = time.perf_counter() - started
    return TrainResult(
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        train_seconds=seconds,
        images_per_second=min(len(data.x_train), steps_per_epoch * cfg.batch_size)
        * (cfg.epochs - initial_epoch)
        / seconds,
        validation_probabilities=validation.probabilities,
    )
