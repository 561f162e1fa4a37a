"""Sweeps on a real one-node Slurm (tests/slurm_cluster.py), through `hydra/launcher=
submitit_slurm`, with Slurm's own signals: a requeue, a time limit, a preemption, a cancel.
Each job that Slurm stops must come back and continue its own run: same run id, every epoch
once, one line in its log, the sweep's parent FINISHED at the end."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from digitcnn.sweeps.records import SUPERSEDED
from tests.conftest import Hold, client_for, failure_report, run_cli, start_cli

# Each job: 3 quick epochs on the digits, one CPU; Slurm's node has two.
SWEEP = (
    "-m",
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "experiment=quick",
    "trainer.epochs=3",
)
LOCAL = ("-m", "hydra/launcher=submitit_local", "experiment=quick")  # no Slurm needed
TIMEOUT = 300


@pytest.fixture(scope="module")
def slurm():
    from tests.slurm_cluster import SlurmCluster, missing

    reason = missing()
    if reason and os.environ.get("CI") != "true":
        pytest.skip(reason)
    cluster = SlurmCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def _children(root: Path):
    """(client, parent, children by job number) of the only sweep in experiment 'quick'."""
    client = client_for(root)
    runs = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    ours = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(ours) == len(runs) - 1
    # An attempt that Slurm stopped before its first epoch (a loaded machine: its warning came
    # first) has nothing to continue: it is closed KILLED and superseded, with no epoch.
    superseded = [r for r in ours if r.data.tags.get(SUPERSEDED) == "true"]
    for run in superseded:
        assert run.info.status == "KILLED" and not _steps(client, run), run.data.tags
    children = sorted(
        (r for r in ours if r not in superseded), key=lambda r: int(r.data.tags["sweep.job"])
    )
    return client, parent, children


def _steps(client, run) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]


def _job_folder(root: Path, job: int) -> Path:
    """submitit's folder of sweep job `job` (`<array id>_<job>`; a sweep of one job is no array:
    `<job id>`), once it was submitted."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [
            p for p in root.glob("multirun/*/*/.submitit/*")
            if p.name.endswith(f"_{job}") or (job == 0 and p.name.isdigit())
        ]  # fmt: skip
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not submitted")


def _log(folder: Path) -> str:
    """The job's error stream, all its attempts (Slurm appends)."""
    return "".join(p.read_text() for p in sorted(folder.glob("*_log.err")))


def _logs(root: Path) -> str:
    """Every job's logs, both streams, for a failure's message."""
    return "\n".join(
        f"--- {p.relative_to(root)}\n{p.read_text()}"
        for p in sorted(root.glob("multirun/*/*/.submitit/*/*_log.*"))
    )


def _gone(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} is still running")


def _assert_continued(client, run, restarts: int, signal_name: str, log: str) -> None:
    """The run was stopped after epoch 2 and continued by the requeued attempt, every epoch
    once. A requeued attempt gets a time limit of its own: on a loaded machine Slurm may warn
    it too (then it stops again and the next attempt continues, or finds the run done), so
    later stops are allowed, each with its one line."""
    assert run.info.status == "FINISHED"
    assert _steps(client, run) == [1, 2, 3]  # every epoch once
    tags = run.data.tags
    # the first attempt with an epoch stopped after epoch 2; a later one, warned again, after 2 or 3
    assert f"resuming run {run.info.run_id} after epoch 2" in log, log
    assert tags["resumed_after_epoch"] in {"2", "3"}
    assert int(tags["slurm.restart_count"]) >= restarts
    assert tags["slurm.node"] == "localhost"
    assert "stopped_by" not in tags
    assert "test_accuracy" in run.data.metrics
    stopped = [line for line in log.splitlines() if line.startswith("stopped by ")]
    assert stopped and stopped[0].startswith(f"stopped by {signal_name}"), log
    # attempts stopped before their first epoch (superseded) name their own runs
    ours = [line for line in stopped if f"run {run.info.run_id} ended " in line]
    assert ours and f"run {run.info.run_id} ended KILLED" in ours[0], log
    first = stopped.index(ours[0])
    assert all(" ended KILLED" in line for line in stopped[:first]), log
    assert all(f"run {run.info.run_id} ended " in line for line in stopped[first:]), log
    assert "Traceback" not in log


