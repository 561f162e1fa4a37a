"""Optuna searches through the CLI (digitcnn's own sweeper on Optuna 5): pruning on the basic
and joblib launchers, a killed search resumed, two objectives, bad settings, processes opening
one new study database at once; read back with MLflow's client and Optuna's own `load_study`.
Ray: tests/test_ray.py."""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import optuna
import pytest

from tests.conftest import Hold, client_for, failure_report, run_cli, start_cli
from tests.study_openers import open_all_at_once

# Digits, 3 epochs; successive halving with a reduction factor this large, sparing no first
# trials, lets a trial past its first epoch only when it is the best so far there: trial 0
# completes, most others stop.
SEARCH = (
    "hparams_search=optuna",
    "experiment=quick",
    "dataset.val_size=180",
    "trainer.epochs=3",
    "tracking.log_model=false",
)
PRUNE_HARD = (
    "hydra/sweeper/pruner=successive_halving",
    "hydra.sweeper.pruner.reduction_factor=100",
    "hydra.sweeper.pruner.n_startup_trials=0",
)


def _study(root: Path) -> optuna.Study:
    storage = f"sqlite:///{root}/mlruns/optuna.db"
    (name,) = optuna.get_all_study_names(storage)  # a search's own study by default
    return optuna.load_study(study_name=name, storage=storage)


def _search_runs(root: Path):
    client = client_for(root)
    experiment_id = client.get_experiment_by_name("quick").experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


# What only a tested run has, and what a pruned trial's run keeps of its results.
TEST_ARTIFACTS = {
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "classification_report.json",
    "misclassified.png",
}
KEPT_ARTIFACTS = {"learning_curves.png", "config/config.yaml", "config/overrides.yaml"}


