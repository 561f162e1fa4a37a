"""The real CLI in a subprocess, checked through MLflow's own client: what a user would see."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from digitcnn.core import paths
from tests.conftest import client_for, failure_report, run_cli, runs_of

EPOCHS = 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short run on the bundled digits, launched from a folder outside the repository."""
    root = tmp_path_factory.mktemp("root")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = run_cli(
        root,
        "dataset=digits",
        f"trainer.epochs={EPOCHS}",
        "model.dropout=0.3",
        "tracking.experiment=e2e",
        cwd=elsewhere,
        fresh=True,  # a cold start, whose imports' notices the console test looks for
    )
    assert proc.returncode == 0, failure_report(proc)
    client = client_for(root)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    return root, elsewhere, client, run, proc


def test_run_finishes_and_nothing_lands_in_the_launch_folder(finished_run):
    root, elsewhere, _, run, proc = finished_run
    assert run.info.status == "FINISHED"
    assert list(elsewhere.iterdir()) == []  # store and outputs live under the root
    assert (root / "mlruns" / "mlflow.db").is_file()
    assert run.info.run_id in proc.stdout + proc.stderr  # the summary names the run
    assert "mlflow.parentRunId" not in run.data.tags and "sweep.dir" not in run.data.tags


def test_params_hold_the_flattened_config_and_derived_values(finished_run):
    *_, run, _ = finished_run
    params = run.data.params
    assert params["model.dropout"] == "0.3"
    assert params["trainer.epochs"] == str(EPOCHS)
    assert params["dataset.name"] == "digits"
    assert params["model.filters"] == "[32, 64]"
    assert int(params["derived.trainable_params"]) > 0
    assert params["derived.train_size"] == "1257" and params["derived.test_size"] == "360"
    assert params["derived.keras_backend"] == "tensorflow"
    assert params["version.keras"].startswith("3.")


def test_per_epoch_metrics_have_one_step_per_epoch(finished_run):
    _, _, client, run, _ = finished_run
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key


def test_final_metrics_and_tags(finished_run):
    root, _, _, run, _ = finished_run
    metrics, tags = run.data.metrics, run.data.tags
    for key in ("test_accuracy", "test_loss", "macro_f1", "train_seconds", "images_per_second"):
        assert key in metrics
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert tags["validation_set"] == "holdout"
    assert len(tags["dataset.digest"]) == 64
    assert Path(tags["hydra.output_dir"]).is_relative_to(root / "outputs")
    assert "model.dropout=0.3" in tags["command"]
    assert run.info.run_name == "dataset=digits,trainer.epochs=2,model.dropout=0.3"
    # Tagged only when this machine's conf/local/default.yaml exists and was applied.
    local = (paths.config_dir() / "local" / "default.yaml").is_file()
    assert ("local_config" in tags) == local


def test_confusion_matrix_agrees_with_test_accuracy(finished_run):
    _, _, client, run, _ = finished_run
    folder = Path(client.download_artifacts(run.info.run_id, ""))
    matrix = pd.read_csv(folder / "confusion_matrix.csv", index_col=0).to_numpy()
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 360
    assert np.trace(matrix) / matrix.sum() == pytest.approx(run.data.metrics["test_accuracy"])
    report = json.loads((folder / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])


