"""A sweep's records: its parent run, its children, failed jobs, the champion alias."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import ExitStack

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from digitcnn.core.config_groups import TrackingConfig
from digitcnn.sweeps.search.trial import PRUNED_AT_TAG
from digitcnn.sweeps.summary import JobRecord
from digitcnn.tracking.resume import JobSource, continue_attempt
from digitcnn.tracking.runs import Recorder
from digitcnn.tracking.store import Store, client_for

log = logging.getLogger("digitcnn")


def open_parent_run(
    store: Store, run_name: str, tags: Mapping[str, str], params: Mapping[str, str]
) -> str:
    """Create a sweep's parent run in `store` (from `preflight`) with the sweep's own settings
    as its params, left RUNNING until `end_parent_run`; returns its id. A run that could not
    take its params ends FAILED at once, not RUNNING with half its record."""
    from mlflow.entities import Param

    run = store.client.create_run(store.experiment_id, run_name=run_name, tags=dict(tags))
    run_id = run.info.run_id
    try:
        store.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    except BaseException:
        store.client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def find_parent_run(store: Store, sweep_dir: str) -> str | None:
    """The parent run of the sweep whose folder is `sweep_dir`, found by its tag: for a job on
    a machine that does not share the sweep folder (a Ray worker node)."""
    quoted = sweep_dir.replace("'", "\\'")
    found = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`sweep.dir` = '{quoted}'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


SUPERSEDED = "sweep.superseded"  # tag of an attempt that a later attempt of its job replaced


def _children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """A sweep's child runs, those replaced by a later attempt of their job left out."""
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50_000,
    )
    return [run for run in children if run.data.tags.get(SUPERSEDED) != "true"]


def job_key(overrides: list[str]) -> list[str]:
    """What identifies a sweep's job across attempts: its overrides, less `resume=`."""
    return sorted(o for o in overrides if not o.startswith(("resume=", "hydra.")))


def earlier_attempt(store: Store, parent_run_id: str, overrides: list[str]) -> Run | None:
    """The run an earlier attempt of this job left under the sweep's parent (a sweep killed and
    resumed, or a job that Ray ran again after its node died): a FINISHED one first, else the
    latest."""
    key = job_key(overrides)
    same = [
        run
        for run in _children(store.client, store.experiment_id, parent_run_id)
        if job_key(json.loads(run.data.tags.get("overrides", "[]"))) == key
    ]
    same.sort(key=lambda run: (run.info.status == "FINISHED", run.info.start_time or 0))
    return same[-1] if same else None


def pick_up_attempt(
    store: Store, parent_run_id: str, overrides: list[str], held: ExitStack
) -> tuple[Run | None, JobSource | None]:
    """A resumed sweep's job that ran before: (its run, None) when that run finished, (None,
    the checkpoint it goes on from, held in `held`) when it stopped after an epoch; an
    attempt with no checkpoint here is superseded, and the job starts over (None, None)."""
    attempt = earlier_attempt(store, parent_run_id, overrides)
    if attempt is None:
        return None, None
    if attempt.info.status == "FINISHED":
        log.info("job done already, in run %s: not run again", attempt.info.run_id)
        return attempt, None
    continued = continue_attempt(attempt, held)
    if continued is None:
        log.info("earlier attempt %s has no checkpoint: starting over", attempt.info.run_id)
        supersede(store, attempt.info.run_id)
    return None, continued


def supersede(store: Store, run_id: str) -> None:
    """Close an earlier attempt that cannot be continued (no epoch finished): KILLED, tagged;
    the sweep's summary counts the attempt that replaces it."""
    store.client.set_tag(run_id, SUPERSEDED, "true")
    store.client.set_terminated(run_id, "KILLED")


def reopen_parent_run(store: Store, run_id: str) -> None:
    """A resumed sweep records into its first parent run, open again until the sweep ends."""
    client = store.client
    run = client.get_run(run_id)
    resumed = int(run.data.tags.get("sweep.resumed", "0")) + 1
    client.set_tag(run_id, "sweep.resumed", str(resumed))
    if "stopped_by" in run.data.tags:  # it goes on: what stopped it is over
        client.delete_tag(run_id, "stopped_by")
    client.update_run(run_id, status="RUNNING")


def sweep_records(cfg: TrackingConfig, parent_run_id: str) -> tuple[Recorder, list[JobRecord]]:
    """A recorder on the parent run and what each of its child runs recorded."""
    client = client_for(cfg).client
    parent = client.get_run(parent_run_id)
    children = _children(client, parent.info.experiment_id, parent_run_id)
    records = [
        JobRecord(
            job=int(run.data.tags.get("sweep.job", -1)),
            run_id=run.info.run_id,
            status=run.info.status,
            overrides=json.loads(run.data.tags.get("overrides", "[]")),
            metrics=dict(run.data.metrics),
            pruned_at_epoch=_int_or_none(run.data.tags.get(PRUNED_AT_TAG)),
            ended_at=run.info.end_time or 0,
        )
        for run in children
    ]
    return Recorder(client, parent_run_id, parent.info.artifact_uri), records


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None


def end_parent_run(recorder: Recorder, status: str) -> None:
    recorder.client.set_terminated(recorder.run_id, status)


def running_jobs(store: Store, parent_run_id: str) -> list[Run]:
    """The sweep's child runs still RUNNING."""
    children = _children(store.client, store.experiment_id, parent_run_id)
    return [run for run in children if run.info.status == "RUNNING"]


def stop_sweep(store: Store, parent_run_id: str, signal_name: str) -> tuple[int, str]:
    """End a stopped sweep: its jobs still RUNNING (their processes were stopped or killed
    without closing them) and its parent run KILLED, each tagged `stopped_by`. Returns how
    many of its jobs are FINISHED, and the others by state ('2 KILLED', '1 FAILED')."""
    client = store.client
    children = _children(client, store.experiment_id, parent_run_id)
    ended: dict[str, int] = {}
    for run in children:
        status = run.info.status
        if status == "RUNNING":
            client.set_tag(run.info.run_id, "stopped_by", signal_name)
            client.set_terminated(run.info.run_id, "KILLED")
            status = "KILLED"
        ended[status] = ended.get(status, 0) + 1
    client.set_tag(parent_run_id, "stopped_by", signal_name)
    client.set_terminated(parent_run_id, "KILLED")
    finished = ended.pop("FINISHED", 0)
    others = ", ".join(f"{count} {status}" for status, count in sorted(ended.items()))
    return finished, others or "0 KILLED"


def _from_job_config(cfg: DictConfig) -> Store:
    return client_for(OmegaConf.to_object(cfg.tracking))


def has_child(cfg: DictConfig, parent_run_id: str, job: int) -> bool:
    """Whether sweep job `job` already has a run under `parent_run_id`."""
    store = _from_job_config(cfg)
    found = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`sweep.job` = '{job}'",
        max_results=1,
    )
    return bool(found)


def record_failed_run(
    cfg: DictConfig, run_name: str, tags: Mapping[str, str], parent_run_id: str
) -> None:
    """A FAILED child run for a sweep job that failed before its own run opened."""
    store = _from_job_config(cfg)
    run = store.client.create_run(
        store.experiment_id,
        run_name=run_name,
        tags={**tags, "mlflow.parentRunId": parent_run_id},
    )
    store.client.set_terminated(run.info.run_id, "FAILED")


CHAMPION = "champion"


def set_champion(client: MlflowClient, name: str, run_id: str) -> str:
    """Point registered model `name`'s alias `champion` at the version logged by `run_id`."""
    (version,) = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version.version
