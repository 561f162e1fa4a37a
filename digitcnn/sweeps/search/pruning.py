"""The Keras callback that tells a search's trial each epoch's validation objective, so that
the study's pruner can stop a hopeless trial at the epoch's end. Nothing here knows MLflow."""

from __future__ import annotations

import logging

import keras
from omegaconf import DictConfig

from digitcnn.sweeps.search.trial import (
    EPOCHS_ATTR,
    PRUNED_AT_TAG,
    SKIPPED_TAG,
    STATE_TAG,
    TrialLink,
    trial_of,
)

log = logging.getLogger(__name__)


class ReportToTrial(keras.callbacks.Callback):
    """At each epoch's end, reports `objective` to the trial and asks its pruner; a pruned
    trial stops training there (its checkpoint of that epoch is kept, as for any epoch).

    Put it after the checkpoint's callback: the epoch it stops after is then saved."""

    def __init__(self, link: TrialLink, objective: str, history: dict | None = None) -> None:
        super().__init__()
        self.link, self.objective = link, objective
        self.pruned_at: int | None = None
        self._trial = link.open()
        self._several_objectives = len(self._trial.study.directions) > 1
        (frozen,) = [
            t for t in self._trial.study.get_trials(deepcopy=False) if t.number == link.number
        ]
        reported = frozen.intermediate_values
        # A resumed job's earlier epochs, where a stop came between checkpoint and report.
        earlier = [] if self._several_objectives else (history or {}).get(objective, [])
        for step, value in enumerate(earlier, start=1):
            if step not in reported:
                self._trial.report(float(value), step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.objective)
        if value is None:
            return
        if self._several_objectives:  # Optuna takes reports from single-objective studies only
            self._trial.set_user_attr(EPOCHS_ATTR, epoch + 1)
            return
        self._trial.report(float(value), epoch + 1)
        if self._trial.should_prune():
            self.pruned_at = epoch + 1
            log.info(
                "trial %d pruned after epoch %d: %s %.4f",
                self.link.number,
                self.pruned_at,
                self.objective,
                value,
            )
            self.model.stop_training = True


def reporters_for(sweeper: DictConfig, objective: str, history: dict) -> list[ReportToTrial]:
    """In a search, the callback that reports each epoch to the job's trial (and stops a
    pruned one); none elsewhere. `history` holds a resumed job's earlier epochs."""
    link = trial_of(sweeper)
    return [ReportToTrial(link, objective, history)] if link else []


def end_state_tags(reporters: list[ReportToTrial]) -> dict[str, object]:
    """How a search job's trial ended, as tags on its run: PRUNED (after which epoch, and
    what its run skips: a pruned trial is no candidate) or COMPLETE; none outside a search."""
    if not reporters:
        return {}
    pruned_at = reporters[0].pruned_at
    if not pruned_at:
        return {STATE_TAG: "COMPLETE"}
    skipped = "test evaluation, logged model, test figures"
    return {STATE_TAG: "PRUNED", PRUNED_AT_TAG: pruned_at, SKIPPED_TAG: skipped}