def test_artifacts_are_all_there_and_images_open(finished_run):
    _, _, client, run, _ = finished_run
    folder = Path(client.download_artifacts(run.info.run_id, ""))
    for name in ("confusion_matrix.png", "learning_curves.png", "misclassified.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 300
    config_text = (folder / "config" / "config.yaml").read_text()
    assert "dropout: 0.3" in config_text
    assert "model.dropout=0.3" in (folder / "config" / "overrides.yaml").read_text()
    log_text = (folder / "logs" / "run.log").read_text()
    assert "epoch 2/2" in log_text and "test accuracy" in log_text
    assert run.inputs.dataset_inputs[0].dataset.name == "digits"


def test_logged_model_loads_and_predicts(finished_run):
    import mlflow

    root, _, _, run, _ = finished_run
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    probabilities = model.predict(np.zeros((3, 8, 8), np.float32))  # raw 8x8 pixel images
    assert np.asarray(probabilities).shape == (3, 10)


def no_runs(root: Path) -> bool:
    if not (root / "mlruns" / "mlflow.db").exists():
        return True
    client = client_for(root)
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # Hydra's own refusals, in one line with a close match
        (
            ["model.dropot=0.3"],
            "error: model.dropot is not a key of the config (did you mean model.dropout?)",
        ),
        (["modle.dropout=0.3"], "(did you mean model.dropout?)"),
        (
            ["model=resnet9000"],
            "error: model=resnet9000 is not an option (did you mean "
            "model=resnet?); choose one of cnn, mlp, resnet",
        ),
        (
            ["trainer.epochs=five"],
            "error: trainer.epochs='five' is not allowed: an integer is expected",
        ),
        (["trainer.epochs=1e11"], "trainer.epochs='1e11' is not allowed: an integer"),
        (["seed=abc"], "error: seed='abc' is not allowed: an integer is expected"),
        (["seed=1.5"], "error: seed='1.5' is not allowed: an integer is expected"),
        (["dataset.val_size=0.5"], "dataset.val_size='0.5' is not allowed: an integer"),
        (["seed=[1"], "error: the command line cannot be parsed"),
        (
            ["-m", "hparams_search=optuna", "hydra.sweeper.pruner=none"],
            "error: hydra.sweeper.pruner='none' is not allowed: the pruner is chosen as a group, "
            "hydra/sweeper/pruner=NAME",
        ),
        (
            ["-m", "hparams_search=optuna", "hydra/sweeper/pruner=nonee"],
            "(did you mean hydra/sweeper/pruner=none?)",
        ),
        # values the model's float32 cannot hold
        (
            ["optimizer.lr=1e308"],
            "optimizer.lr=1e+308 is not allowed: a number the model's float32 holds",
        ),
        (["optimizer.lr=1e-50"], "optimizer.lr=1e-50 is not allowed"),
        (["model.dropout=1.5"], "model.dropout=1.5 is not allowed: a rate in [0, 1)"),
        (["model.dropout=-0.1"], "model.dropout=-0.1 is not allowed"),
        (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: a positive integer"),
        (["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed: a positive number"),
        (["dataset.val_size=60000"], "dataset.val_size=60000 is not allowed: 0 (validate"),
        (["dataset.limit=-5"], "dataset.limit=-5 is not allowed"),
        (["dataset.path=/nonexistent/mnist.npz"], "dataset.path='/nonexistent/mnist.npz' does"),
        (["hydra.run.dir=/proc/nope"], "error: hydra.run.dir='/proc/nope' cannot be written"),
        (["paths.root_dir=/proc/nope"], "(from paths.root_dir='/proc/nope') cannot be written"),
        (["-m", "hydra.sweep.dir=/proc/nope"], "hydra.sweep.dir='/proc/nope' cannot be"),
        (["paths.data_dir=/proc/nope"], "dataset.cache_dir='/proc/nope' cannot be created"),
        (["dataset=images"], "error: dataset.path is required"),
        (["dataset=images", "dataset.path=/nonexistent.npz"], "does not exist"),
        # Sizes that only the data can judge: checked once it is loaded, before the run opens.
        (
            ["dataset=digits", "trainer.batch_size=1000000"],
            "trainer.batch_size=1000000 is not allowed: at most the 1,257 training images",
        ),
        (
            ["dataset=digits", "model.kernel_size=50", "model.padding=valid"],
            "model=cnn does not fit dataset=digits's 8x8 images",
        ),
    ],
)
def test_bad_input_exits_nonzero_with_one_line_before_any_run(tmp_path, args, says):
    proc = run_cli(tmp_path, *args)
    assert proc.returncode == 2, failure_report(proc)
    (line,) = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert line.startswith("error: ") and says in line, line
    assert "Traceback" not in proc.stderr
    assert no_runs(tmp_path)
    assert not (tmp_path / "data").exists()  # no data was fetched


def test_hydra_verbose_shows_the_traceback(tmp_path):
    proc = run_cli(tmp_path, "model.dropout=1.5", "hydra.verbose=true")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_console_shows_the_projects_lines_only(finished_run):
    """No library warnings, progress bars or native start-up notices: every line the run
    printed is one of digitcnn's (its log lines are plain text, from known prefixes)."""
    _, _, _, _, proc = finished_run
    console = proc.stdout + proc.stderr
    for noise in ("Warning", "WARNING", "Downloading artifacts", "%|", "CloudPickle", "oneDNN"):
        assert noise not in console, console
    prefixes = ("digitcnn on", "  ", "data ", "epoch ", "test accuracy", "trained", "MLflow")
    prefixes += ("run ", "artifacts ", "browse ")
    assert all(line.startswith(prefixes) for line in console.splitlines() if line), console


def test_epoch_lines_say_how_long_is_left(finished_run):
    _, _, _, _, proc = finished_run
    epochs = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == EPOCHS
    assert re.search(r"  eta \d+s$", epochs[0]) and "eta" not in epochs[-1]


def test_local_settings_and_tags_reach_the_run(tmp_path):
    """A machine's conf/local/default.yaml is applied when present (here found on an added
    search path, as Hydra finds it in conf/) and recorded; `tags=[...]` become MLflow tags that
    the UI and `mlflow.search_runs` filter on."""
    import mlflow

    extra = tmp_path / "extra" / "local"
    extra.mkdir(parents=True)
    (extra / "default.yaml").write_text(
        "# @package _global_\ntracking:\n  experiment: from-local\nmodel:\n  dropout: 0.2\n"
    )
    proc = run_cli(
        tmp_path,
        "experiment=quick",
        "tags=[baseline,v2]",
        f"hydra.searchpath=[file://{tmp_path / 'extra'}]",
    )
    assert proc.returncode == 0, failure_report(proc)
    (run,) = runs_of(tmp_path, "from-local")  # the local file beat the recipe's experiment
    assert run.data.tags["local_config"] == "local/default.yaml"
    assert run.data.params["model.dropout"] == "0.2"
    assert run.data.tags["baseline"] == "true" and run.data.tags["v2"] == "true"
    mlflow.set_tracking_uri(client_for(tmp_path).tracking_uri)
    found = mlflow.search_runs(
        experiment_names=["from-local"], filter_string="tags.baseline = 'true'"
    )
    assert list(found["run_id"]) == [run.info.run_id]

    refused = run_cli(tmp_path, "experiment=quick", "tags=[mlflow.user]")
    assert refused.returncode == 2
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: tags=['mlflow.user'] is not allowed"), line


@pytest.mark.parametrize(
    ("family", "keys"),
    [("mlp", {"model.hidden_units": "[512, 256]"}), ("resnet", {"model.blocks_per_stage": "1"})],
)
def test_each_model_family_trains_and_is_recorded_with_its_own_keys(tmp_path, family, keys):
    proc = run_cli(tmp_path, "experiment=quick", f"model={family}", "model.augment_shift=0.1")
    assert proc.returncode == 0, failure_report(proc)
    (run,) = runs_of(tmp_path, "quick")
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.5
    params = run.data.params
    assert params["model.name"] == family and keys.items() <= params.items()
    assert "model.kernel_size" not in params  # the cnn's keys belong to the cnn
    wrong = run_cli(tmp_path, "experiment=quick", f"model={family}", "model.kernel_size=3")
    assert wrong.returncode != 0 and "kernel_size" in wrong.stderr


@pytest.mark.parametrize(
    ("module", "lines"),
    [
        ("digitcnn.run", ["dataset ", "mnist*", "model ", "cnn*, mlp, resnet", "experiment ",
                          "quick", "hparams_search ", "optuna", "hydra/launcher ",
                          "basic*, joblib, ray", "hydra/sweeper/pruner ", "median",
                          "backend=tensorflow|jax|torch", "seed=INT", "resume=",
                          "tracking.register_as=digitcnn"]),
        ("digitcnn.evaluate", ["model=runs:/RUN_ID/model", "dataset ", "mnist*", "trust="]),
    ],
)  # fmt: skip
@pytest.mark.new_store  # nothing written: not even the store a first run would make
def test_help_lists_what_a_user_chooses_and_nothing_else(tmp_path, module, lines):
    """--help: the groups a user chooses with their options, the top-level keys, launchers
    and searches, the everyday commands; not the schemas, not the local settings' example,
    in at most 80 lines; nothing is run or written."""
    proc = run_cli(tmp_path, "--help", module=module)
    assert proc.returncode == 0, failure_report(proc)
    shown = proc.stdout
    assert len(shown.strip().splitlines()) <= 80, shown
    for expected in lines:
        assert expected in shown, (expected, shown)
    for hidden in ("schema", "example", "Powered by Hydra", "$APP_CONFIG_GROUPS"):
        assert hidden not in shown, (hidden, shown)
    assert not list(tmp_path.glob("*/*"))  # no run folder, no store