def _artifacts(client, run_id: str) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id):
        inner = client.list_artifacts(run_id, item.path) if item.is_dir else [item]
        found |= {i.path for i in inner}
    return found


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_search_prunes_hopeless_trials_and_records_each_as_a_child_run(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli(tmp_path, "-m", *SEARCH, *PRUNE_HARD, "hydra.sweeper.n_trials=5", *extra)
    assert proc.returncode == 0, failure_report(proc)

    trials = _study(tmp_path).get_trials(deepcopy=False)
    states = {t.number: t.state.name for t in trials}
    assert sorted(states) == [0, 1, 2, 3, 4]
    assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states
    client, parent, children = _search_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.sweeper"] == "OptunaSweeper"
    assert parent.data.tags["optuna.pruner"] == "SuccessiveHalvingPruner"
    # What the search was, beyond its jobs' overrides: its sampler, pruner, budget and space.
    settings = parent.data.params
    assert settings["hydra.sweeper.sampler.seed"] == "1234"
    assert settings["hydra.sweeper.pruner.reduction_factor"] == "100"
    assert settings["hydra.sweeper.n_trials"] == "5"
    assert settings["hydra.sweeper.params.optimizer.lr"] == "tag(log, interval(0.0001, 0.03))"
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert sorted(by_trial) == sorted(states)
    for trial in trials:
        run = by_trial[trial.number]
        assert run.info.status == "FINISHED"  # a pruned trial is no failure
        assert run.data.tags["optuna.state"] == trial.state.name
        assert trial.user_attrs["mlflow.run_id"] == run.info.run_id
        epochs = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert trial.intermediate_values == {m.step: pytest.approx(m.value) for m in epochs}
        if trial.state.name == "PRUNED":
            stopped = int(run.data.tags["optuna.pruned_at_epoch"])
            assert stopped == len(epochs) < 3 and trial.user_attrs["pruned_at_epoch"] == stopped
            checkpoint = Path(run.data.tags["hydra.output_dir"]) / "checkpoint" / "state.json"
            assert checkpoint.is_file()  # kept, with its curves
            # No candidate: not tested, no model, no test figures; its run says so.
            assert "test_accuracy" not in run.data.metrics, run.data.metrics
            assert run.data.tags["optuna.skipped"].startswith("test evaluation, logged model")
            assert not client.search_logged_models(
                [parent.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
            )
            artifacts = _artifacts(client, run.info.run_id)
            assert artifacts >= KEPT_ARTIFACTS and not TEST_ARTIFACTS & artifacts, artifacts
        else:
            assert len(epochs) == 3 and trial.value == pytest.approx(epochs[-1].value)
            assert "test_accuracy" in run.data.metrics and "optuna.skipped" not in run.data.tags
            assert _artifacts(client, run.info.run_id) >= TEST_ARTIFACTS | KEPT_ARTIFACTS
    metrics = parent.data.metrics
    assert metrics["epochs_trained"] == sum(len(t.intermediate_values) for t in trials) < 15
    assert metrics["trials_pruned"] == list(states.values()).count("PRUNED")
    # The best is a completed trial, the same for Optuna and for the sweep's summary.
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert parent.data.tags["search.best_trial"] == str(best.number)
    assert parent.data.tags["best.run_id"] == best.user_attrs["mlflow.run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {
        "search/optimization_history.png",
        "search/intermediate_values.png",
        "search/trials.csv",
        "search/best_trials.json",
    } <= artifacts


def test_a_killed_search_resumes_its_study(tmp_path):
    """SIGKILL a search while its second trial trains, then start it again with `resume=`: the
    finished trial is not run again, the interrupted one goes on from its checkpoint under its
    own number, and the search ends with its 3 trials; a second resumer meanwhile is refused."""
    search = [*SEARCH, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3"]
    hold = Hold(tmp_path, "epoch-2", job=1)  # trial 1, its epoch 2 reported and recorded
    killed = start_cli(tmp_path, "-m", *search, env=hold.env, own_group=True)
    hold.wait(killed)
    os.killpg(killed.pid, signal.SIGKILL)
    said = killed.communicate()[0][-4000:]
    hold.release()
    trials = _study(tmp_path).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"], (trials, said)
    assert sorted(trials[1].intermediate_values) == [1, 2], said

    (folder,) = (tmp_path / "multirun").glob("*/*")
    hold = Hold(tmp_path, "epoch-3", job=1)  # resumed trial 1 waits while a second resumer tries
    resumed = start_cli(tmp_path, "-m", *search, f"resume={folder}", env=hold.env)
    hold.wait(resumed)
    # A second process resuming the same search meanwhile is refused, and changes nothing.
    second = run_cli(tmp_path, "-m", *search, f"resume={folder}")
    assert second.returncode == 2, failure_report(second)
    (line,) = [ln for ln in second.stdout.splitlines() if "error:" in ln]
    assert f"resume={folder}: the run in {folder} is being written by process {resumed.pid}" in line
    hold.release()
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming: 1 trials ended, 1 to run again" in output

    after = _study(tmp_path).get_trials(deepcopy=False)
    assert [t.state.name for t in after] == ["COMPLETE"] * 3
    assert after[0].datetime_complete == trials[0].datetime_complete  # not run again
    assert sorted(after[1].intermediate_values) == [1, 2, 3]
    _, parent, children = _search_runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.resumed"] == "1"
    counted = [c for c in children if c.data.tags.get("sweep.superseded") != "true"]
    assert sorted(c.data.tags["optuna.trial"] for c in counted) == ["0", "1", "2"]
    (continued,) = [c for c in counted if c.data.tags["optuna.trial"] == "1"]
    assert continued.info.run_id == after[1].user_attrs["mlflow.run_id"]
    assert "resumed_after_epoch" in continued.data.tags


def test_a_second_objective_gives_a_pareto_front(tmp_path):
    proc = run_cli(
        tmp_path,
        "-m",
        *SEARCH,
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.second_objective=trainable_params",
        "hydra.sweeper.n_trials=3",
        "model.dense_units=choice(16,128)",  # a search dimension from the command line
    )
    assert proc.returncode == 0, failure_report(proc)
    study = _study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    client, parent, children = _search_runs(tmp_path)
    by_run = {c.info.run_id: c for c in children}
    for trial in study.trials:
        run = by_run[trial.user_attrs["mlflow.run_id"]]
        assert trial.values[1] == float(run.data.params["derived.trainable_params"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert "search/pareto_front.png" in artifacts and "search/best_trials.json" in artifacts


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "hydra.sweeper.second_objective=trainable_params",
            "hydra.sweeper.second_objective=trainable_params needs hydra/sweeper/pruner=none",
        ),
        ("hydra.sweeper.second_objective=test_accuracy", "null or one of trainable_params"),
        ("hydra.sweeper.storage=nowhere", "hydra.sweeper.storage='nowhere' is not allowed"),
        ("model.dropout=interval(0.5,0.1)", "hydra.sweeper.params.model.dropout"),
        ("hydra.sweeper.n_trials=0", "both at least 1"),
        (  # a pruner's setting, refused where the pruner is made
            "hydra.sweeper.pruner.n_startup_trials=-1",
            "hydra.sweeper.pruner: n_startup_trials must be >= 0, got -1",
        ),
        (
            "hydra.sweeper.pruner.reduction_factor=1",
            "hydra.sweeper.pruner: The value of `reduction_factor` is 1, but must be",
        ),
    ],
)
def test_bad_search_settings_are_one_line_before_any_run(tmp_path, setting, message):
    proc = run_cli(tmp_path, "-m", *SEARCH, setting)
    assert proc.returncode == 2, failure_report(proc)
    output = proc.stdout + proc.stderr  # a sweep's own messages go to stdout (Hydra's logging)
    (line,) = [ln for ln in output.splitlines() if "error:" in ln]
    assert message in line, line
    assert "Traceback" not in output
    store = tmp_path / "mlruns" / "mlflow.db"
    if store.exists():  # the store may be made; no run is opened in it
        experiment = client_for(tmp_path).get_experiment_by_name("quick")
        assert experiment is None or not client_for(tmp_path).search_runs(
            [experiment.experiment_id]
        )


def test_no_private_optuna_module_is_imported():
    """Optuna's modules whose names start with `_` may change in any release."""
    root = Path(__file__).parent.parent
    private = []
    for path in [*root.glob("digitcnn/**/*.py"), *root.glob("hydra_plugins/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            private += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] == "optuna" and any(p.startswith("_") for p in n.split("."))
            ]
    assert not private


@pytest.mark.new_store
def test_processes_opening_a_new_sqlite_study_database_at_once_all_get_it(tmp_path):
    """Two searches (or a search and a reader) starting on one store: before the fix, all but
    one died on `table studies already exists` in almost every round."""
    for attempt in range(3):
        database = tmp_path / f"store{attempt}" / "optuna.db"
        assert open_all_at_once(f"sqlite:///{database}") == ["opened"] * 4
        assert [p.name for p in database.parent.iterdir()] == ["optuna.db"]  # no drafts left
        study = optuna.create_study(storage=f"sqlite:///{database}")
        assert study.get_trials() == []


def test_processes_opening_a_new_postgresql_study_database_at_once_all_get_it(postgres_cluster):
    """The same on a team's PostgreSQL (before the fix: `duplicate key value violates unique
    constraint "pg_type_typname_nsp_index"` for all but one)."""
    database = postgres_cluster.database()
    assert open_all_at_once(str(database)) == ["opened"] * 4
    assert optuna.get_all_study_names(str(database)) == []


def test_a_study_with_damaged_pages_is_one_line_before_the_parent_run_opens(tmp_path):
    """A study database whose header and schema still read but whose pages are damaged (a
    disk error, a copy cut short): one line naming it and what to do, no run opened."""
    import sqlite3

    study = tmp_path / "mlruns" / "optuna.db"
    study.parent.mkdir(parents=True)
    with sqlite3.connect(study) as db:
        db.execute("CREATE TABLE filler (x TEXT)")
        db.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 200)
    data = bytearray(study.read_bytes())
    for i in range(3 * 4096, len(data), 7):  # past the header and the schema's page
        data[i] = (data[i] * 31 + 7) % 256
    study.write_bytes(bytes(data))
    proc = run_cli(tmp_path, "-m", *SEARCH)
    assert proc.returncode == 2, failure_report(proc)
    output = proc.stdout + proc.stderr
    (line,) = [ln for ln in output.splitlines() if "error:" in ln]
    assert f"the study's database {study} is damaged" in line and "mv " in line, line
    assert "Traceback" not in output
    experiment = client_for(tmp_path).get_experiment_by_name("quick")
    assert experiment is None or not client_for(tmp_path).search_runs([experiment.experiment_id])
