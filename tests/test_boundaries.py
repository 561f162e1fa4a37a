"""A stop at every boundary between a run's steps, then `resume=`, leaves the record an
uninterrupted run leaves: each step once, nothing missing.

Faults are placed, not raced: the named fault points of digitcnn.core.faults stop a process
exactly after a step (`DIGITCNN_FAULT=tested:SIGKILL`). Each chain below stops a run at one
boundary, resumes it with a fault at the next, and so on to the end, alternating SIGTERM and
SIGKILL; the two chains of a kind start with different signals, so every boundary meets both
signals. The final record (status, params, every metric's steps and count, tags less those
that name a process, artifacts, logged models) is compared with an uninterrupted run of the
same command: a single run, a sweep's job, a search's trial pruned and complete.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import client_for, failure_report, run_cli

# Tags that say which process wrote the run, where, or that it was stopped and resumed.
_PROCESS_TAGS = {"hydra.output_dir", "command", "resumed_after_epoch", "sweep.resumed", "host"}
_PROCESS_PARAMS = {"paths.output_dir"}
_SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def _artifacts(client, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path or None):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(found)


def _record(client, run, root: Path) -> dict:
    """What a run recorded, less what names the process that wrote it (and its `root`)."""
    run_id = run.info.run_id
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return {
        "status": run.info.status,
        "params": {
            k: v.replace(str(root), "ROOT")
            for k, v in run.data.params.items()
            if k not in _PROCESS_PARAMS
        },
        "metrics": {
            key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in sorted(run.data.metrics)
        },
        "tags": sorted(
            (k, v)
            for k, v in run.data.tags.items()
            if k not in _PROCESS_TAGS and not k.startswith("mlflow.")
        ),
        "artifacts": _artifacts(client, run_id),
        "models": sorted((m.name, str(m.status)) for m in models),
    }


def _records(root: Path, experiment: str) -> dict:
    """Every run of `experiment`: a sweep's parent as 'parent', its jobs by number."""
    client = client_for(root)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    found = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            key = f"job {run.data.tags['sweep.job']}"
        elif "sweep.dir" in run.data.tags:
            key = "parent"
        else:
            key = "run"
        assert key not in found, f"two runs for {key}"  # a step never opens a second run
        record = _record(client, run, root)
        if key == "parent":  # the sweep's summary, not the jobs' figures
            record = {k: record[k] for k in ("status", "metrics", "artifacts")}
        found[key] = record
    return found


def _differences(stopped: dict, uninterrupted: dict) -> list[str]:
    """Where the two records differ, one line each (empty: the same)."""
    found = []
    for run in sorted(set(stopped) | set(uninterrupted)):
        a, b = stopped.get(run, {}), uninterrupted.get(run, {})
        for part in sorted(set(a) | set(b)):
            x, y = a.get(part), b.get(part)
            if x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):
                for key in sorted(set(x) | set(y)):
                    if x.get(key) != y.get(key):
                        found.append(f"{run} {part} {key}: {x.get(key)} != {y.get(key)}")
            elif isinstance(x, list) and isinstance(y, list):
                ours, theirs = set(map(str, x)), set(map(str, y))
                found.append(
                    f"{run} {part}: only stopped {sorted(ours - theirs)}, only uninterrupted "
                    f"{sorted(theirs - ours)} ({len(x)} against {len(y)})"
                )
            else:
                found.append(f"{run} {part}: {x} != {y}")
    return found


def _stopped(proc, signum: signal.Signals, point: str) -> None:
    """What a process stopped at a fault point shows: killed outright, or one line."""
    output = proc.stdout + proc.stderr
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, failure_report(proc)
        return
    assert proc.returncode == 128 + signum, failure_report(proc)
    assert "Traceback" not in output, failure_report(proc)
    lines = [ln for ln in output.splitlines() if "stopped by SIGTERM" in ln]
    assert len(lines) == 1, failure_report(proc)
    if point != "closed":
        assert "ended KILLED" in lines[0] and "resume=" in lines[0], lines[0]


def _uninterrupted(tmp_path: Path, args: tuple[str, ...], experiment: str) -> dict:
    root = tmp_path / "uninterrupted"
    proc = run_cli(root, *args)
    assert proc.returncode == 0, failure_report(proc)
    return _records(root, experiment)


