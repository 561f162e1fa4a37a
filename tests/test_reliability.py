"""Faults lose nothing; runs resume and reproduce; secrets stay out of the records."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from digitcnn import tracking
from digitcnn.core.config_groups import TrackingConfig
from tests.conftest import (
    ON_LINUX,
    Hold,
    cli_env,
    client_for,
    failure_report,
    only_run,
    recorder_processes,
    recorders_end,
    run_cli,
    runs_of,
    start_cli,
    store_uri,
    wait_for_epoch,
)

DIGITS = ("dataset=digits", "dataset.val_size=180")


def test_exception_in_training_ends_failed_with_traceback(tmp_path):
    proc = run_cli(
        tmp_path, *DIGITS, "trainer.epochs=2", "optimizer.lr=1e30", "tracking.experiment=fault"
    )
    assert proc.returncode != 0
    client, run = only_run(tmp_path, "fault")
    assert run.info.status == "FAILED"
    folder = Path(client.download_artifacts(run.info.run_id, ""))
    traceback = (folder / "traceback.txt").read_text()
    assert "FloatingPointError: training diverged" in traceback
    assert not list(folder.glob("*.png"))  # nothing half-made was logged after the fault


def test_sigkill_then_resume_continues_the_same_run(tmp_path):
    hold = Hold(tmp_path, "epoch-2")  # killed exactly after epoch 2's checkpoint
    proc = start_cli(
        tmp_path, *DIGITS, "trainer.epochs=4", "tracking.experiment=resume", env=hold.env
    )
    hold.wait(proc)
    folder = wait_for_epoch(tmp_path, 2, proc)
    recorders = recorder_processes(proc.pid)
    assert recorders or not ON_LINUX
    for recorder in recorders:  # the run's writer lock is its training process's alone
        held = [os.readlink(fd) for fd in Path(f"/proc/{recorder}/fd").iterdir()]
        assert not [path for path in held if path.endswith("writer.lock")], held
    proc.kill()  # SIGKILL: no handler runs, the MLflow run is left RUNNING
    proc.wait(timeout=60)
    assert recorders_end(recorders)  # killed with it: nothing writes to the run after
    client, run = only_run(tmp_path, "resume")
    assert run.info.status == "RUNNING"

    refused = run_cli(tmp_path, f"resume={run.info.run_id}", "model.dropout=0.5")
    assert refused.returncode == 2 and "not model.dropout=0.5" in refused.stderr

    resumed = run_cli(tmp_path, f"resume={run.info.run_id}")
    assert resumed.returncode == 0, failure_report(resumed)
    client, run = only_run(tmp_path, "resume")  # the same run, not a new one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert "test_accuracy" in run.data.metrics
    assert json.loads((folder / "checkpoint" / "state.json").read_text())["epoch"] == 4


def test_resume_by_output_folder_and_epochs_extension(tmp_path):
    proc = run_cli(tmp_path, *DIGITS, "trainer.epochs=1", "tracking.experiment=extend")
    assert proc.returncode == 0, failure_report(proc)
    (folder,) = tmp_path.glob("outputs/*/*")
    proc = run_cli(tmp_path, f"resume={folder}", "trainer.epochs=2")
    assert proc.returncode == 0, failure_report(proc)
    client, run = only_run(tmp_path, "extend")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2]


def _weights(client, run_id: str) -> list[np.ndarray]:
    """The weights of the Keras model inside a run's logged pyfunc model."""
    import keras

    mlflow.set_tracking_uri(client.tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    (path,) = folder.rglob("model.keras")
    return keras.saving.load_model(path, compile=False).get_weights()


def test_deterministic_runs_are_bit_identical_and_rerun_repeats(tmp_path):
    args = (
        *DIGITS,
        "trainer.epochs=2",
        "trainer.deterministic=true",
        "seed=7",
        "tracking.experiment=det",
    )
    for _ in range(2):
        proc = run_cli(tmp_path, *args)
        assert proc.returncode == 0, failure_report(proc)
    client = client_for(tmp_path)
    first, second = runs_of(tmp_path, "det")
    proc = run_cli(tmp_path, f"rerun={first.info.run_id}")
    assert proc.returncode == 0, failure_report(proc)
    rerun = runs_of(tmp_path, "det")[-1]
    assert rerun.data.tags["rerun_of"] == first.info.run_id
    for other in (second, rerun):
        assert other.data.metrics["test_accuracy"] == first.data.metrics["test_accuracy"]
        assert other.data.metrics["test_loss"] == first.data.metrics["test_loss"]
        for a, b in zip(
            _weights(client, first.info.run_id), _weights(client, other.info.run_id), strict=True
        ):
            np.testing.assert_array_equal(a, b)


LEAKED = "tracking:\n  uri: http://alice:s3cr3t-pw@127.0.0.1:9\n"


@pytest.mark.parametrize(
    ("args", "env", "files"),
    [
        (("tracking.uri=http://alice:s3cr3t-pw@127.0.0.1:9",), {}, {}),
        (("tracking.uri='http://alice:s3cr3t-pw@127.0.0.1:9'",), {}, {}),  # quoted
        (("-m", "seed=1,2", "tracking.uri=http://alice:s3cr3t-pw@127.0.0.1:9"), {}, {}),
        (("-m", "tracking.uri=http://127.0.0.1:9,http://alice:s3cr3t-pw@127.0.0.1:9"), {}, {}),
        ((), {"MLFLOW_TRACKING_URI": "http://alice:s3cr3t-pw@127.0.0.1:9"}, {}),
        ((), {}, {"local/default.yaml": f"# @package _global_\n{LEAKED}"}),  # conf/local/
        (("experiment=leaky",), {}, {"experiment/leaky.yaml": f"# @package _global_\n{LEAKED}"}),
        (
            (
                "-m",
                "hparams_search=optuna",
                "hydra.sweeper.storage=postgresql://optuna:s3cr3t-pw@127.0.0.1:9/optuna",
            ),
            {},
            {},
        ),
    ],
    ids=[
        "override",
        "quoted",
        "sweep",
        "a-swept-value",
        "environment",
        "local",
        "recipe",
        "study-storage",
    ],
)
def test_a_password_in_the_tracking_uri_is_refused_before_any_file(tmp_path, args, env, files):
    """Hydra writes the overrides and the config to the run's folder (mode 0644) before any
    job runs: a password in a URI is refused first, wherever it comes from (the command line,
    the environment, conf/local/, a recipe: `files`, found on an added search path as Hydra
    finds them in conf/ and experiments/), in one line that says where it goes."""
    for name, text in files.items():
        (tmp_path / "extra" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "extra" / name).write_text(text)
    searchpath = (f"hydra.searchpath=[file://{tmp_path / 'extra'}]",) if files else ()
    proc = run_cli(tmp_path, *args, *DIGITS, *searchpath, env=env)
    assert proc.returncode == 2, failure_report(proc)
    (line,) = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert "carries a password" in line, line
    if "hydra.sweeper.storage" in line:
        assert "hydra.sweeper.storage=postgresql://127.0.0.1:9/optuna and the password" in line
    else:
        assert "tracking.uri=http://127.0.0.1:9 and" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr
    written = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and "home" not in p.parts and "extra" not in p.parts
    ]
    assert not [p for p in written if b"s3cr3t-pw" in p.read_bytes()], written


