"""The search: asks the Optuna study for trials, runs them through Hydra's launcher (basic,
joblib, Ray) `n_jobs` at a time, and tells the study how each ended.

Each trial is a job and a child run of the sweep's parent run (digitcnn.sweeps.parent_run). The
job reports its validation objective to its trial every epoch (digitcnn.sweeps.search.trial),
and the study's pruner may stop it; the job's run then says PRUNED and after which epoch, and
the sweeper ends the trial PRUNED. The study lives in a database (`hydra.sweeper.storage`), so a
search started again with `resume=<sweep folder>` continues it: trials that ended are not run
again, those that were running are run again under their own number (their jobs go on from
their last checkpoint), and the search stops at `n_trials` of its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.errors import InstantiationException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from digitcnn.core import stops
from digitcnn.core.disk import is_disk_full
from digitcnn.core.errors import InputError

log = logging.getLogger("digitcnn.sweeps.search")

SWEEP_ATTR = "mlflow.parent_run_id"  # a trial's user attribute: the sweep that asked for it
RUN_ATTR = "mlflow.run_id"  # and the child run that recorded it
SECOND_OBJECTIVES = ("trainable_params", "train_seconds")  # minimised


class OptunaSearch:
    """What `hydra_plugins.digitcnn_optuna_sweeper.OptunaSweeper` does; its arguments are the
    keys of conf/hydra/sweeper/optuna.yaml."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str | None,
        second_objective: str | None,
        storage: str,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        trial: int | None = None,  # set in each job's config, never in the sweep's
    ) -> None:
        self.sampler, self.pruner = sampler, pruner
        self.direction = direction  # null: the objective's own (minimize for a loss)
        self.second_objective = second_objective
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params or {}
        self.config: DictConfig | None = None
        self.launcher = None
        self.directions: list[str] = []  # set by `check`, from `objective` where not given

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._search(arguments)
        except InputError as exc:  # checked before the parent run opened (`preflight`): rare
            log.error("error: %s", exc)
            sys.exit(2)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # The study's disk (or the store's) is full: stopped like its jobs would be.
            log.error("the search could not write its records: %s", str(exc).splitlines()[0])
            raise stops.StoppedByFullDisk() from None

    def _search(self, arguments: list[str]) -> None:
        import optuna

        from digitcnn import tracking
        from digitcnn.sweeps.search import report
        from digitcnn.sweeps.sweep_folder import parent_run_id

        config = self.config
        optuna.logging.disable_default_handler()  # its messages go through Hydra's logging
        optuna.logging.enable_propagation()
        distributions, fixed, storage = self.check(arguments, config.objective)
        parent = parent_run_id(config.hydra.sweep.dir)
        if parent is None:
            raise InputError("the Optuna sweeper needs digitcnn's sweep callback (hydra.callbacks)")
        store = tracking.client_for(OmegaConf.to_object(config.tracking))
        study = self._open_study(store, parent, storage)
        self._run_trials(study, storage, store, parent, distributions, fixed)
        report.record(study, _trials_of(study, parent), store.client, parent, self._names())
        report.write_results(study, Path(config.hydra.sweep.dir), self._names())

    def _open_study(self, store, parent: str, storage):
        """The study (new, resumed or shared), named on the parent run."""
        import optuna

        from digitcnn import tracking

        name = self._study_name(store, parent)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=self._sampler(storage, name),
            pruner=self.pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        described = {
            "optuna.study": name,
            "optuna.storage": tracking.redact(self.storage),
            "optuna.sampler": type(study.sampler).__name__,
            "optuna.pruner": type(study.pruner).__name__,
        }
        for key, value in described.items():
            store.client.set_tag(parent, key, value)
        log.info("study %r in %s, %s", name, described["optuna.storage"], self.directions)
        return study

    def _run_trials(self, study, storage, store, parent: str, distributions, fixed) -> None:
        """Trials `n_jobs` at a time until this search has `n_trials` (those of an earlier
        attempt counted, its running ones run again first) or too many failed."""
        from digitcnn.sweeps.search import space

        mine = _trials_of(study, parent)
        again = [t for t in mine if t.state.name in ("RUNNING", "WAITING")]
        ended = len(mine) - len(again)
        if again:
            log.info("resuming: %d trials ended, %d to run again", ended, len(again))
        to_go = self.n_trials - ended
        failed, job = sum(t.state.name == "FAIL" for t in mine), len(mine)
        while to_go > 0:
            size = min(to_go, self.n_jobs)
            batch = [_live(study, storage, t.number) for t in again[:size]]
            again = again[size:]
            for _ in range(size - len(batch)):
                trial = study.ask(distributions)
                trial.set_user_attr(SWEEP_ATTR, parent)
                batch.append(trial)
            jobs = [space.overrides(t.params, fixed) for t in batch]
            returns = self._launch(study.study_name, batch, jobs, job)
            job += len(returns)
            for trial, overrides, ret in zip(batch, jobs, returns, strict=True):
                failed += self._tell(study, store, parent, trial, overrides, ret) == "FAIL"
            to_go -= size
            if failed > self.max_failure_rate * self.n_trials:
                log.error(
                    "%d trials failed, more than hydra.sweeper.max_failure_rate=%s of %d: "
                    "the search stops",
                    failed,
                    self.max_failure_rate,
                    self.n_trials,
                )
                return

    def check(self, arguments: list[str], objective: str) -> tuple[dict, dict, Any]:
        """Every setting checked and the study's database reached, or a one-line error naming
        the key; returns the search space (`space.parse`) and the storage."""
        from digitcnn.sweeps.search import space
        from digitcnn.sweeps.search.storage import checked_storage
        from digitcnn.sweeps.summary import LOWER_IS_BETTER

        first = self.direction or ("minimize" if objective in LOWER_IS_BETTER else "maximize")
        self.directions = [first, *(["minimize"] if self.second_objective else [])]
        self._check_values()
        distributions, fixed = space.parse(self.params, arguments)
        return distributions, fixed, checked_storage(self.storage)

    def _check_values(self) -> None:
        if self.directions[0] not in ("maximize", "minimize"):
            raise InputError(
                f"hydra.sweeper.direction={self.directions[0]!r} is not allowed: "
                "maximize or minimize"
            )
        if self.second_objective not in (None, *SECOND_OBJECTIVES):
            raise InputError(
                f"hydra.sweeper.second_objective={self.second_objective!r} is not allowed: "
                f"null or one of {', '.join(SECOND_OBJECTIVES)} (minimised)"
            )
        if self.n_trials < 1 or self.n_jobs < 1:
            raise InputError(
                f"hydra.sweeper.n_trials={self.n_trials} and hydra.sweeper.n_jobs={self.n_jobs}"
                " are not allowed: both at least 1"
            )
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise InputError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate} is not allowed: "
                "from 0.0 to 1.0"
            )
        import optuna

        if len(self.directions) > 1 and not isinstance(self.pruner, optuna.pruners.NopPruner):
            raise InputError(
                f"hydra.sweeper.second_objective={self.second_objective} needs "
                "hydra/sweeper/pruner=none: Optuna prunes single-objective studies only"
            )

    def _names(self) -> list[str]:
        return [self.config.objective, *([self.second_objective] if self.second_objective else [])]

    def _study_name(self, store, parent: str) -> str:
        """The study's name: the one recorded by the sweep being resumed, else the configured
        one (a study shared with other sweeps), else this sweep's own."""
        if self.config.resume:
            recorded = store.client.get_run(parent).data.tags.get("optuna.study")
            if recorded:
                return recorded
        if self.study_name:
            return self.study_name
        folder = Path(self.config.hydra.sweep.dir)
        return f"{self.config.tracking.experiment}/{folder.parent.name}/{folder.name}"

    def _sampler(self, storage, name: str):
        """The configured sampler, its seed moved on by the trials the study already holds: a
        resumed or shared study does not draw its first trials again."""
        seed = self.sampler.keywords.get("seed")
        if seed is None:
            return self.sampler()
        try:
            done = len(storage.get_all_trials(storage.get_study_id_from_name(name)))
        except KeyError:  # a new study
            done = 0
        return self.sampler(seed=seed + done)

    def _launch(self, name: str, batch: list, jobs: list[list[str]], first_job: int) -> list:
        """Run `batch`'s trials as jobs `first_job`... through the launcher. Stopped (Ctrl-C,
        SIGTERM), its trials stay RUNNING, noted `stopped_by`: `resume=` runs them again."""
        try:
            return self.launcher.launch(
                [
                    [*overrides, *self._trial_overrides(name, trial.number)]
                    for overrides, trial in zip(jobs, batch, strict=True)
                ],
                initial_job_idx=first_job,
            )
        except KeyboardInterrupt as exc:
            with contextlib.suppress(Exception):  # a full disk may hold the study too
                for trial in batch:
                    trial.set_user_attr("stopped_by", stops.as_stopped(exc).name)
            raise

    def _trial_overrides(self, name: str, number: int) -> list[str]:
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        return [f"hydra.sweeper.study_name='{quoted}'", f"hydra.sweeper.trial={number}"]

    def _tell(self, study, store, parent: str, trial, overrides: list[str], ret) -> str:
        """End `trial` as its job's run ended: COMPLETE with the run's objectives, PRUNED where
        the run says so, FAIL otherwise. Returns the state's name."""
        from optuna.trial import TrialState

        from digitcnn.sweeps import records
        from digitcnn.sweeps.search.trial import PRUNED_AT_TAG

        run = records.earlier_attempt(store, parent, overrides)
        values = None
        if run is not None and run.info.status == "FINISHED":
            trial.set_user_attr(RUN_ATTR, run.info.run_id)
            values = _values(ret, run, self.second_objective)
        pruned_at = run.data.tags.get(PRUNED_AT_TAG) if run is not None else None
        if values is not None and pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", int(pruned_at))
            state, values = TrialState.PRUNED, None
        else:
            state = TrialState.FAIL if values is None else TrialState.COMPLETE
        study.tell(trial, values, state=state, skip_if_finished=True)
        return state.name


