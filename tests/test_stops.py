"""Every stop is a clean stop: the signals a terminal, a scheduler or systemd sends, and two
processes that try to continue one run. Real processes, real signals, records read back with
MLflow's client."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from digitcnn.core.stops import GRACE_SECONDS
from digitcnn.training.checkpoint import read_checkpoint
from tests.conftest import (
    ON_LINUX,
    Hold,
    failure_report,
    only_run,
    recorder_processes,
    recorders_end,
    run_cli,
    start_cli,
    wait_for_epoch,
)

# The 8x8 digits, three epochs; each test holds the run in the middle of epoch 2 (a named
# fault point, digitcnn.core.faults) and stops it there: epoch 1 is the one to continue after.
DIGITS = ("dataset=digits", "dataset.val_size=180", "trainer.epochs=3")
MID_EPOCH = "mid-epoch-2"


def stop_line(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if "stopped by SIG" in ln]
    return line


def steps(client, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "val_accuracy")]


@pytest.mark.parametrize(
    ("signum", "to_group", "fresh"),
    [
        (signal.SIGTERM, False, False),  # Slurm, Kubernetes, systemd, `timeout`: to the process
        (signal.SIGHUP, True, False),  # a closed terminal or a dropped ssh session: to the group
        (signal.SIGINT, True, False),  # Ctrl-C: to the foreground group, the recorder included
        # The same SIGTERM to a cold start, not a fork of the warm interpreter (tests/warm_cli.py)
        (signal.SIGTERM, False, True),
    ],
)
def test_a_stop_signal_ends_a_single_run_killed_with_one_line(tmp_path, signum, to_group, fresh):
    if signal.getsignal(signum) is signal.SIG_IGN:  # the suite under `nohup`: its commands
        pytest.skip(f"{signum.name} is ignored here, so the commands rightly ignore it too")
    hold = Hold(tmp_path, MID_EPOCH)
    proc = start_cli(
        tmp_path, *DIGITS, "tracking.experiment=stop", env=hold.env, own_group=True, fresh=fresh
    )
    hold.wait(proc)
    folder = wait_for_epoch(tmp_path, 1, proc)
    recorders = recorder_processes(proc.pid)
    assert recorders or not ON_LINUX
    sent = time.monotonic()
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    output = proc.communicate(timeout=60)[0]
    took = time.monotonic() - sent

    assert proc.returncode == 128 + signum, output[-3000:]
    assert took < 10, f"{took:.1f} s from the signal to the exit"  # a scheduler waits 30 s
    assert "Traceback" not in output
    client, run = only_run(tmp_path, "stop")
    assert run.info.status == "KILLED"
    assert run.data.tags["stopped_by"] == signal.Signals(signum).name
    done = int(re.search(r"continues after epoch (\d+) of 3", stop_line(output))[1])
    assert done == 1
    assert stop_line(output).startswith(
        f"stopped by {signal.Signals(signum).name}: run {run.info.run_id} ended KILLED; "
        f"`python -m digitcnn.run resume={folder}`"
    )
    assert sorted(steps(client, run.info.run_id)) == list(range(1, done + 1))  # each once
    assert recorders_end(recorders)

    if signum == signal.SIGTERM:  # what the line says works: the same run goes on
        resumed = run_cli(tmp_path, f"resume={folder}", f"trainer.epochs={done + 1}")
        assert resumed.returncode == 0, failure_report(resumed)
        client, run = only_run(tmp_path, "stop")
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        assert sorted(steps(client, run.info.run_id)) == list(range(1, done + 2))


def test_a_stop_with_the_tracking_server_hung_exits_within_the_grace(tmp_path, mlflow_server):
    """The server stops answering (SIGSTOP: a hung machine, a network that drops packets),
    then the scheduler sends SIGTERM: the process still exits well inside 30 s, says the run
    is left RUNNING, and resume= finishes it once the server is back."""
    port, _, server = mlflow_server
    uri = f"tracking.uri=http://127.0.0.1:{port}"
    hold = Hold(tmp_path, MID_EPOCH)
    proc = start_cli(tmp_path, *DIGITS, uri, "tracking.experiment=hung", env=hold.env)
    hold.wait(proc)
    folder = wait_for_epoch(tmp_path, 1, proc)
    os.killpg(server.pid, signal.SIGSTOP)
    try:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        os.killpg(server.pid, signal.SIGCONT)
    assert proc.returncode == 143, output[-3000:]
    assert took < GRACE_SECONDS + 5, f"{took:.1f} s"
    assert "is left RUNNING (its recorder did not answer in time)" in stop_line(output)
    assert f"resume={folder}` continues after epoch" in stop_line(output)

    resumed = run_cli(tmp_path, f"resume={folder}", "trainer.epochs=2", uri)
    assert resumed.returncode == 0, failure_report(resumed)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{port}")
    (run,) = client.search_runs([client.get_experiment_by_name("hung").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(steps(client, run.info.run_id)) == [1, 2]


def test_one_run_is_continued_by_one_process_at_a_time(tmp_path):
    """A resume= of a run whose process is alive is refused, naming that process; of two
    resume= started together on a killed run, one trains and the other is refused; no epoch
    is recorded twice."""
    hold = Hold(tmp_path, MID_EPOCH)
    proc = start_cli(tmp_path, *DIGITS, "tracking.experiment=two", env=hold.env)
    hold.wait(proc)
    folder = wait_for_epoch(tmp_path, 1, proc)
    _, run = only_run(tmp_path, "two")
    alive = run_cli(tmp_path, f"resume={run.info.run_id}")
    assert alive.returncode == 2, failure_report(alive)
    (line,) = [ln for ln in alive.stderr.splitlines() if ln.startswith("error:")]
    assert f"is being written by process {proc.pid} on " in line, line
    proc.kill()  # SIGKILL: the kernel drops its lock, the run stays RUNNING
    proc.wait(timeout=60)
    done = read_checkpoint(folder).epoch

    more = f"trainer.epochs={done + 2}"
    both = [start_cli(tmp_path, f"resume={folder}", more) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 2], outputs
    refused = outputs[[p.returncode for p in both].index(2)]
    assert "is being written by process" in refused and "Traceback" not in refused
    client, run = only_run(tmp_path, "two")
    assert run.info.status == "FINISHED"
    assert sorted(steps(client, run.info.run_id)) == list(range(1, done + 3))


@pytest.mark.skipif(not ON_LINUX, reason="flock, /proc")
def test_a_refusal_names_the_holder_that_has_just_taken_the_lock(tmp_path, monkeypatch):
    """Between taking the lock and writing who it is, a new holder leaves the file naming the
    holder before it, dead: the refusal reads again and names the new one (found as the
    two-resumers case above refused with `another process`)."""
    import fcntl
    import json
    import socket
    import subprocess
    import sys

    from digitcnn.core import writer_lock

    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = folder / writer_lock.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": 0}))
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the new holder, before it says who it is
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    waits = []

    def now_written(seconds: float) -> None:  # the refusal's first wait: the holder writes
        if not waits:
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.ftruncate(fd, len(json.dumps(holder)))
        waits.append(seconds)

    monkeypatch.setattr(time, "sleep", now_written)
    try:
        with pytest.raises(writer_lock.RunBusy) as refused, writer_lock.writing(folder, "x"):
            pass
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert f"process {os.getpid()} on " in str(refused.value)
    assert f"process {dead.pid} " not in str(refused.value) and len(waits) == 1
