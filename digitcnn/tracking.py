"""Everything MLflow: the run's lifecycle, its params, tags, per-epoch metrics and artifacts.

Training never imports this module; it receives `EpochMetricsLogger` as a Keras callback.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from digitcnn.config import TrackingConfig
from digitcnn.errors import InputError
from digitcnn.sweep_summary import JobRecord

log = logging.getLogger(__name__)

# MLflow prints each run's URL, credentials and all; the job prints its own redacted summary.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(uri: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`: secrets never reach a record."""
    return _CREDENTIALS.sub("***@", uri)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.dropout": "0.25", ...}; lists stay whole, as `[32, 64]`."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value)
    return flat


def _experiment_id(client: MlflowClient, cfg: TrackingConfig) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(cfg.artifact_location).expanduser().resolve()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location.as_uri())
    except mlflow.exceptions.MlflowException:
        # A parallel job created it between our look-up and our create.
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_state(folder: Path) -> dict[str, str]:
    """The commit and dirty flag of the checkout holding `folder`; empty outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def library_versions() -> dict[str, str]:
    import sklearn

    versions = {
        "version.python": platform.python_version(),
        "version.keras": keras.__version__,
        "version.mlflow": mlflow.__version__,
        "version.numpy": np.__version__,
        "version.scikit_learn": sklearn.__version__,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["version.tensorflow"] = tf.__version__
    return versions


def model_requirements(versions: Mapping[str, str]) -> list[str]:
    """Pinned pip requirements of a logged model: Keras, its backend and MLflow, as trained."""
    pins = {
        "keras": versions["version.keras"],
        "mlflow": versions["version.mlflow"],
        "numpy": versions["version.numpy"],
    }
    if "version.tensorflow" in versions:
        pins["tensorflow"] = versions["version.tensorflow"]
    return [f"{name}=={version}" for name, version in pins.items()]


class Recorder:
    """Writes one open MLflow run; created by `tracked_run`."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str) -> None:
        self.client, self.run_id, self.artifact_uri = client, run_id, artifact_uri
        self.seconds = 0.0  # time spent in MLflow calls, reported by the benchmark

    @contextmanager
    def _timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        with self._timed():
            for i in range(0, len(items), _BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_tags(self, tags: Mapping[str, Any]) -> None:
        with self._timed():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with self._timed():
            self.client.log_batch(self.run_id, metrics=batch)

    def log_dataset(
        self, features: np.ndarray, targets: np.ndarray, name: str, digest: str, source: str
    ) -> None:
        with warnings.catch_warnings():  # MLflow warns that a path source is ambiguous
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                features, targets=targets, source=source, name=name, digest=digest[:36]
            )
        with self._timed():
            mlflow.log_input(dataset, context="training")

    def log_file(self, path: Path, folder: str | None = None) -> None:
        with self._timed():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_files(self, files: Mapping[str, Any], folder: str | None = None) -> None:
        """Write {name: content} to a temporary folder and log it: a figure, a frame, a dict
        (JSON) or text. A file lands in the store whole, or the call fails."""
        import matplotlib.pyplot as plt

        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                path = Path(tmp) / name
                if hasattr(content, "savefig"):
                    content.savefig(path, dpi=110)
                    plt.close(content)
                elif isinstance(content, pd.DataFrame):
                    content.to_csv(path)
                elif isinstance(content, dict):
                    path.write_text(json.dumps(content, indent=2))
                else:
                    path.write_text(str(content))
            with self._timed():
                self.client.log_artifacts(self.run_id, tmp, folder)

    def log_model(
        self,
        model: keras.Model,
        example: np.ndarray,
        pixel_max: int,
        requirements: list[str],
        register_as: str | None = None,
    ) -> None:
        """The trained model as a pyfunc over raw pixel images (see digitcnn.serving), with
        signature and input example; registered as a version of `register_as` if given."""
        from mlflow.models import infer_signature

        from digitcnn import paths, serving

        with tempfile.TemporaryDirectory() as tmp:
            keras_file = Path(tmp) / "model.keras"
            model.save(keras_file)
            probabilities = model.predict(serving.scale_pixels(example, pixel_max), verbose=0)
            with self._timed(), warnings.catch_warnings():
                # MLflow asks for type hints; the signature below already describes the input.
                warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=serving.DigitClassifier(),
                    artifacts={serving.KERAS_ARTIFACT: str(keras_file)},
                    model_config={"pixel_max": pixel_max},
                    signature=infer_signature(example, probabilities),
                    input_example=example,
                    code_paths=[str(paths.PACKAGE_DIR)],  # loads without digitcnn installed
                    pip_requirements=requirements,  # pinned here: inferring them costs seconds
                    registered_model_name=register_as,
                )