def test_credentials_from_the_environment_are_never_recorded(tmp_path, mlflow_server):
    """A user name in the URI and the password in MLFLOW_TRACKING_PASSWORD: the run records
    neither the password nor anything that would reveal it."""
    port, store, _ = mlflow_server
    secret = "s3cr3t-pw"
    uri = f"http://alice@127.0.0.1:{port}"
    proc = run_cli(
        tmp_path,
        *DIGITS,
        "trainer.epochs=1",
        f"tracking.uri={uri}",
        "tracking.experiment=creds",
        env={"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": secret},
    )
    assert proc.returncode == 0, failure_report(proc)
    assert secret not in proc.stdout + proc.stderr

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{port}")
    (run,) = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
    assert secret not in json.dumps([run.data.params, run.data.tags])
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    for path in [*folder.rglob("*"), *tmp_path.glob("outputs/**/*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret.encode() not in (store / "mlflow.db").read_bytes()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("tracking.uri=http://127.0.0.1:9",),
            "tracking.uri='http://127.0.0.1:9' is not reachable",
        ),
        (
            ("tracking.artifact_location=/proc/nowhere",),
            "tracking.artifact_location='/proc/nowhere'",
        ),
    ],
)
def test_unusable_store_fails_before_any_run(tmp_path, args, says):
    proc = run_cli(tmp_path, *DIGITS, "tracking.experiment=bad", *args)
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("mlruns/artifacts/*/artifacts"))


