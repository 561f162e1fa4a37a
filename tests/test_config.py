"""Composition of every group option and recipe; bad keys, types and values fail early."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from digitcnn.core import config, config_groups, paths
from digitcnn.core.config import ConfigValueError, to_typed
from tests.conftest import REPO, cli_env

GROUP_OPTIONS = [
    (group, option.stem)
    for group in ("dataset", "model", "optimizer", "trainer", "tracking", "paths")
    for option in sorted((paths.config_dir() / group).glob("*.yaml"))
]
EXPERIMENTS = sorted(p.stem for p in paths.experiments_dir().glob("*.yaml"))


def test_experiments_ship_the_required_recipes():
    assert {"seed", "quick"} <= set(EXPERIMENTS)


# What an option cannot do without: `dataset=images` names its files.
REQUIRED = {("dataset", "images"): ["dataset.path=/data/digits.npz"]}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_into_its_schema(compose_cfg, group, option):
    typed = to_typed(compose_cfg([f"{group}={option}", *REQUIRED.get((group, option), [])]))
    assert isinstance(typed, config.Config)
    schema = config_groups.GROUP_SCHEMAS[group][option]
    assert type(getattr(typed, group)) is schema


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, name):
    typed = to_typed(compose_cfg([f"experiment={name}"]))
    assert typed.tracking.experiment == name


def test_seed_recipe_is_the_reference(compose_cfg):
    typed = to_typed(compose_cfg(["experiment=seed"]))
    assert typed.dataset.name == "mnist"
    assert typed.dataset.val_size == 0  # the reference validated on the test set
    assert typed.model.filters == [32, 64]
    assert (typed.trainer.epochs, typed.trainer.batch_size) == (5, 64)
    assert typed.optimizer.name == "adam" and typed.optimizer.lr == 1e-3


def test_quick_recipe_is_digits_for_one_epoch(compose_cfg):
    typed = to_typed(compose_cfg(["experiment=quick"]))
    assert typed.dataset.name == "digits" and typed.trainer.epochs == 1


def test_overrides_reach_the_typed_config(compose_cfg):
    typed = to_typed(compose_cfg(["model.dropout=0.3", "optimizer=sgd", "optimizer.lr=0.05"]))
    assert typed.model.dropout == 0.3
    assert isinstance(typed.optimizer, config_groups.SGDConfig) and typed.optimizer.lr == 0.05


def test_paths_are_absolute_and_from_one_root(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITCNN_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_cfg([])
    assert cfg.paths.root_dir == str(tmp_path)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cfg.dataset.cache_dir == f"{tmp_path}/data"


def test_mlflow_tracking_uri_variable_overrides_the_store(compose_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/store.db")
    assert compose_cfg([]).tracking.uri == "sqlite:////elsewhere/store.db"


@pytest.mark.parametrize(
    ("override", "error", "says"),
    [
        ("model.dropot=0.3", ConfigCompositionException, "model.dropot"),
        ("trainer.epochs=five", ConfigCompositionException, "trainer.epochs"),
        ("model.dropout=high", ConfigCompositionException, "model.dropout"),
        ("model=resnet9000", MissingConfigException, "model/resnet9000"),
        ("experiment=nope", MissingConfigException, "experiment/nope"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(compose_cfg, override, error, says):
    with pytest.raises(error) as excinfo:
        compose_cfg([override])
    assert says in str(excinfo.value) + str(excinfo.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.dropout=1.5", "model.dropout"),
        ("model.dropout=-0.1", "model.dropout"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("dataset.val_size=60000", "dataset.val_size"),
        ("dataset.limit=-5", "dataset.limit"),
        ("model.padding=full", "model.padding"),
        ("optimizer.schedule=step", "optimizer.schedule"),
        # Infinities pass a plain range check; a run would train on them and diverge.
        ("optimizer.lr=inf", "optimizer.lr"),
        ("optimizer.warmup_epochs=inf", "optimizer.warmup_epochs"),
        ("tracking.outage_limit_seconds=inf", "tracking.outage_limit_seconds"),
        ("model.dropout=nan", "model.dropout"),
        ("optimizer.beta_1=1.5", "optimizer.beta_1"),
        ("optimizer.beta_2=-0.1", "optimizer.beta_2"),
        ("optimizer.ema_momentum=1", "optimizer.ema_momentum"),
        ("trainer.label_smoothing=-0.1", "trainer.label_smoothing"),
        ("seed=-1", "seed"),
        (f"seed={2**32}", "seed"),
        (f"tracking.run_name={'r' * 251}", "tracking.run_name"),
        (f"tracking.experiment={'e' * 501}", "tracking.experiment"),
    ],
)
def test_out_of_range_values_name_key_and_allowed_range(compose_cfg, override, key):
    with pytest.raises(ConfigValueError) as excinfo:
        to_typed(compose_cfg([override]))
    message = str(excinfo.value)
    assert message.startswith(f"{key}=") and "is not allowed" in message


def test_val_size_is_checked_against_the_limit(compose_cfg):
    with pytest.raises(ConfigValueError, match=r"dataset\.val_size"):
        to_typed(compose_cfg(["dataset.limit=1000", "dataset.val_size=1000"]))


def test_schemas_are_not_offered_as_group_options(compose_cfg):
    with pytest.raises(MissingConfigException) as excinfo:
        compose_cfg(["model=nope"])
    assert "schema" not in str(excinfo.value).split("Config search path")[0]


def test_config_yaml_mirrors_schema_defaults():
    """Each YAML states every key of its schema, so the file documents the whole group."""
    for group, options in config_groups.GROUP_SCHEMAS.items():
        for option, schema in options.items():
            yaml = OmegaConf.load(paths.config_dir() / group / f"{option}.yaml")
            keys = set(yaml) - {"defaults"}
            fields = {f.name for f in dataclasses.fields(schema)} - {"name"}
            assert fields <= keys, (group, option, fields - keys)


def test_configs_are_found_after_pip_install(tmp_path):
    """A wheel carries conf/ and experiments/ inside the package; run it from elsewhere."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("digitcnn-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = cli_env(tmp_path) | {"PYTHONPATH": str(site)}

    def installed(*args: str) -> str:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    out = installed("-m", "digitcnn.run", "experiment=quick", "--cfg", "job")
    assert "name: digits" in out and "experiment: quick" in out
    where = installed("-c", "from digitcnn.core import paths; print(paths.config_dir())")
    assert where.strip() == str(site / "digitcnn" / "conf")
