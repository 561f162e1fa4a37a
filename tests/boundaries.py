"""Walking the boundaries between a run's steps (tests/test_boundaries*.py): a stop at every
boundary, then `resume=`, must leave the record an uninterrupted run leaves.

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

from tests.conftest import client_for, failure_report, run_cli

# Tags that say which process wrote the run, where, or that it was stopped and resumed.
PROCESS_TAGS = {"hydra.output_dir", "command", "resumed_after_epoch", "sweep.resumed", "host"}
PROCESS_PARAMS = {"paths.output_dir"}
SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def artifacts(client, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path or None):
        found.extend(artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(found)


def record(client, run, root: Path) -> dict:
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
            if k not in PROCESS_PARAMS
        },
        "metrics": {
            key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in sorted(run.data.metrics)
            if not key.startswith("system/")  # the machine's, sampled by the clock
        },
        "tags": sorted(
            (k, v)
            for k, v in run.data.tags.items()
            if k not in PROCESS_TAGS and not k.startswith("mlflow.")
        ),
        "artifacts": artifacts(client, run_id),
        "models": sorted((m.name, str(m.status)) for m in models),
    }


def records(root: Path, experiment: str) -> dict:
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
        recorded = record(client, run, root)
        if key == "parent":  # the sweep's summary, not the jobs' figures
            recorded = {k: recorded[k] for k in ("status", "metrics", "artifacts")}
        found[key] = recorded
    return found


def differences(stopped: dict, uninterrupted: dict) -> list[str]:
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


def stopped(proc, signum: signal.Signals, point: str) -> None:
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


def uninterrupted(tmp_path: Path, args: tuple[str, ...], experiment: str) -> dict:
    root = tmp_path / "uninterrupted"
    proc = run_cli(root, *args)
    assert proc.returncode == 0, failure_report(proc)
    return records(root, experiment)
