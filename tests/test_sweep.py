"""Real sweeps through the CLI: parent and child runs, summaries, Optuna, joblib, failures."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import Hold, cli_env, client_for, failure_report, run_cli, start_cli

QUICK = ("experiment=quick", "dataset.val_size=180")


def sweep_runs(root: Path, experiment: str = "quick"):
    """(parent run, child runs sorted by job number) of the only sweep in `experiment`."""
    client = client_for(root)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # nothing outside the sweep
    return client, parent, sorted(children, key=lambda r: int(r.data.tags["sweep.job"]))


def summary_table(client, parent) -> pd.DataFrame:
    folder = Path(client.download_artifacts(parent.info.run_id, ""))
    assert {"sweep_summary.md", "sweep_summary.html", "objective.png"} <= {
        p.name for p in folder.iterdir()
    }
    return pd.read_csv(folder / "sweep_summary.csv", index_col="job")


def test_grid_sweep_has_a_parent_with_summary_and_best_job(tmp_path):
    proc = run_cli(tmp_path, "-m", *QUICK, "model.dropout=0.1,0.3")
    assert proc.returncode == 0, failure_report(proc)
    client, parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.run_name for c in children] == [
        f"{QUICK[0]},{QUICK[1]},model.dropout=0.1",
        f"{QUICK[0]},{QUICK[1]},model.dropout=0.3",
    ]
    assert all(c.info.status == "FINISHED" for c in children)
    table = summary_table(client, parent)
    assert list(table["status"]) == ["FINISHED", "FINISHED"]
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    assert parent.data.metrics["best_test_accuracy"] == best.data.metrics["test_accuracy"]


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """The first job fails a range check, before this process has imported Keras: its record
    must not import it either (TensorFlow's C++ start-up lines reached the console bare)."""
    proc = run_cli(tmp_path, "-m", *QUICK, "model.dropout=1.5,0.1,0.3")
    assert proc.returncode != 0  # the sweep says it failed, after recording everything
    assert "1 of 3 jobs failed" in proc.stdout + proc.stderr
    client, parent, children = sweep_runs(tmp_path)
    assert [c.info.status for c in children] == ["FAILED", "FINISHED", "FINISHED"]
    assert "model.dropout=1.5 is not allowed" in children[0].data.tags["error"]
    assert parent.info.status == "FAILED"
    table = summary_table(client, parent)
    assert list(table["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    assert parent.data.tags["best.run_id"] in {children[1].info.run_id, children[2].info.run_id}
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("|")]
    unmarked = [ln for ln in lines if not re.match(r"\[job [0-2]\] |sweep     ", ln)]
    assert not unmarked, unmarked


def test_parallel_jobs_share_the_cpus_lose_no_run_and_report_mean_and_spread(tmp_path):
    """A seed sweep, 2 jobs at a time: every run recorded, each job's share of the cores, the
    parent's mean and spread over the seeds, each line marked with its job (MLflow's own
    lines when a job registers its model too)."""
    proc = run_cli(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *QUICK,
        "seed=0,1,2,3",
        "tracking.register_as=digits",
    )
    assert proc.returncode == 0, failure_report(proc)
    assert "database is locked" not in proc.stderr
    _, parent, children = sweep_runs(tmp_path)
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.data.tags["sweep.launcher"] == "JoblibLauncher"
    accuracies = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
    assert parent.data.metrics["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    # 2 jobs at once on this machine's cores: each gets its share, at least one thread.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert {c.data.params["derived.intra_op_threads"] for c in children} == {str(share)}
    # The console says which job wrote each line; the sweep's own lines have one format.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("|")]
    jobs = [ln for ln in lines if re.match(r"\[job [0-3]\] ", ln)]
    assert len({ln[:8] for ln in jobs}) == 4 and any(" epoch 1/" in ln for ln in jobs), lines
    registered = sorted(ln.rsplit(" ", 1)[1] for ln in jobs if "registered as digits" in ln)
    assert registered == ["1", "2", "3", "4"], lines
    unmarked = [ln for ln in lines if ln not in jobs and not ln.startswith("sweep     ")]
    assert not unmarked, unmarked


def test_two_sweeps_started_together_get_their_own_folders(tmp_path):
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from digitcnn.core import paths\n"
        "from digitcnn.core.config import register_configs\n"
        "register_configs()\n"
        "with initialize_config_dir(str(paths.config_dir()), version_base='1.3'):\n"
        "    print(compose('config', return_hydra_config=True).hydra.sweep.dir)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=cli_env(tmp_path), stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith(str(tmp_path / "multirun")) for d in dirs)
    assert dirs[0] != dirs[1]


def test_a_killed_sweep_resumes_into_its_parent_and_skips_finished_jobs(tmp_path):
    """SIGKILL a sweep once a job has finished and the next has a checkpoint, then resume it
    from its folder: the finished job is not run again, the interrupted one goes on from its
    checkpoint in its own run, the parent closes with every job once."""
    sweep = [*QUICK, "trainer.epochs=3", "seed=1,2,3"]
    hold = Hold(tmp_path, "epoch-1", job=1)  # job 0 finished, job 1 checkpointed its epoch 1
    killed = start_cli(tmp_path, "-m", *sweep, env=hold.env, own_group=True)
    hold.wait(killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    _, parent, before = sweep_runs(tmp_path)
    assert parent.info.status == "RUNNING"  # what a SIGKILL leaves
    done_before = {c.info.run_id for c in before if c.info.status == "FINISHED"}
    interrupted = {c.info.run_id for c in before if c.info.status == "RUNNING"}
    assert len(done_before) == 1 and len(interrupted) == 1

    (folder,) = (tmp_path / "multirun").glob("*/*")
    proc = run_cli(tmp_path, "-m", *sweep, f"resume={folder}")
    assert proc.returncode == 0, failure_report(proc)
    assert proc.stderr.count("not run again") == len(done_before)

    client, parent_after, children = sweep_runs(tmp_path)
    assert parent_after.info.run_id == parent.info.run_id
    assert parent_after.info.status == "FINISHED"
    assert parent_after.data.tags["sweep.resumed"] == "1"
    assert parent_after.data.metrics["jobs"] == 3 and parent_after.data.metrics["jobs_failed"] == 0
    counted = [c for c in children if c.data.tags.get("sweep.superseded") != "true"]
    assert sorted(c.data.params["seed"] for c in counted) == ["1", "2", "3"]  # each once
    assert all(c.info.status == "FINISHED" for c in counted)
    assert done_before <= {c.info.run_id for c in counted}  # kept, not run again
    (continued,) = [c for c in counted if c.info.run_id in interrupted]
    assert "resumed_after_epoch" in continued.data.tags
    history = client.get_metric_history(continued.info.run_id, "val_accuracy")
    assert sorted({m.step for m in history}) == [1, 2, 3]
    assert all(c.info.status == "KILLED" for c in children if c not in counted)
    # A job's name and summary row are the same whether or not the resumed sweep ran it.
    names = {c.data.params["seed"]: c.info.run_name for c in counted}
    assert names == {s: ",".join([*QUICK, "trainer.epochs=3", f"seed={s}"]) for s in "123"}
    assert not summary_table(client, parent_after)["overrides"].str.contains("resume=").any()


@pytest.mark.parametrize(
    ("signum", "launcher"),
    [
        (signal.SIGINT, ()),  # Ctrl-C in the terminal: the whole foreground group
        (signal.SIGTERM, ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")),
    ],
)
def test_a_stopped_sweep_ends_killed_and_resumes(tmp_path, signum, launcher):
    """A stop signal mid-epoch (Ctrl-C to the group with the basic launcher; a scheduler's
    SIGTERM to the sweep's process alone, its jobs in joblib's worker processes): the parent
    and every running job end KILLED with their epochs recorded, one line says how to resume,
    the exit status is 128 + the signal; the printed command finishes the sweep."""
    sweep = [*QUICK, "trainer.epochs=3", "seed=1,2", *launcher]
    hold = Hold(tmp_path, "mid-epoch-2", job=0)  # job 0 mid-epoch; a parallel job 1 anywhere
    proc = start_cli(tmp_path, "-m", *sweep, env=hold.env, own_group=True)
    hold.wait(proc)
    sent = time.monotonic()  # wherever job 1 is, the outcome is the same
    if launcher:
        os.kill(proc.pid, signum)
    else:
        os.killpg(proc.pid, signum)
    output = proc.communicate(timeout=120)[0]
    took = time.monotonic() - sent

    assert proc.returncode == 128 + signum, output[-3000:]
    assert took < 25, f"{took:.1f} s from the signal to the exit"
    assert "Traceback" not in output
    client, parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "KILLED"
    assert all(c.info.status in ("KILLED", "FINISHED") for c in children)
    for child in children:
        folder = Path(child.data.tags["hydra.output_dir"])
        state = folder / "checkpoint" / "state.json"
        done = json.loads(state.read_text())["epoch"] if state.is_file() else 0
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        # Each epoch once; the one checkpointed as the stop came may wait for resume=, which
        # records it (a job's worker may be ended before its last write).
        assert steps in (list(range(1, done + 1)), list(range(1, done))), (steps, done)
    (line,) = [ln for ln in output.splitlines() if "stopped by " in ln]
    (folder,) = (tmp_path / "multirun").glob("*/*")
    command = line.split("`")[1]
    assert line.split("stopped by ")[1].startswith(
        f"{signal.Signals(signum).name}: sweep run {parent.info.run_id} ended KILLED"
    )
    assert command.endswith(f"resume={folder}"), line

    resumed = run_cli(tmp_path, *shlex.split(command)[3:])  # after `python -m digitcnn.run`
    assert resumed.returncode == 0, failure_report(resumed)
    client, parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    counted = [c for c in children if c.data.tags.get("sweep.superseded") != "true"]
    assert sorted(c.data.params["seed"] for c in counted) == ["1", "2"]
    for child in counted:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert sorted(steps) == [1, 2, 3]


def test_a_sweep_killed_outright_leaves_no_worker_behind(tmp_path):
    """SIGKILL to a joblib sweep's own process (the OOM killer, `kill -9`): its workers,
    orphaned, stop as on SIGTERM (their runs end KILLED) instead of training on unseen;
    resume= then finishes the sweep, every epoch of every job once."""
    from digitcnn.core.stops import descendants

    sweep = [*QUICK, "trainer.epochs=2", "seed=1,2"]
    sweep += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    hold = Hold(tmp_path, "mid-epoch-2")  # both jobs, each in its worker, hold mid-epoch
    proc = start_cli(tmp_path, "-m", *sweep, env=hold.env)
    hold.wait(proc)
    workers = descendants(proc.pid)
    assert workers, "the joblib launcher started no worker"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 40  # the workers' watch, then their grace
    while [w for w in workers if Path(f"/proc/{w}").exists()]:
        assert time.monotonic() < deadline, "workers left running after their sweep died"
        time.sleep(0.5)

    first = sorted(tmp_path.glob("multirun/*/*"))[0]
    resumed = run_cli(tmp_path, "-m", *sweep, f"resume={first}")
    assert resumed.returncode == 0, failure_report(resumed)
    client, parent, children = sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    counted = [c for c in children if c.data.tags.get("sweep.superseded") != "true"]
    assert sorted(c.info.status for c in counted) == ["FINISHED", "FINISHED"]
    for child in counted:
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