class EpochMetricsLogger(keras.callbacks.Callback):
    """One `log_batch` per epoch, step = epoch number (1-based); nothing per batch."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.recorder.log_metrics(dict(logs or {}), step=epoch + 1)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _client(cfg: TrackingConfig) -> tuple[MlflowClient, str]:
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter
    mlflow.set_tracking_uri(cfg.uri)
    client = MlflowClient(cfg.uri)
    db = _sqlite_path(cfg.uri)
    if db is None:
        return client, _experiment_id(client, cfg)
    # The first use creates the tables and the experiment: one process at a time.
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        return client, _experiment_id(client, cfg)


def preflight(cfg: TrackingConfig) -> None:
    """Fail early, with the key named, when the store cannot be reached or its artifact folder
    cannot be written: before data is loaded and before any run exists."""
    shown = redact(cfg.uri)
    if cfg.uri.startswith(("http://", "https://")):
        try:
            parts = urllib.parse.urlsplit(cfg.uri)  # /health needs no credentials
            health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path="/health")
            urllib.request.urlopen(health.geturl(), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise InputError(
                f"tracking.uri={shown!r} is not reachable ({redact(str(exc))}); start the "
                "MLflow server or fix the address"
            ) from None
    try:
        client, experiment_id = _client(cfg)
        location = client.get_experiment(experiment_id).artifact_location
    except (OSError, mlflow.exceptions.MlflowException) as exc:
        raise InputError(f"tracking.uri={shown!r} cannot be used: {redact(str(exc))}") from None
    if location.startswith("file:") or "://" not in location:
        folder = Path(urllib.parse.urlparse(location).path if "://" in location else location)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise InputError(
                f"tracking.artifact_location={str(folder)!r} (experiment {cfg.experiment!r}) "
                f"cannot be written: {exc.strerror}"
            ) from None


@contextmanager
def tracked_run(
    cfg: TrackingConfig,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Recorder]:
    """Open one run (nested under `parent_run_id` in a sweep; `run_id` reopens an interrupted
    one); it ends FINISHED, FAILED (traceback logged) or KILLED (Ctrl-C), never open."""
    started = time.perf_counter()
    client, experiment_id = _client(cfg)
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags=dict(tags),
            parent_run_id=parent_run_id,
        )
    recorder = Recorder(client, run.info.run_id, run.info.artifact_uri)
    recorder.seconds = time.perf_counter() - started
    status = "FAILED"
    try:
        yield recorder
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        recorder.log_files({"traceback.txt": traceback.format_exc()})
        raise
    finally:
        with recorder._timed():
            mlflow.end_run(status)
        log.debug("MLflow run %s ended %s", run.info.run_id, status)


def open_parent_run(cfg: TrackingConfig, run_name: str, tags: Mapping[str, str]) -> str:
    """Create a sweep's parent run (left RUNNING until `end_parent_run`); returns its id."""
    client, experiment_id = _client(cfg)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    return run.info.run_id


def sweep_records(cfg: TrackingConfig, parent_run_id: str) -> tuple[Recorder, list[JobRecord]]:
    """A recorder on the parent run and what each of its child runs recorded."""
    client, _ = _client(cfg)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50_000,
    )
    records = [
        JobRecord(
            job=int(run.data.tags.get("sweep.job", -1)),
            run_id=run.info.run_id,
            status=run.info.status,
            overrides=json.loads(run.data.tags.get("overrides", "[]")),
            metrics=dict(run.data.metrics),
        )
        for run in children
    ]
    return Recorder(client, parent_run_id, parent.info.artifact_uri), records


def end_parent_run(recorder: Recorder, status: str) -> None:
    recorder.client.set_terminated(recorder.run_id, status)


def _from_job_config(cfg: DictConfig) -> tuple[MlflowClient, str]:
    return _client(OmegaConf.to_object(cfg.tracking))


def has_child(cfg: DictConfig, parent_run_id: str, job: int) -> bool:
    """Whether sweep job `job` already has a run under `parent_run_id`."""
    client, experiment_id = _from_job_config(cfg)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`sweep.job` = '{job}'",
        max_results=1,
    )
    return bool(found)


def record_failed_run(
    cfg: DictConfig, run_name: str, tags: Mapping[str, str], parent_run_id: str
) -> None:
    """A FAILED child run for a sweep job that failed before its own run opened."""
    client, experiment_id = _from_job_config(cfg)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={**tags, "mlflow.parentRunId": parent_run_id}
    )
    client.set_terminated(run.info.run_id, "FAILED")


CHAMPION = "champion"


def set_champion(client: MlflowClient, name: str, run_id: str) -> str:
    """Point registered model `name`'s alias `champion` at the version logged by `run_id`."""
    (version,) = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version.version
