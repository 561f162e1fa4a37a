"""A search's job, seen from its own process: the Optuna trial it runs.

The sweeper names the trial in the job's Hydra config (`hydra.sweeper.trial`, with the study
and its storage beside it); the job may run in another process or on another Ray node, so it
reaches the trial through the study's database. Imports neither Keras nor MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# What a trial's child run says of it (tags), for the sweeper and for people browsing runs.
TRIAL_TAG, STATE_TAG, PRUNED_AT_TAG = "optuna.trial", "optuna.state", "optuna.pruned_at_epoch"
# A pruned trial is no candidate: its run skips what only a candidate needs, and says so.
SKIPPED_TAG = "optuna.skipped"
EPOCHS_ATTR = "epochs"  # a trial's user attribute: its epochs, where it reports none


@dataclass(frozen=True)
class TrialLink:
    storage: str
    study_name: str
    number: int
    pruner: DictConfig  # as configured: instantiated where the job runs

    def open(self):
        """The live trial (an `optuna.trial.Trial`), with the study's pruner."""
        import optuna
        from hydra.utils import instantiate

        from digitcnn.sweeps.search.storage import open_storage

        storage = open_storage(self.storage)
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        study = optuna.load_study(
            study_name=self.study_name, storage=storage, pruner=instantiate(self.pruner)
        )
        return optuna.trial.Trial(study, trial_id)


def trial_of(sweeper: DictConfig) -> TrialLink | None:
    """The trial this job runs, from its Hydra config's `hydra.sweeper`; None outside a search."""
    number = OmegaConf.select(sweeper, "trial")
    if number is None:
        return None
    return TrialLink(sweeper.storage, sweeper.study_name, int(number), sweeper.pruner)


def trial_tags(sweeper: DictConfig) -> dict[str, str]:
    """The tag naming a search job's trial on its run; none outside a search."""
    link = trial_of(sweeper)
    return {TRIAL_TAG: str(link.number)} if link else {}
