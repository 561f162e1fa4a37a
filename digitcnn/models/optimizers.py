"""Optimizers and learning-rate schedules from the optimizer config, in one place."""

from __future__ import annotations

import math

import keras

from digitcnn.core.config_groups import AdamConfig, AdamWConfig, OptimizerConfig, SGDConfig


@keras.saving.register_keras_serializable(package="digitcnn")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then constant or cosine decay to `peak * final_fraction`."""

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        total_steps: int,
        cosine: bool,
        final_fraction: float = 0.0,
    ) -> None:
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.cosine, self.final_fraction = cosine, final_fraction

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = max(self.warmup_steps, 1)
        warmup = self.peak * ops.minimum(1.0, (step + 1.0) / warm)
        if not self.cosine:
            return warmup if self.warmup_steps else ops.full((), self.peak)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        floor = self.peak * self.final_fraction
        decayed = floor + (self.peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "cosine": self.cosine,
            "final_fraction": self.final_fraction,
        }


def learning_rate(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> WarmupCosine | float:
    """A plain float for a constant rate (as the reference), else a schedule over all steps."""
    if cfg.schedule == "constant" and cfg.warmup_epochs == 0:
        return cfg.lr
    return WarmupCosine(
        peak=cfg.lr,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        total_steps=steps_per_epoch * epochs,
        cosine=cfg.schedule == "cosine",
        final_fraction=cfg.final_lr_fraction,
    )


def build_optimizer(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> keras.Optimizer:
    lr = learning_rate(cfg, steps_per_epoch, epochs)
    # The weights' moving average (digitcnn.training.averaging), kept by the optimizer
    average = {"use_ema": cfg.ema_momentum > 0, "ema_momentum": cfg.ema_momentum}
    match cfg:
        case AdamWConfig():
            return keras.optimizers.AdamW(
                lr, weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2, **average
            )
        case AdamConfig():
            return keras.optimizers.Adam(lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, **average)
        case SGDConfig():
            return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **average)
    raise TypeError(f"no optimizer for config type {type(cfg).__name__}")
