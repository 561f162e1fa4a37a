"""A run's whole config (and the evaluate command's), registered in Hydra's ConfigStore.

`Config` puts together the group schemas of `config_groups` with the run's own keys (backend,
seed, objective, resume, tags, ...). An unknown key or a wrong type fails when Hydra composes
the config; value ranges are checked in `__post_init__`, which runs when `to_typed` turns the
composed config into these objects, before any data is loaded or any run is opened.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from digitcnn.core import paths
from digitcnn.core.config_groups import (
    BACKENDS,
    GROUP_SCHEMAS,
    DatasetConfig,
    DebugConfig,
    ModelConfig,
    OptimizerConfig,
    PathsConfig,
    TrackingConfig,
    TrainerConfig,
)
from digitcnn.core.errors import ConfigValueError, InputError

OBJECTIVES = ("val_accuracy", "val_loss")  # never a test-set number
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are unsigned 32-bit


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# What digitcnn and MLflow tag runs with themselves: a label cannot take their place.
RESERVED_TAG_PREFIXES = (
    "mlflow.", "git.", "hydra.", "sweep.", "ray.", "best.", "dataset.", "version.", "command",
    "overrides", "host", "validation_set", "rerun_of", "resumed_after_epoch", "error",
    "local_config", "debug",
)  # fmt: skip


def _check_tags(tags: list[str]) -> None:
    for tag in tags:
        if not _TAG.fullmatch(str(tag)) or str(tag).startswith(RESERVED_TAG_PREFIXES):
            raise ConfigValueError(
                "tags",
                list(tags),
                "names of letters, digits, '_', '-' and '.', not starting with "
                + ", ".join(RESERVED_TAG_PREFIXES),
            )


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigValueError("seed", seed, f"0 to {MAX_SEED} (2**32 - 1)")


FLOAT32_MAX = 3.4028234663852886e38  # the largest number the model's float32 holds
FLOAT32_TINY = 1.401298464324817e-45  # the smallest above 0 (a subnormal)
MODEL_SIDE = ("model.", "optimizer.", "trainer.")  # numbers that become the model's float32


def _check_finite(node: object, prefix: str = "") -> None:
    """No infinity or NaN in any number of the config: a range check such as `lr > 0` lets
    `inf` through, and training would diverge on it. A number the model computes with must
    also survive float32: `optimizer.lr=1e308` would become inf there."""
    for item in dataclasses.fields(node):
        value = getattr(node, item.name)
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigValueError(key, value, "a finite number")
        elif (
            isinstance(value, float)
            and key.startswith(MODEL_SIDE)
            and (abs(value) > FLOAT32_MAX or 0 < abs(value) < FLOAT32_TINY)
        ):
            raise ConfigValueError(
                key, value, "a number the model's float32 holds (1.4e-45 to 3.4e38, or 0)"
            )


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigValueError("backend", backend, "one of " + ", ".join(BACKENDS))


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    backend: str = "tensorflow"  # Keras's backend: tensorflow | jax | torch
    seed: int = 42  # seeds Python, NumPy, the backend and the validation split
    objective: str = "val_accuracy"  # what a job returns to sweepers: a validation metric
    resume: str | None = None  # a run id or output folder to continue from its last epoch
    rerun: str | None = None  # a run id to repeat from its recorded config
    tags: list[str] = field(default_factory=list)  # labels, each an MLflow tag `NAME=true`
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self) -> None:
        _check_tags(self.tags)
        _check_backend(self.backend)
        _check_seed(self.seed)
        if self.objective not in OBJECTIVES:
            raise ConfigValueError("objective", self.objective, "one of " + ", ".join(OBJECTIVES))


@dataclass
class EvaluateConfig:
    """`python -m digitcnn.evaluate`: a logged model, the data to test it on, where to record."""

    dataset: DatasetConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    # The model to test (`model=` on the command line: `model` is a config group of training).
    model_uri: str = MISSING  # runs:/<run id>/model, models:/<name>@<alias>, models:/<name>/<n>
    backend: str = "tensorflow"  # Keras's backend for the model
    seed: int = 42  # the validation split (the test split is evaluated)
    tags: list[str] = field(default_factory=list)
    # Whose models to load from a server with users besides one's own ("*": anyone's); a
    # logged model is code (digitcnn.team.provenance)
    trust: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not str(self.model_uri).startswith(("runs:/", "models:/", "file:", "/")):
            raise ConfigValueError(
                "model", self.model_uri, "runs:/<run id>/model, models:/<name>@<alias> or a path"
            )
        _check_tags(self.tags)
        _check_backend(self.backend)
        _check_seed(self.seed)


def is_server(tracking_uri: str) -> bool:
    """Whether runs go to a tracking server (http or https), not to a store of their own."""
    return str(tracking_uri).startswith(("http://", "https://"))


def own_name(name: str, tracking_uri: str) -> str:
    """`name` made the user's own where runs go to a tracking server as a user
    (MLFLOW_TRACKING_USERNAME=alice): `alice.digitcnn`, which no teammate can take on the team
    server (digitcnn.team.app); else `name` as it is."""
    if not is_server(tracking_uri):
        return name
    user = tracking_user()
    return f"{user}.{name}" if user else name


def tracking_user() -> str | None:
    """The user MLflow's client sends to a server: MLFLOW_TRACKING_USERNAME, else the one in
    ~/.mlflow/credentials, as `mlflow.utils.credentials.read_mlflow_creds` reads them (without
    importing MLflow here: tests/test_units.py checks that both agree)."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    found = configparser.ConfigParser()
    found.read(os.path.expanduser("~/.mlflow/credentials"))
    return found.get("mlflow", "mlflow_tracking_username", fallback=None) or None


