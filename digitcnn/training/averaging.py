"""The weights' exponential moving average (`optimizer.ema_momentum`) as the model each epoch
ends with.

Keras's optimizer keeps the average when `use_ema` is set and, by default, only puts it in the
model when `fit` returns. Here each epoch ends with the average in the model, so that what an
epoch validates (after BatchNorm's statistics are recomputed for it), what its checkpoint
saves and what the run tests and logs at the end are one model; the next epoch swaps the
trained weights back in and goes on training them. A checkpoint therefore holds the average as
the model's weights and the trained weights in the optimizer's slots: a resumed fit starts by
swapping them back, and trains on exactly as the uninterrupted one would have. The last
epoch's checkpoint is the exception: Keras makes both sets the average there, so a finished
run extended with more epochs (`resume=… trainer.epochs=N`) trains on from its average.
"""

from __future__ import annotations

import keras


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras's `SwapEMAWeights(swap_on_epoch=True)`, told whether the model it starts with
    holds the average (a model resumed from a checkpoint does). Goes before the callbacks
    that validate or save the model."""

    def __init__(self, resumed: bool) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed  # the parent's record of which set the model holds
        self._average: list | None = None  # the model's weights as the last epoch ended

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)  # the average into the model
        self._average = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]

    def on_train_end(self, logs: dict | None = None) -> None:
        """`fit` has just put the optimizer's slots in the model. After the last epoch those
        hold the average; a fit stopped earlier (a pruned trial, `debug`'s stop) leaves the
        trained weights there, and the model must still be the one its last epoch
        validated and saved."""
        if self._ema_weights_in_model and self._average is not None:
            for variable, value in zip(self.model.trainable_variables, self._average, strict=True):
                variable.assign(value)


def averaged_weights(model: keras.Model, resumed: bool) -> list[keras.callbacks.Callback]:
    """The callback for a compiled `model` whose optimizer keeps an average; none otherwise."""
    return [AveragedWeights(resumed)] if getattr(model.optimizer, "use_ema", False) else []