def _one_job_warned_and_continued(tmp_path, slurm, *overrides: str, preempt=lambda: None):
    """A sweep of one job, held after epoch 2 until Slurm's USR2 stops it (after `preempt()`,
    what sends it); the sweep ends 0 with the job's run continued by the requeued attempt."""
    hold = Hold(tmp_path, "epoch-2")
    proc = start_cli(tmp_path, *SWEEP, *overrides, "seed=1", env=slurm.env | hold.env)
    pid = hold.wait(proc)
    preempt()
    _gone(pid)
    hold.release()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    client, parent, (job,) = _children(tmp_path)
    assert parent.info.status == "FINISHED"
    _assert_continued(client, job, 1, "SIGUSR2", _log(_job_folder(tmp_path, 0)))


def test_a_sweep_on_slurm_continues_a_job_slurm_requeued(tmp_path, slurm):
    """Two jobs as a job array; job 1, held after epoch 2, is requeued (`scontrol requeue`:
    SIGTERM, then Slurm starts it again in the same folder)."""
    hold = Hold(tmp_path, "epoch-2", job=1)
    proc = start_cli(tmp_path, *SWEEP, "seed=1,2", env=slurm.env | hold.env)
    pid = hold.wait(proc)
    folder = _job_folder(tmp_path, 1)
    slurm.run("scontrol", "requeue", folder.name)
    _gone(pid)
    hold.release()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    client, parent, children = _children(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.launcher"] == "SlurmLauncher"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 0
    first, requeued = children
    assert first.info.status == "FINISHED" and _steps(client, first) == [1, 2, 3]
    assert first.data.tags["slurm.restart_count"] == "0"
    assert first.data.tags["slurm.array_task_id"] == "0"
    assert requeued.data.tags["slurm.array_task_id"] == "1"
    assert requeued.data.tags["slurm.array_job_id"] == folder.name.split("_")[0]
    _assert_continued(client, requeued, 1, "SIGTERM", _log(folder))


def test_a_job_past_its_time_limit_is_signalled_requeued_and_continued(tmp_path, slurm):
    """A 2-minute limit with the warning 80 s before it: USR2 reaches the job, held after
    epoch 2, 40 to 70 s in (Slurm's timing is coarse); submitit requeues it."""
    limits = ("hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=80")
    _one_job_warned_and_continued(tmp_path, slurm, *limits)  # until Slurm's warning stops it


def test_a_job_preempted_by_a_higher_partition_is_requeued_and_continued(tmp_path, slurm):
    """A job of partition `high` that needs both CPUs preempts the sweep's job (partition
    `low`, PreemptMode=REQUEUE): Slurm sends it USR2, then requeues it."""
    _one_job_warned_and_continued(
        tmp_path,
        slurm,
        preempt=lambda: slurm.run(
            "sbatch", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 2"
        ),
    )


def test_a_cancelled_job_stops_the_sweep_which_resumes_on_slurm(tmp_path, slurm):
    """`scancel` of job 1 mid-training: its run ends KILLED; the sweep waits for job 0, ends
    its parent KILLED with one line, and `resume=` its folder finishes job 1's run."""
    hold = Hold(tmp_path, "epoch-2", job=1)
    proc = start_cli(tmp_path, *SWEEP, "seed=1,2", env=slurm.env | hold.env)
    hold.wait(proc)
    folder = _job_folder(tmp_path, 1)
    slurm.run("scancel", folder.name)
    out, _ = proc.communicate(timeout=TIMEOUT)
    hold.release()
    assert proc.returncode == 143, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"stopped by Slurm job {folder.name} ended CANCELLED: sweep run "), out
    sweep_dir = folder.parent.parent
    assert f"resume={sweep_dir}` continues it" in last
    client, parent, (first, cancelled) = _children(tmp_path)
    assert parent.info.status == "KILLED"
    assert first.info.status == "FINISHED"
    assert cancelled.info.status == "KILLED" and _steps(client, cancelled) == [1, 2]

    again = run_cli(tmp_path, *SWEEP, "seed=1,2", f"resume={sweep_dir}", env=slurm.env)
    assert again.returncode == 0, failure_report(again)
    client, parent, (first_again, continued) = _children(tmp_path)
    assert parent.info.status == "FINISHED"
    assert first_again.info.run_id == first.info.run_id
    assert continued.info.run_id == cancelled.info.run_id
    assert continued.info.status == "FINISHED" and _steps(client, continued) == [1, 2, 3]
    assert "stopped_by" not in continued.data.tags