def preflight(config: DictConfig) -> None:
    """A search's settings checked before its sweep opens the parent run (see `check`)."""
    from hydra.utils import instantiate

    settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    settings["_target_"] = f"{__name__}.OptunaSearch"
    try:
        search = instantiate(settings)
    except InstantiationException as exc:  # Optuna's (or our) refusal of a sampler's or
        key = re.search(r"full_key: (\S+)", str(exc))  # pruner's setting: one line naming it
        raise InputError(
            f"hydra.sweeper.{key.group(1) if key else '...'}: {exc.__cause__ or exc}"
        ) from None
    search.check(list(config.hydra.overrides.task), config.objective)


def _values(ret, run, second: str | None) -> list[float] | None:
    """The trial's objectives: what its job returned, and the second one from its run."""
    try:
        values = [float(ret.return_value)]
    except Exception:  # the job raised: Hydra's JobReturn raises it again here
        return None
    if second == "trainable_params":
        values.append(float(run.data.params.get("derived.trainable_params", "nan")))
    elif second is not None:
        values.append(float(run.data.metrics.get(second, math.nan)))
    return None if any(math.isnan(v) for v in values) else values


def _trials_of(study, parent: str) -> list:
    """The study's trials that this sweep asked for (a shared study also holds others')."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SWEEP_ATTR) == parent]


def _live(study, storage, number: int):
    """Trial `number` of `study`, to be run again and told."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.trial.Trial(
        study, storage.get_trial_id_from_study_id_trial_number(study_id, number)
    )
