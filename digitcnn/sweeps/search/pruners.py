"""digitcnn's own pruners, where Optuna's need a setting they lack.

Instantiated from conf/hydra/sweeper/pruner/ in the sweeper and in every job (the job asks its
trial's pruner at each epoch's end: digitcnn.sweeps.search.pruning).
"""

from __future__ import annotations

import optuna


class SuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's asynchronous successive halving, which never stops the study's first
    `n_startup_trials` trials.

    A trial goes on past a rung when it is in the best 1/reduction_factor of the trials that
    reached that rung before it. Optuna cannot pause a trial until more have, so while fewer than
    `reduction_factor` trials have reached a rung, only the best of them goes on: the second
    trial of a study is stopped at the first rung whenever the first did better there, which
    says little of where either ends. The trials spared here still record their value at each
    rung, so the trials after them are ranked against full rungs."""

    def __init__(self, *, n_startup_trials: int = 0, **successive_halving) -> None:
        super().__init__(**successive_halving)
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        stop = super().prune(study, trial)  # records the trial's value at a rung it reached
        return stop and trial.number >= self.n_startup_trials