def test_submitit_local_runs_a_sweep_without_slurm(tmp_path):
    proc = run_cli(tmp_path, *LOCAL, "seed=1,2")
    assert proc.returncode == 0, failure_report(proc)
    _, parent, children = _children(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.launcher"] == "LocalLauncher"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert not any(k.startswith("slurm.") for c in children for k in c.data.tags)


def test_a_submitit_local_job_killed_outright_stops_the_sweep_with_one_line(tmp_path):
    """SIGKILL to job 1's process, held after epoch 2 (the OOM killer alike): no Slurm to ask,
    the sweep stops at once with one line once job 0 has finished, the killed run KILLED."""
    hold = Hold(tmp_path, "epoch-2", job=1)
    proc = start_cli(tmp_path, *LOCAL, "trainer.epochs=3", "seed=1,2", env=hold.env)
    os.kill(hold.wait(proc), signal.SIGKILL)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, out
    last = out.strip().splitlines()[-1]
    assert re.match(r"stopped by the job in process \d+ ended without a result \(killed\): ", last)
    assert "resume=" in last and "Slurm" not in out, out
    client, parent, children = _children(tmp_path)
    assert parent.info.status == "KILLED"
    ended = [(c.info.status, _steps(client, c)) for c in children]
    assert ended == [("FINISHED", [1, 2, 3]), ("KILLED", [1, 2])]


@pytest.mark.parametrize("first_at", ["started", "opened"])
def test_a_stopped_sweep_cancels_its_slurm_jobs(tmp_path, slurm, first_at):
    """SIGTERM to the sweep's own process (Ctrl-C alike) while job 1 trains (held after epoch
    2) and job 0 has just started (before Hydra composes its config, where submitit would
    ignore the SIGTERM) or has just opened its run: it cancels both, their runs end KILLED
    (job 0, not started, opened none), and the parent ends KILLED with the `resume=` line."""
    holds = Hold(tmp_path, first_at, job=0), Hold(tmp_path, "epoch-2", job=1)
    proc = start_cli(tmp_path, *SWEEP, "seed=1,2", env=slurm.env | Hold.together(*holds))
    for hold in holds:
        hold.wait(proc)
    proc.terminate()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, out
    assert out.strip().splitlines()[-1].startswith("stopped by SIGTERM: sweep run "), out
    assert slurm.jobs() == []  # none left pending or running
    client, parent, children = _children(tmp_path)
    assert parent.info.status == "KILLED"
    logs = _logs(tmp_path)
    ended = {c.data.tags["sweep.job"]: (c.info.status, _steps(client, c)) for c in children}
    if first_at == "started":
        assert ended == {"1": ("KILLED", [1, 2])}, logs
        assert "stopped by SIGTERM: no run was opened" in _log(_job_folder(tmp_path, 0)), logs
    else:
        assert ended == {"0": ("KILLED", []), "1": ("KILLED", [1, 2])}, logs
    assert "Traceback" not in logs