def test_a_dataset_another_job_records_mid_insert_is_linked_not_fatal(tmp_path):
    """Parallel jobs log the same dataset. MLflow looks it up, then inserts it; this test
    lets another job insert it in between (a real second connection, committing before our
    INSERT runs) and expects our run to link to that record instead of failing."""
    import mlflow

    cfg = TrackingConfig(
        uri=store_uri(tmp_path), experiment="race", artifact_location=str(tmp_path / "art")
    )
    store = tracking.preflight(cfg)
    other_run = store.client.create_run(store.experiment_id).info.run_id
    images, labels = np.zeros((4, 8, 8, 1), np.float32), np.arange(4)

    def other_job_logs(run_id: str) -> None:
        with mlflow.start_run(run_id=run_id):  # this thread's own active run
            recorder = tracking.Recorder(store.client, run_id, "")
            recorder.log_dataset(images, labels, "digits", "d" * 64, "source")

    raced = []

    def before_insert(conn, cursor, statement, *args) -> None:
        if statement.startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)
            other = threading.Thread(target=other_job_logs, args=(other_run,))
            other.start()
            other.join()

    event.listen(Engine, "before_cursor_execute", before_insert)
    try:
        with tracking.tracked_run(store, "ours", {}) as recorder:
            recorder.log_dataset(images, labels, "digits", "d" * 64, "source")
    finally:
        event.remove(Engine, "before_cursor_execute", before_insert)

    assert raced, "the race was not staged: MLflow no longer inserts datasets this way"
    ours = store.client.get_run(recorder.run_id)
    theirs = store.client.get_run(other_run)
    assert ours.info.status == "FINISHED"
    (our_input,) = ours.inputs.dataset_inputs
    (their_input,) = theirs.inputs.dataset_inputs
    assert our_input.dataset.digest == their_input.dataset.digest == "d" * 36


