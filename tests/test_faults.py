"""Faults around a run: a full disk, a file size limit, a damaged or unwritable store. Each is
one line, no half-written file under a final name, no empty artifact, and a record that says
what happened."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, client_for, failure_report, only_run, run_cli

DIGITS = ("dataset=digits", "dataset.val_size=180")
# A dense layer of 1024 units makes each checkpoint of the digits model about 4 MB.
BIG = ("model.dense_units=1024",)


def error_lines(output: str) -> list[str]:
    """The lines that say `error: ...`, less the time stamp a sweep's log puts before them."""
    return [ln[ln.index("error: ") :] for ln in output.splitlines() if "error: " in ln]


def partial_files(root: Path) -> list[Path]:
    """Files under a temporary or cut name: what `written_whole` never leaves behind."""
    return [p for p in root.rglob("*") if ".partial" in p.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 7 MiB filesystem of its own (tmpfs): the store, the run's folder and TMPDIR all on
    it. Needs the right to mount (root, as in CI); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root and must mount a tmpfs: {mounted.stderr!r}")
        pytest.skip("mounting a tmpfs needs root")
    (disk / "tmp").mkdir()
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_a_full_disk_keeps_the_last_whole_checkpoint_and_says_how_to_go_on(small_disk):
    """The second checkpoint does not fit: no cut file under its name, the first checkpoint
    and its state are whole, the run ends FAILED without an empty traceback, one line says
    where the disk is full; once there is room, resume= continues after epoch 1."""
    env = {"TMPDIR": str(small_disk / "tmp")}
    proc = run_cli(
        small_disk, *DIGITS, *BIG, "trainer.epochs=3", "tracking.experiment=full", env=env
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, failure_report(proc)
    (line,) = error_lines(output)
    assert line.startswith(f"error: no space left on the disk holding {small_disk}"), line
    assert "continues after epoch 1 of 3" in line and "Traceback" not in output
    (folder,) = small_disk.glob("outputs/*/*")
    assert [p.name for p in (folder / "checkpoint").glob("*.keras")] == ["epoch-001.keras"]
    assert not partial_files(small_disk)
    # No file handed over to the recorder is left (Keras leaves an empty tmp*/assets folder
    # when a save fails: empty, so no data of the run).
    assert not [p for p in (small_disk / "tmp").rglob("*") if p.is_file()]
    client, run = only_run(small_disk, "full")
    assert run.info.status == "FAILED" and run.data.tags["stopped_by"] == "disk full"
    artifacts = small_disk / "mlruns" / "artifacts"
    assert not [p for p in artifacts.rglob("*") if p.is_file() and p.stat().st_size == 0]

    grow(small_disk, "64m")
    resumed = run_cli(small_disk, f"resume={folder}", env=env)
    assert resumed.returncode == 0, failure_report(resumed)
    client, run = only_run(small_disk, "full")
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]


GRID = ("-m", "model.dropout=0.1,0.2,0.3")
SEARCH = (
    "-m",
    "hparams_search=optuna",
    "experiment=quick",
    "hydra/sweeper/pruner=none",
    "hydra.sweeper.n_trials=3",
)


@pytest.mark.parametrize("sweep", [GRID, SEARCH], ids=["grid", "search"])
def test_a_full_disk_stops_a_sweep_at_its_first_job_and_resume_finishes_it(small_disk, sweep):
    """The first job's second checkpoint does not fit: the sweep stops there, as on a signal
    (the jobs after it would all fail, a search would count them as failed trials), one line
    per process and no traceback; once there is room, the sweep's `resume=` finishes every
    job, the first after its checkpointed epoch."""
    env = {"TMPDIR": str(small_disk / "tmp")}
    args = [*sweep, *DIGITS, *BIG, "trainer.epochs=2", "tracking.experiment=full"]
    proc = run_cli(small_disk, *args, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, failure_report(proc)
    assert "Traceback" not in output
    (job_line,) = [ln for ln in output.splitlines() if "job #0 failed: no space left" in ln]
    assert "then resuming the sweep (`resume=` its folder) continues after epoch 1 of 2" in job_line
    (folder,) = small_disk.glob("multirun/*/*")
    (stop_line,) = [ln for ln in output.splitlines() if ln.startswith("stopped by")]
    assert stop_line.startswith("stopped by disk full: sweep run "), stop_line
    assert "with 0 jobs FINISHED and 1 FAILED; once there is room, `python -m digitcnn.run" in (
        stop_line
    )
    assert stop_line.endswith(f" resume={folder}` continues it"), stop_line
    assert "job #1" not in output  # no job launched after the full disk
    client = client_for(small_disk)
    experiment_id = client.get_experiment_by_name("full").experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`sweep.dir` != ''")
    assert parent.info.status == "KILLED" and parent.data.tags["stopped_by"] == "disk full"

    grow(small_disk, "64m")
    resumed = run_cli(small_disk, *args, f"resume={folder}", env=env)
    assert resumed.returncode == 0, failure_report(resumed)
    runs = client.search_runs([experiment_id])
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and r.data.tags.get("sweep.superseded") != "true"
    ]
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
    assert sum("resumed_after_epoch" in r.data.tags for r in children) == 1


def test_a_file_size_limit_is_one_line_and_leaves_no_cut_checkpoint(tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE, no root needed): the first checkpoint is larger than the
    limit, so nothing can be resumed; the run ends FAILED, no cut file is left."""
    limit = 2 * 2**20  # the store (about 1 MB) fits, a 4 MB checkpoint does not

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "digitcnn.run", *DIGITS, *BIG, "tracking.experiment=limit"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
    )
    assert proc.returncode == 2, failure_report(proc)
    (line,) = error_lines(proc.stderr)
    assert "a file grew past this process's size limit (ulimit -f)" in line, line
    assert "raise it, then start it again (no epoch was checkpointed)" in line
    assert not partial_files(tmp_path) and not list(tmp_path.glob("outputs/*/*/checkpoint/*"))
    _, run = only_run(tmp_path, "limit")
    assert run.info.status == "FAILED"


def damaged(db: Path) -> None:
    db.write_bytes(db.read_bytes()[: len(db.read_bytes()) // 3])  # cut, as a crash or a copy


def immutable(db: Path) -> None:
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a filesystem with attributes")


@pytest.mark.parametrize(
    ("harm", "says"),
    [(damaged, "is damaged (database disk image is malformed)"), (immutable, "cannot be written")],
)
def test_a_damaged_or_unwritable_store_is_one_line_from_one_process(tmp_path, harm, says):
    first = run_cli(tmp_path, *DIGITS, "trainer.epochs=1", "tracking.log_model=false")
    assert first.returncode == 0, failure_report(first)
    db = tmp_path / "mlruns" / "mlflow.db"
    before = sorted(p.name for p in (tmp_path / "mlruns").iterdir())
    harm(db)
    try:
        proc = run_cli(tmp_path, *DIGITS, "trainer.epochs=1")
        sweep = run_cli(tmp_path, "-m", *DIGITS, "trainer.epochs=1", "seed=1,2")
    finally:
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)
    for attempt in (proc, sweep):
        output = attempt.stdout + attempt.stderr
        assert attempt.returncode == 2, failure_report(attempt)
        (line,) = error_lines(output)
        assert f"the store's database {db} {says}" in line, line
        assert "Traceback" not in output and "sqlalchemy" not in output.lower()
    assert sorted(p.name for p in (tmp_path / "mlruns").iterdir()) == before


def test_a_run_name_longer_than_mlflow_keeps_is_cut_from_the_overrides(tmp_path):
    """A run named from many overrides is cut to MLflow's 250 characters (the overrides tag
    keeps them all); a name the user gives that long is refused."""
    overrides = [f"tags=[{','.join(f'label{i:03d}' for i in range(40))}]"]
    proc = run_cli(tmp_path, "experiment=quick", *overrides)
    assert proc.returncode == 0, failure_report(proc)
    _, run = only_run(tmp_path, "quick")
    assert len(run.info.run_name) == 250 and run.info.run_name.endswith("…")
    assert "label039" in run.data.tags["overrides"]
    shutil.rmtree(tmp_path / "outputs")


def test_a_kill_while_the_model_uploads_leaves_no_unfinished_model_once_resumed(tmp_path):
    """kill -9 of the whole process group while the trained model is being logged (its
    logged model PENDING: uploaded, then loaded back by MLflow to check it); resume= finishes
    the run, which then holds one logged model, READY."""
    import signal
    import time

    from tests.conftest import client_for, start_cli

    proc = start_cli(
        tmp_path, *DIGITS, "trainer.epochs=1", "tracking.experiment=up", own_group=True
    )
    deadline = time.monotonic() + 300
    pending = []
    while not pending and proc.poll() is None and time.monotonic() < deadline:
        experiment = client_for(tmp_path).get_experiment_by_name("up")
        if experiment is not None:
            models = client_for(tmp_path).search_logged_models([experiment.experiment_id])
            pending = [m for m in models if m.status == "PENDING"]
        time.sleep(0.05)
    assert pending, "the model's upload was not seen: " + (
        proc.stdout.read() if proc.poll() else ""
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    client, run = only_run(tmp_path, "up")
    assert run.info.status == "RUNNING"
    resumed = run_cli(tmp_path, f"resume={run.info.run_id}")
    assert resumed.returncode == 0, failure_report(resumed)
    client, run = only_run(tmp_path, "up")
    assert run.info.status == "FINISHED"
    models = client.search_logged_models([run.info.experiment_id])
    assert [(m.source_run_id, str(m.status)) for m in models] == [(run.info.run_id, "READY")]


def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(tmp_path):
    """Killed after epoch 3 (a fault point), the latest checkpoint then cut in half and its
    state truncated, and a killed save's file left behind: resume= goes on from epoch 2 with
    one line saying why, records every epoch once, and leaves no partial file. With every
    checkpoint damaged, resume= refuses in one line, changing nothing."""
    args = ("experiment=quick", "trainer.epochs=4", "tracking.experiment=cut")
    killed = run_cli(tmp_path, *args, env={"DIGITCNN_FAULT": "epoch-3:SIGKILL"})
    assert killed.returncode == -9, failure_report(killed)
    (folder,) = tmp_path.glob("outputs/*/*")
    checkpoint = folder / "checkpoint"
    assert sorted(p.name for p in checkpoint.glob("epoch-*")) == [
        "epoch-002.json", "epoch-002.keras", "epoch-003.json", "epoch-003.keras",
    ]  # fmt: skip
    latest = checkpoint / "epoch-003.keras"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    (checkpoint / "state.json").write_text('{"epoch": 3, "model_f')
    (checkpoint / ".epoch-004.999999.partial.keras").write_bytes(b"cut")
    earlier = checkpoint / "epoch-002.keras"
    whole = earlier.read_bytes()
    earlier.write_bytes(whole[:100])

    refused = run_cli(tmp_path, f"resume={folder}")
    assert refused.returncode == 2, failure_report(refused)
    (line,) = error_lines(refused.stderr)
    assert "no whole checkpoint in" in line and "epoch-003.keras is damaged" in line, line
    assert "Traceback" not in refused.stdout + refused.stderr

    earlier.write_bytes(whole)
    resumed = run_cli(tmp_path, f"resume={folder}")
    assert resumed.returncode == 0, failure_report(resumed)
    (said,) = [ln for ln in resumed.stderr.splitlines() if "checkpoint: " in ln]
    assert "epoch-003.keras is damaged" in said and "going on from epoch 2" in said, said
    assert not partial_files(tmp_path)
    client, run = only_run(tmp_path, "cut")
    assert run.info.status == "FINISHED"
    for key in ("loss", "val_accuracy", "epoch_seconds"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [
            1, 2, 3, 4,
        ]  # fmt: skip


def test_a_store_locked_by_another_process_mid_run_is_waited_for(tmp_path):
    """Another process holds the SQLite store write-locked for longer than SQLite's own wait
    (MLflow's 20 s busy timeout) from the first checkpoint on, as a backup or `mlflow gc`
    does: training goes on, the run says once that its records wait, then writes them:
    FINISHED, every epoch once, every metric there, no traceback."""
    import sqlite3
    import time

    from tests.conftest import Hold, start_cli

    hold = Hold(tmp_path, "epoch-1")  # epoch 1 recorded, epochs 2 and 3 to come
    proc = start_cli(
        tmp_path, "experiment=quick", "trainer.epochs=3", "tracking.experiment=locked", env=hold.env
    )
    hold.wait(proc)
    lock = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db", timeout=60, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        hold.release()
        time.sleep(28)  # past MLflow's busy timeout: the store stays locked that long
    finally:
        lock.execute("COMMIT")
        lock.close()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output and output.count("tracking store locked") == 1, output
    client, run = only_run(tmp_path, "locked")
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3]