SINGLE = ("experiment=quick", "trainer.epochs=2", "tracking.experiment=walk")
SINGLE_CHAIN = ("epoch-1", "epoch-2", "trained", "tested", "model", "results", "closed")


@pytest.mark.parametrize("first", [0, 1], ids=["SIGTERM-first", "SIGKILL-first"])
def test_a_single_run_stopped_at_every_boundary_records_what_an_uninterrupted_run_does(
    tmp_path, first
):
    root = tmp_path / "stopped"
    root.mkdir()

    def resume() -> tuple[str, ...]:
        (checkpoint,) = root.glob("outputs/*/*/checkpoint")  # resumes log to folders of their own
        return (f"resume={checkpoint.parent}",)

    for i, point in enumerate(SINGLE_CHAIN):
        signum = _SIGNALS[(first + i) % 2]
        fault = {"DIGITCNN_FAULT": f"{point}:{signum.name}"}
        proc = run_cli(root, *(SINGLE if i == 0 else resume()), env=fault)
        _stopped(proc, signum, point)
    after = run_cli(root, *resume())  # nothing is left: one line says so
    assert after.returncode == 2 and "Traceback" not in after.stderr, failure_report(after)

    assert not _differences(_records(root, "walk"), _uninterrupted(tmp_path, SINGLE, "walk"))


SWEEP = ("-m", "experiment=quick", "trainer.epochs=2", "tracking.experiment=walk", "seed=1,2")
JOB_CHAIN = ("epoch-2@job1", "trained@job1", "tested@job1", "model@job1", "results@job1")


def _sweep_resume(root: Path, args: tuple[str, ...]) -> tuple[str, ...]:
    first = sorted(root.glob("multirun/*/*"))[0]  # a resumed sweep logs to a folder of its own
    return (*args, f"resume={first}")


def _walk_sweep(root: Path, args: tuple[str, ...], chain, first: int) -> None:
    for i, point in enumerate(chain):
        signum = _SIGNALS[(first + i) % 2]
        where, _, job = point.partition("@")
        fault = {"DIGITCNN_FAULT": f"{where}:{signum.name}@{job}"}
        proc = run_cli(root, *(args if i == 0 else _sweep_resume(root, args)), env=fault)
        _stopped(proc, signum, where)
    proc = run_cli(root, *_sweep_resume(root, args))
    assert proc.returncode == 0, failure_report(proc)


def test_a_sweep_job_stopped_at_every_boundary_records_what_an_uninterrupted_sweep_does(
    tmp_path,
):
    root = tmp_path / "stopped"
    root.mkdir()
    _walk_sweep(root, SWEEP, JOB_CHAIN, first=1)
    assert not _differences(_records(root, "walk"), _uninterrupted(tmp_path, SWEEP, "walk"))


SEARCH = (
    "-m",
    "hparams_search=optuna",
    "experiment=quick",
    "tracking.experiment=walk",
    "hydra.sweeper.n_trials=2",
)
# Every trial pruned after its first epoch (a floor no accuracy reaches); or none.
PRUNED = ("trainer.epochs=3", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01")
COMPLETE = ("trainer.epochs=2", "hydra/sweeper/pruner=none")
TRIAL_CHAIN = ("trained@job1", "tested@job1", "model@job1", "results@job1")


@pytest.mark.parametrize("ending", [PRUNED, COMPLETE], ids=["pruned", "complete"])
def test_a_search_trial_stopped_at_every_boundary_records_what_an_uninterrupted_search_does(
    tmp_path, ending
):
    args = (*SEARCH, *ending)
    root = tmp_path / "stopped"
    root.mkdir()
    _walk_sweep(root, args, TRIAL_CHAIN, first=0)
    stopped = _records(root, "walk")
    if ending is PRUNED:  # each trial pruned once, after its first epoch
        for job in ("job 0", "job 1"):
            assert ("optuna.pruned_at_epoch", "1") in stopped[job]["tags"], stopped[job]["tags"]
            assert stopped[job]["metrics"]["val_accuracy"] == [1]
    assert not _differences(stopped, _uninterrupted(tmp_path, args, "walk"))
