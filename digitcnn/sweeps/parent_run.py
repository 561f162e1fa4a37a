"""A sweep is one MLflow parent run; each job a child run under it (a Hydra callback).

On multirun start the parent run is opened and its id written into the sweep folder, where every
job (in this process or a launcher's worker) finds it. On multirun end the parent gets the
sweep's table, plot, best job and seed statistics, and ends FINISHED, or FAILED when a job
failed; the sweep then exits non-zero, with every job's record kept.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from digitcnn.core import stops
from digitcnn.core.config_groups import TrackingConfig
from digitcnn.core.errors import InputError
from digitcnn.core.runtime import hide_secrets_in_logs
from digitcnn.core.writer_lock import writing
from digitcnn.sweeps.sweep_folder import parent_run_id, write_parent_run_id
from digitcnn.training.backends import select_backend

log = logging.getLogger("digitcnn.sweeps.parent_run")

JOBS_GRACE_SECONDS = 10.0  # how long a stopped sweep waits for jobs in other processes


def _sweep_to_resume(store, target: str) -> str:
    """The parent run named by `resume=` in a sweep: its id, or the sweep's folder."""
    found = parent_run_id(Path(target).expanduser())
    if found:
        return found
    try:
        run = store.client.get_run(target)
    except Exception:  # MLflow raises its own errors for unknown or malformed ids
        run = None
    if run is None or "sweep.dir" not in run.data.tags:
        raise InputError(
            f"resume={target!r} is neither a sweep's folder nor its parent run: a sweep resumes "
            "from the parent run id it printed, or from its multirun/... folder"
        )
    return run.info.run_id


def _sweeper_settings(config: DictConfig) -> dict[str, str]:
    """What a sweep is, beyond its jobs' overrides: the sweeper's settings (a search's space,
    sampler and its seed, pruner and its rates, number of trials), as the parent run's params."""
    from digitcnn import tracking

    settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    settings.pop("trial", None)  # the search's jobs', not the sweep's
    flat = tracking.flatten(settings, "hydra.sweeper.")
    return {key: tracking.redact(value) for key, value in flat.items()}


def _tracking(config: DictConfig) -> TrackingConfig:
    return OmegaConf.to_object(config.tracking)


def _let_jobs_close(config: DictConfig, run_id: str, signum: int) -> None:
    """A stop signal reached the sweep: pass it on to the processes that run its jobs (a
    launcher's workers; the same signal sent to the whole process group already reached
    them) and give them JOBS_GRACE_SECONDS to end their runs KILLED, before the launcher,
    interrupted, kills them. Jobs run in this process end their runs themselves."""
    workers = stops.descendants()
    if not workers:
        return
    stops.forward(signum, workers)
    from digitcnn import tracking
    from digitcnn.sweeps import records

    store = tracking.client_for(_tracking(config))
    deadline = time.monotonic() + JOBS_GRACE_SECONDS
    while time.monotonic() < deadline and records.running_jobs(store, run_id):
        time.sleep(0.25)


def _close_stopped(config: DictConfig, run_id: str, stopped: stops.Stopped) -> None:
    """End a stopped sweep's records KILLED and say how to resume it."""
    from digitcnn import tracking
    from digitcnn.sweeps import records

    args = [a for a in sys.argv[1:] if not a.startswith("resume=")]
    command = tracking.redact(shlex.join(["python", "-m", "digitcnn.run", *args]))
    go_on = f"{stopped.before_going_on}`{command} resume={config.hydra.sweep.dir}` continues it"
    try:
        store = tracking.client_for(_tracking(config))
        finished, others = records.stop_sweep(store, run_id, stopped.name)
    except Exception as exc:  # the store's disk is full, its server gone: the way on stands
        said = tracking.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        stopped.outcome = (
            f"sweep run {run_id} is left RUNNING (its store could not be written: {said}); {go_on}"
        )
        return
    stopped.outcome = (
        f"sweep run {run_id} ended KILLED with {finished} jobs FINISHED and {others}; {go_on}"
    )