@pytest.mark.new_store
def test_runs_started_together_on_a_new_store_are_all_recorded(tmp_path):
    """Several terminals, one new project: MLflow creates the SQLite tables when the first
    client is made, and runs that start side by side must not each try to."""
    procs = [
        start_cli(tmp_path, *DIGITS, "trainer.epochs=1", f"seed={seed}", "tracking.experiment=t")
        for seed in range(3)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert sorted(run.data.params["seed"] for run in runs) == ["0", "1", "2"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all("test_accuracy" in run.data.metrics for run in runs)


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc")
def test_a_recorder_process_killed_mid_training_leaves_the_run_to_resume(tmp_path):
    """A single run's recorder process (MLflow) killed while the model trains: training stops
    at the epoch's end with one line saying how to go on; resume= records every epoch and
    finishes the same run."""
    temporary = {"TMPDIR": str(tmp_path / "tmp")}  # where the files handed over are made
    (tmp_path / "tmp").mkdir()
    hold = Hold(tmp_path, "epoch-1")
    proc = start_cli(
        tmp_path, *DIGITS, "trainer.epochs=3", "tracking.experiment=rp", env=temporary | hold.env
    )
    hold.wait(proc)
    (recorder,) = recorder_processes(proc.pid)
    os.kill(recorder, signal.SIGKILL)
    hold.release()  # epoch 2 trains, then finds its recorder gone
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 2, output
    last = output.strip().splitlines()[-1]
    assert "recorder process (MLflow) ended unexpectedly, killed by signal 9" in last
    assert "resume=" in last and "Traceback" not in output
    client, run = only_run(tmp_path, "rp")
    assert run.info.status == "RUNNING"

    resumed = run_cli(tmp_path, f"resume={run.info.run_id}", env=temporary)
    assert resumed.returncode == 0, failure_report(resumed)
    assert "(in the recorder process)" in resumed.stdout + resumed.stderr
    assert not list((tmp_path / "tmp").iterdir())  # every file handed over was removed
    client, run = only_run(tmp_path, "rp")
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]


def test_the_training_side_of_a_single_run_imports_no_mlflow(tmp_path):
    """What a single run's training process runs leaves MLflow (~1.5 s of imports) to its
    recorder process."""
    training_side = (
        "digitcnn.job",
        "digitcnn.training.debug",
        "digitcnn.training.fit",
        "digitcnn.evaluation.figures",
        "digitcnn.tracking.callback",
        "digitcnn.tracking.describe",
        "digitcnn.tracking.files",
        "digitcnn.tracking.job_record",
        "digitcnn.tracking.recording",
        "digitcnn.training.epochs",
    )
    code = f"import sys, {', '.join(training_side)}; print('mlflow' in sys.modules)"
    check = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert check.stdout.strip() == "False", check.stderr


@pytest.mark.skipif(not ON_LINUX, reason="forks only on Linux")
def test_a_single_runs_recorder_is_forked_from_its_one_thread_before_numpy(tmp_path):
    """The recorder process is forked from the command, which then runs one thread and has
    imported neither NumPy (OpenBLAS's threads) nor Keras nor MLflow: a new interpreter
    started cold, as a user's command is."""
    proc = run_cli(
        tmp_path,
        *DIGITS,
        "trainer.epochs=1",
        "tracking.log_model=false",
        "hydra.verbose=digitcnn.tracking.recorder_start",
        fresh=True,
    )
    assert proc.returncode == 0, failure_report(proc)
    assert re.search(r"recorder process \d+ forked", proc.stderr), proc.stderr
    assert "new interpreter" not in proc.stderr
    run = only_run(tmp_path, "digitcnn")[1]
    assert run.data.tags["mlflow.source.name"].endswith(os.path.join("digitcnn", "run.py"))


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc")
def test_a_process_running_threads_starts_its_recorder_as_a_new_interpreter(tmp_path):
    """A fork would copy only the calling thread (a lock another holds stays held): where a
    thread runs beside it, the recorder is `python -m digitcnn.tracking.service` instead,
    and records the same."""
    from digitcnn.tracking.recording import RecorderProcess

    cfg = TrackingConfig(
        uri=store_uri(tmp_path), experiment="threads", artifact_location=str(tmp_path / "art")
    )
    beside = threading.Event()
    thread = threading.Thread(target=beside.wait)
    thread.start()
    try:
        recording = RecorderProcess()
        try:
            recording.check_store(cfg)
            recording.preflight()
            recorders = recorder_processes(os.getpid())
            (recorder_pid,) = recorders
            command = Path(f"/proc/{recorder_pid}/cmdline").read_bytes().split(b"\0")
            assert b"digitcnn.tracking.service" in command
            with recording.tracked_run("beside a thread", {}) as recorder:
                recorder.log_metrics({"accuracy": 0.5}, step=1)
        finally:
            recording.close()
    finally:
        beside.set()
        thread.join()
    assert recorder.ended == "FINISHED"
    run = only_run(tmp_path, "threads")[1]
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 0.5
    assert run.data.tags["mlflow.source.name"] == sys.argv[0]  # this process's, not service.py
    assert recorders_end(recorders, timeout=0)