def artifacts_for(tracking_uri: str, local_folder: str) -> str | None:
    """The default artifact location of a new experiment: None (the server's own store,
    `mlflow-artifacts:`) when runs go to a tracking server, else `local_folder`."""
    return None if is_server(tracking_uri) else local_folder


def job_prefix(mode: object, number: object) -> str:
    """What starts a job's console lines: `[job 3] ` in a sweep (whatever launches it), nothing
    in a single run (conf/hydra/default.yaml's job_logging)."""
    return f"[job {number}] " if str(mode).endswith("MULTIRUN") else ""


def job_overrides(hydra_cfg: DictConfig) -> list[str]:
    """What the job was asked to change: its overrides less `resume=`, which says how it was
    run, not what (a job keeps its name and record however often its sweep is resumed)."""
    return [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")]


def help_groups(config_name: str) -> str:
    """`--help`'s list of groups and options (digitcnn.core.help), for conf/hydra/help/."""
    from digitcnn.core.help import groups_text

    return groups_text(config_name)


def register_configs() -> None:
    """Store the schemas, the `project_root` resolver and the experiment recipes in Hydra."""
    OmegaConf.register_new_resolver("project_root", lambda: str(paths.project_root()), replace=True)
    OmegaConf.register_new_resolver("artifacts_for", artifacts_for, replace=True)
    OmegaConf.register_new_resolver("own_name", own_name, replace=True)
    OmegaConf.register_new_resolver("digitcnn_help", help_groups, replace=True)
    OmegaConf.register_new_resolver("job_prefix", job_prefix, replace=True)
    cs = ConfigStore.instance()
    # Under schema/ so that schemas are not offered as options of the groups they type.
    cs.store(group="schema", name="config", node=Config, package="_global_")
    cs.store(group="schema", name="evaluate", node=EvaluateConfig, package="_global_")
    for group, schemas in GROUP_SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)
    # Recipes live in experiments/ (not conf/experiment/) and are global, like
    # lightning-hydra-template's `experiment/` group; their own defaults lists are kept.
    for recipe in sorted(paths.experiments_dir().glob("*.yaml")):
        cs.store(
            group="experiment", name=recipe.stem, node=OmegaConf.load(recipe), package="_global_"
        )


def schema_config(saved: DictConfig) -> DictConfig:
    """A recorded, resolved config merged back onto its schemas (each group's option is found
    from its `name`), so that it is checked exactly as a freshly composed one."""
    merged = OmegaConf.structured(Config)
    for group, schemas in GROUP_SCHEMAS.items():
        name = saved[group].get("name") if group in saved else None
        schema = schemas.get(name) if name else next(iter(schemas.values()))
        if schema is None:
            raise ConfigValueError(f"{group}.name", name, "one of " + ", ".join(schemas))
        merged[group] = OmegaConf.structured(schema)
    merged = OmegaConf.merge(merged, saved)
    OmegaConf.set_struct(merged, True)
    return merged


def to_typed(cfg: DictConfig) -> Config | EvaluateConfig:
    """Resolve the composed config (a run's, or the evaluate command's) into schema objects,
    running every range check; a value the config leaves for the user to give (`???`) is a
    one-line error naming its key."""
    try:
        typed = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        raise InputError(f"{exc.full_key} is required: give {exc.full_key}=...") from None
    _check_finite(typed)
    return typed