class MlflowSweepCallback(Callback):
    """Opens and closes the parent run of a multirun; does nothing for a single run. A stop
    signal ends the parent run and its open jobs KILLED (see digitcnn.core.stops)."""

    def __init__(self) -> None:
        self._unhook: list = []
        self._held = ExitStack()  # the sweep's writer lock, from start to end

    def __getstate__(self) -> dict:
        """Launchers (joblib, Ray) send the callbacks to their workers: the lock stays here."""
        return self.__dict__ | {"_held": ExitStack()}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A launcher's workers, started from here on, stop when this process is gone.
        os.environ[stops.SWEEP_PID] = str(os.getpid())
        # The Ray launcher logs its `ray.init` settings, credentials for the workers included.
        hide_secrets_in_logs("hydra_plugins.hydra_ray_launcher._launcher_util")
        try:
            self._open_parent(config)
        except InputError as exc:  # Hydra would turn an exception here into a warning
            log.error("error: %s", exc)
            sys.exit(2)
        except Exception:  # a sweep without its parent run would record its jobs unparented
            log.exception("the sweep's parent run could not be opened")
            sys.exit(1)

    def _open_parent(self, config: DictConfig) -> None:
        select_backend(config.backend)  # before Keras is imported, as a job would
        from digitcnn import tracking
        from digitcnn.sweeps import records

        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        name = "sweep " + (" ".join(overrides) or "(defaults)")
        tags = {
            "sweep.dir": str(sweep_dir),
            "sweep.overrides": tracking.redact(" ".join(overrides)),
            "sweep.sweeper": config.hydra.sweeper._target_.rsplit(".", 1)[-1],
            "sweep.launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1],
            "sweep.objective": config.objective,
            **{label: "true" for label in config.get("tags") or []},  # tags=[...], as its jobs
        }
        store = tracking.preflight(_tracking(config))
        if config.hydra.sweeper._target_.startswith("hydra_plugins.digitcnn_optuna_sweeper"):
            from digitcnn.sweeps.search.sweeper import preflight

            preflight(config)  # its database reached, its space parsed: before the parent opens
        # One process writes a sweep at a time: the lock is on its first folder, which a
        # resumed attempt names (its own folder is new).
        if config.resume:
            run_id = _sweep_to_resume(store, config.resume)
            first = Path(store.client.get_run(run_id).data.tags["sweep.dir"])
            self._held.enter_context(writing(first, f"resume={config.resume}"))
            records.reopen_parent_run(store, run_id)
        else:
            self._held.enter_context(writing(sweep_dir, "hydra.sweep.dir"))
            run_id = records.open_parent_run(store, name, tags, _sweeper_settings(config))
        write_parent_run_id(sweep_dir, run_id)
        self._unhook = [
            stops.before_stopping(lambda signum: _let_jobs_close(config, run_id, signum)),
            stops.closing(lambda stopped: _close_stopped(config, run_id, stopped)),
        ]
        log.info("parent run %s (%s)", run_id, name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with self._held:  # released once the parent run is closed
            self._close_parent(config)

    def _close_parent(self, config: DictConfig) -> None:
        from digitcnn.sweeps import records

        for unhook in self._unhook:
            unhook()
        run_id = parent_run_id(config.hydra.sweep.dir)
        if run_id is None:
            return
        objective = config.objective
        recorder, jobs = records.sweep_records(_tracking(config), run_id)
        failed = [r for r in jobs if r.status != "FINISHED"]
        try:
            if config.debug.mode != "none":  # checks, not results: no summary, no champion
                log.info("debug=%s sweep: %d jobs, no summary", config.debug.mode, len(jobs))
            else:
                _record_summary(recorder, jobs, objective, config.tracking.register_as)
        finally:
            records.end_parent_run(recorder, "FAILED" if failed or not jobs else "FINISHED")
        if failed:
            named = ", ".join(f"#{r.job} ({' '.join(r.overrides)})" for r in failed)
            log.error(
                "%d of %d jobs failed: %s; summary in run %s",
                len(failed),
                len(jobs),
                named,
                run_id,
            )
            # Hydra turns a callback's exception into a warning; the exit status must say it.
            sys.exit(1)


def _record_summary(recorder, jobs: list, objective: str, register_as: str | None = None) -> None:
    from digitcnn.sweeps import summary  # pandas and matplotlib: only when a sweep ends

    table = summary.jobs_table(jobs, objective) if jobs else None
    if table is None:
        log.warning("sweep recorded no jobs")
        return
    files = {
        "sweep_summary.csv": table,
        "sweep_summary.md": summary.markdown(table),
        "sweep_summary.html": table.to_html(float_format=lambda v: f"{v:.4f}"),
        "objective.png": summary.objective_plot(jobs, objective),
    }
    aggregate = summary.seed_aggregate(jobs)
    if not aggregate.empty:
        files["seed_aggregate.csv"] = aggregate
        files["seed_aggregate.md"] = summary.markdown(aggregate)
    recorder.log_files(files)

    metrics = {"jobs": len(jobs), "jobs_failed": sum(r.status != "FINISHED" for r in jobs)}
    if len(aggregate) == 1:  # one configuration over several seeds: its mean and spread
        row = aggregate.iloc[0]
        metrics.update({k: v for k, v in row.items() if k != "runs"})
    best = summary.best_job(table, objective)
    if best is not None:
        recorder.log_tags(
            {
                "best.run_id": best["run_id"],
                "best.job": int(best.name),
                "best.overrides": best["overrides"],
            }
        )
        metrics.update({f"best_{m}": best[m] for m in summary.METRICS if m in best})
        metrics[f"best_{objective}"] = best[objective]
        log.info(
            "best job #%d (%s): %s %.4f", best.name, best["overrides"], objective, best[objective]
        )
        if register_as:
            from digitcnn.sweeps import records

            version = records.set_champion(recorder.client, register_as, best["run_id"])
            recorder.log_tags({"best.model_version": f"{register_as}/{version}"})
            log.info("alias champion -> %s version %s", register_as, version)
    recorder.log_metrics(
        {k: float(v) for k, v in metrics.items() if not _is_nan(v)},
        timestamp=summary.stamp(job.ended_at for job in jobs),
    )
    log.info("summary:\n%s", summary.markdown(table))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
