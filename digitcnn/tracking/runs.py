"""One run's lifecycle and what it writes: params, tags, metrics per epoch, files, model."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import tempfile
import threading
import time
import traceback
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils import requirements_utils

from digitcnn.core.errors import InputError, TrackingUnavailable, is_duplicate_key
from digitcnn.core.stops import held
from digitcnn.tracking import mlflow_output
from digitcnn.tracking.files import write_files
from digitcnn.tracking.ledger import mark_done, read_intent
from digitcnn.tracking.store import Store, refusal

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


_UNREACHABLE = re.compile(
    r"max retries exceeded|connection (refused|reset|aborted)|timed? ?out|"
    r"error code (502|503|504)|remote end closed|name or service not known",
    re.I,
)


# A local SQLite store that another process holds write-locked past SQLite's own wait (a
# backup, `mlflow gc`, a long query): like a server away, it answers later. MLflow's session
# rolled the failed write back, so writing it again writes it once.
_LOCKED = "database is locked"


class _LockedQuietly(logging.Filter):
    """MLflow logs each failed SQLite write with its traceback; a lock held by another
    process is waited out by `Recorder._call`, which says so in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _LOCKED not in record.getMessage()


logging.getLogger("mlflow.store.db.utils").addFilter(_LockedQuietly())


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the store could not be reached for now (a server down, restarting,
    a network blip; a SQLite file locked by another process), as opposed to refusing or
    failing the request."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    text = str(exc)
    return isinstance(exc, Exception) and (bool(_UNREACHABLE.search(text)) or _LOCKED in text)


class Recorder:
    """Writes one open MLflow run; created by `tracked_run`.

    Outages: a call that cannot reach the tracking server is retried until the server answers
    or `outage_limit` seconds have passed since the outage began; then `TrackingUnavailable`.
    Per-epoch metrics are queued (`log_epoch`) and written by a background thread, so training
    goes on (and checkpoints) through an outage; `flush` waits for them.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, artifact_uri: str, outage_limit: float = 900
    ) -> None:
        self.client, self.run_id, self.artifact_uri = client, run_id, artifact_uri
        self.outage_limit = outage_limit
        self.seconds = 0.0  # time spent in MLflow calls, reported by the benchmark
        # Each call's seconds by MLflow function (bench/load.py: latency per call).
        self.call_seconds: dict[str, list[float]] = {}
        self.unavailable: TrackingUnavailable | None = None
        self._package_scan: threading.Thread | None = None
        self._outage_since: float | None = None
        self._outage_locked = False  # the outage is a SQLite store locked by another process
        self._lock = threading.Lock()
        self._epochs: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._recorded_steps: set[int] = set()  # epochs a resumed run has recorded already
        self.ended: str | None = None  # the status `finish_run` ended the run with

    def _call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), retried while the server is unreachable, up to the bound."""
        delay = 1.0
        while True:
            if self.unavailable is not None:
                raise self.unavailable
            try:
                with self._timed(getattr(fn, "__name__", "call")):
                    result = fn(*args, **kwargs)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                self._wait_out(delay, locked=_LOCKED in str(exc))
                delay = min(delay * 2, 15.0)
                continue
            with self._lock:
                if self._outage_since is not None:
                    gone = time.monotonic() - self._outage_since
                    what = "store unlocked" if self._outage_locked else "server back"
                    log.info("tracking %s after %.0f s; records written", what, gone)
                    self._outage_since = None
            return result

    def _wait_out(self, delay: float, locked: bool = False) -> None:
        what = (
            "the store's database was locked by another process"
            if locked
            else ("the tracking server was unreachable")
        )
        with self._lock:
            now = time.monotonic()
            if self._outage_since is None:
                self._outage_since = now
                self._outage_locked = locked
                log.warning(
                    "%s: training goes on, records wait (up to %.0f s, "
                    "tracking.outage_limit_seconds)",
                    "tracking store locked by another process"
                    if locked
                    else "tracking server unreachable",
                    self.outage_limit,
                )
            left = self._outage_since + self.outage_limit - now
            if left <= 0:
                self.unavailable = self.unavailable or TrackingUnavailable(
                    f"{what} for over {self.outage_limit:.0f} s (tracking.outage_limit_seconds)"
                )
                raise self.unavailable
        time.sleep(min(delay, left))

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue one epoch's metrics; a background thread writes them in order."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_epochs, daemon=True,
                                            name="digitcnn-epoch-metrics")  # fmt: skip
            self._writer.start()
        if step in self._recorded_steps:  # retrained after a damaged checkpoint: kept once
            return
        self._epochs.put((dict(metrics), step, int(time.time() * 1000)))

    def _write_epochs(self) -> None:
        while True:
            metrics, step, stamp = self._epochs.get()
            try:
                self.log_metrics(metrics, step, timestamp=stamp)
            except TrackingUnavailable:
                pass  # `flush` reports it
            except Exception:
                log.exception("epoch %d's metrics could not be recorded", step)
            finally:
                self._epochs.task_done()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued epoch is written (at most `timeout` seconds); raise if the
        server stayed away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._epochs.all_tasks_done:
            while self._epochs.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._epochs.all_tasks_done.wait(left)
        if self.unavailable is not None:
            raise self.unavailable

    def wait_written(self) -> None:
        """Return once everything handed over so far is in the store (a fault point's
        settle: see digitcnn.core.faults)."""
        self.flush()

    def record_step(self, intent_file: Path, done_file: Path) -> None:
        """Write a step's intent (see digitcnn.tracking.ledger) as it was decided: its params,
        its tags, its metrics at step 0 with the intent's timestamp (MLflow stores a metric it
        already has once); then mark the step done."""
        intent = read_intent(intent_file)
        if intent.get("run_id") != self.run_id:  # never mark done what was not written
            raise RuntimeError(f"{intent_file} is not a whole intent of run {self.run_id}")
        if intent.get("params"):
            self.log_params(intent["params"])
        if intent.get("metrics"):
            self.log_metrics(intent["metrics"], timestamp=intent["timestamp"])
        if intent.get("tags"):
            self.log_tags(intent["tags"])
        mark_done(done_file, self.run_id)

    def log_missing_epochs(self, history: Mapping[str, list[float]]) -> None:
        """Record the epochs of `history` (a checkpoint's) that the run lacks: those whose
        metrics were waiting when an outage ended the process."""
        recorded = {m.step for m in self._call(self.client.get_metric_history, self.run_id, "loss")}
        self._recorded_steps = recorded
        epochs = max((len(v) for v in history.values()), default=0)
        for epoch in range(1, epochs + 1):
            if epoch not in recorded:
                row = {k: v[epoch - 1] for k, v in history.items() if len(v) >= epoch}
                self.log_metrics(row, step=epoch)

    def prepare_model_logging(self) -> None:
        """Start, in a background thread, the scan of installed packages that MLflow makes
        when it checks a logged model's pip requirements (~0.8 s of Python). Called before
        training, the scan runs while TensorFlow works; `log_model` waits for it."""
        scan = getattr(requirements_utils, "_init_packages_to_modules_map", None)
        if scan is not None and self._package_scan is None:  # absent: MLflow scans when logging
            self._package_scan = threading.Thread(target=scan, name="mlflow-package-scan")
            self._package_scan.start()

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        """Time one MLflow call, counted under `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self.seconds += took
            self.call_seconds.setdefault(name, []).append(took)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self._call(self.client.log_batch, self.run_id, params=items[i : i + _BATCH])

    def log_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call(self.client.log_batch, self.run_id, tags=batch)

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int = 0,
        model_id: str | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Metrics at `step`, stamped `timestamp` (ms; default now); with `model_id` also shown
        on that logged model's page."""
        stamp = timestamp if timestamp is not None else int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in metrics.items()]
        self._call(self.client.log_batch, self.run_id, metrics=batch)

    def log_dataset(
        self, features: np.ndarray, targets: np.ndarray, name: str, digest: str, source: str
    ) -> None:
        with warnings.catch_warnings():  # MLflow warns that a path source is ambiguous
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                features, targets=targets, source=source, name=name, digest=digest[:36]
            )
        try:
            self._call(mlflow.log_input, dataset, context="training")
        except mlflow.exceptions.MlflowException as exc:
            # Parallel jobs log the same dataset: MLflow looks it up, then inserts it, so a
            # job that lost the race hits the unique key. Its transaction was rolled back;
            # the second look-up finds the winner's record and links to it.
            if not is_duplicate_key(str(exc)):
                raise
            log.debug("dataset %s was recorded by a parallel job; linking again", name)
            self._call(mlflow.log_input, dataset, context="training")

    def log_file(self, path: Path, folder: str | None = None) -> None:
        with self._whole_or_none():
            self._call(self.client.log_artifact, self.run_id, str(path), folder)

    def log_folder(self, path: Path, folder: str | None = None, done: Path | None = None) -> None:
        """The files under `path` as artifacts under `folder`; then the ledger's `done` file
        of the step they make, if given (artifacts keep their paths: logging them again
        changes nothing)."""
        with self._whole_or_none():
            self._call(self.client.log_artifacts, self.run_id, str(path), folder)
        if done is not None:
            mark_done(done, self.run_id)

    def log_files(
        self, files: Mapping[str, Any], folder: str | None = None, done: Path | None = None
    ) -> None:
        """Write {name: content} (see `write_files`) to a temporary folder and log it. A file
        lands in the store whole, or the call fails."""
        with tempfile.TemporaryDirectory() as tmp:
            write_files(files, Path(tmp))
            self.log_folder(Path(tmp), folder, done)

    @contextmanager
    def _whole_or_none(self) -> Iterator[None]:
        """Artifacts in a local folder (MLflow copies them in place) that a failed call left
        half-copied, a full disk's empty or cut files, are removed: a run's artifacts are
        whole or absent. A server's store answers for its own."""
        local = urllib.parse.urlsplit(self.artifact_uri)
        root = Path(local.path) if local.scheme in ("", "file") else None
        before = _file_sizes(root) if root else {}
        try:
            yield
        except Exception:
            for path, size in _file_sizes(root).items() if root else ():
                if before.get(path) != size:
                    path.unlink(missing_ok=True)
            raise

    def log_model(
        self, model: keras.Model, *details: Any, done: Path | None = None, since: int = 0
    ) -> None:
        """The trained model, saved to a temporary file and logged by `log_keras_file`, which
        takes `details` after the file."""
        with tempfile.TemporaryDirectory() as tmp:
            keras_file = Path(tmp) / "model.keras"
            with held():  # see digitcnn.core.stops.held
                model.save(keras_file)
            self.log_keras_file(keras_file, *details, done=done, since=since)

    def log_keras_file(
        self,
        keras_file: Path,
        example: np.ndarray,
        probabilities: np.ndarray,
        pixel_max: int,
        requirements: list[str],
        register_as: str | None = None,
        done: Path | None = None,
        since: int = 0,
    ) -> None:
        """A saved Keras model as a pyfunc over raw pixel images (see digitcnn.serving.pyfunc), with
        signature and input example (`probabilities`: the model's answer to `example`);
        registered as a version of `register_as` if given. Saved, not loaded back: Keras is
        never imported here (digitcnn.serving.flavor).

        Once per run however often it is asked (a resumed run's model step, a call retried
        while the store was away): a READY model this run logged is kept, and one whose upload
        was cut is deleted before the model is logged again (`since`: when this training
        ended; a READY model from before is an earlier training's). Then the ledger's `done`."""
        from mlflow.models import infer_signature

        from digitcnn.core import paths
        from digitcnn.serving import flavor, pyfunc

        kept = self._logged_model(since)
        if kept is not None:
            log.info("model %s was logged before the stop: kept", kept.model_id)
            if register_as:
                self._register_once(kept.model_id, register_as)
            if done is not None:
                mark_done(done, self.run_id)
            return
        if self._package_scan is not None:
            self._package_scan.join()
        info = self._call(
            mlflow.models.Model.log,
            artifact_path=None,
            name="model",
            flavor=flavor,
            flavor_name=flavor.NAME,
            validate_serving_input=False,  # see digitcnn.serving.flavor
            python_model=str(paths.PACKAGE_DIR / "serving" / "logged_model.py"),  # code, no pickle
            artifacts={pyfunc.KERAS_ARTIFACT: str(keras_file)},
            model_config={"pixel_max": pixel_max},
            signature=infer_signature(example, probabilities),
            input_example=example,
            code_paths=[str(paths.PACKAGE_DIR)],  # loads without digitcnn installed
            pip_requirements=requirements,  # pinned here: inferring them costs seconds
        )
        if register_as:
            self._register_once(info.model_id, register_as)
        if done is not None:
            mark_done(done, self.run_id)

    def _logged_model(self, since: int = 0):
        """This run's READY logged model created `since` (ms), if it has one; models it left
        unfinished (an upload cut by a kill or a full disk) are deleted on the way."""
        experiment_id = self._call(self.client.get_run, self.run_id).info.experiment_id
        models = self._call(
            self.client.search_logged_models,
            [experiment_id],
            filter_string=f"source_run_id = '{self.run_id}'",
        )
        ready = None
        for model in models:
            if str(model.status) == "READY":
                if ready is None and model.creation_timestamp >= since:
                    ready = model
            elif str(model.status) != "READY":
                self._call(self.client.delete_logged_model, model.model_id)
        return ready

    def _register_once(self, model_id: str, name: str) -> None:
        """Model `model_id` as a version of registered model `name`, unless it is one; said
        in one line of digitcnn's (MLflow's own lines would reach a sweep's console bare)."""
        versions = self._call(
            self.client.search_model_versions, f"name = '{name}' and run_id = '{self.run_id}'"
        )
        ours = [v for v in versions if getattr(v, "model_id", model_id) == model_id]
        if ours:
            log.info("model     %s version %s (registered before the stop)", name, ours[0].version)
            return
        with mlflow_output.through_log():
            version = self._call(mlflow.register_model, f"models:/{model_id}", name)
        log.info("model     registered as %s version %s", name, version.version)


def _file_sizes(folder: Path) -> dict[Path, int]:
    if not folder.is_dir():
        return {}
    return {path: path.stat().st_size for path in folder.rglob("*") if path.is_file()}


def open_run(
    store: Store,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
    outage_limit: float = 900,
) -> Recorder:
    """Start one run in `store` (from `preflight`; nested under `parent_run_id` in a sweep;
    `run_id` reopens an interrupted one); `finish_run` ends it."""
    started = time.perf_counter()
    try:
        # System metrics (CPU, memory, disk, network, NVIDIA GPUs) from a thread of the
        # process that records; a reopened run goes on from its last step.
        monitored = store.system_metrics_seconds > 0
        if monitored:
            mlflow.set_system_metrics_sampling_interval(store.system_metrics_seconds)
        if run_id:
            run = mlflow.start_run(run_id=run_id, log_system_metrics=monitored)
            if "stopped_by" in run.data.tags:  # it goes on: what stopped it is over
                store.client.delete_tag(run_id, "stopped_by")
        else:
            run = mlflow.start_run(
                experiment_id=store.experiment_id,
                run_name=run_name,
                tags=dict(tags),
                parent_run_id=parent_run_id,
                log_system_metrics=monitored,
            )
    except mlflow.exceptions.MlflowException as exc:
        reason = refusal(exc, store.experiment)  # a server's "no": nothing was written
        if reason is None:
            raise
        raise InputError(reason) from None
    recorder = Recorder(store.client, run.info.run_id, run.info.artifact_uri, outage_limit)
    recorder.seconds = time.perf_counter() - started
    return recorder


def finish_run(recorder: Recorder, error: BaseException | None, trace: str = "") -> None:
    """End the run `open_run` started, after the work it records ended with `error` (None:
    it succeeded; `trace`: the error's traceback). FINISHED once every queued epoch is
    written; KILLED after a stop signal (tag `stopped_by`: its name), with the epochs queued
    so far written within GRACE_SECONDS; FAILED after a full disk (tag `stopped_by`, no
    traceback: there is no room for it); otherwise FAILED, with the traceback as
    traceback.txt. After an outage past the limit nothing more can be written and the run
    waits for `resume=`; `TrackingUnavailable` is raised then. `recorder.ended` says how the
    run was ended (None: it could not be, and stays open for `resume=`)."""
    from digitcnn.core.disk import is_disk_full
    from digitcnn.core.stops import GRACE_SECONDS, shield

    status = "FAILED"
    interrupted: KeyboardInterrupt | None = None  # a stop while a finished run is closed
    disk_full = is_disk_full(error)
    try:
        if error is None:
            try:
                recorder.flush()
            except KeyboardInterrupt as stop:  # the work is done: the run still FINISHES
                shield()
                interrupted = stop
                recorder.flush(timeout=GRACE_SECONDS / 2)
            status = "FINISHED"
        elif isinstance(error, KeyboardInterrupt):
            shield()
            status = "KILLED"
            with contextlib.suppress(Exception):
                recorder.flush(timeout=GRACE_SECONDS / 2)
                recorder.log_tags({"stopped_by": str(error) or "SIGINT"})
        elif disk_full:
            with contextlib.suppress(Exception):
                recorder.log_tags({"stopped_by": "disk full"})
        elif not isinstance(error, TrackingUnavailable):
            with contextlib.suppress(TrackingUnavailable):
                recorder.log_files({"traceback.txt": trace})
    finally:
        if recorder.unavailable is None and not disk_full:
            with contextlib.suppress(Exception):  # tidying: never what fails a run
                _settle_logged_models(recorder, status)
            with recorder._timed("end_run"):
                mlflow.end_run(status)
            recorder.ended = status
        else:  # the server is away, or the store's disk is full: try, never fail on it
            with contextlib.suppress(Exception):  # (MLflow would end it FINISHED at exit)
                mlflow.end_run("FAILED")
                recorder.ended = "FAILED"
        log.debug("MLflow run %s ended %s", recorder.run_id, recorder.ended)
    if interrupted is not None:
        raise interrupted


def _settle_logged_models(recorder: Recorder, status: str) -> None:
    """A run ends with the models it logged, each READY: a model whose upload was cut (a
    process killed while logging it, then resumed) is deleted once the run has FINISHED, and
    marked FAILED if the run ends otherwise."""
    run = recorder.client.get_run(recorder.run_id)
    models = recorder.client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{recorder.run_id}'"
    )
    for model in models:
        if str(model.status) == "READY":
            continue
        if status == "FINISHED":
            recorder.client.delete_logged_model(model.model_id)
        elif str(model.status) == "PENDING":
            recorder.client.finalize_logged_model(model.model_id, "FAILED")


@contextmanager
def tracked_run(store: Store, *args: Any, **kwargs: Any) -> Iterator[Recorder]:
    """One run around the block, opened as `open_run(store, *args, **kwargs)`; it ends
    FINISHED, FAILED (traceback logged) or KILLED (Ctrl-C), never open; after `outage_limit`
    seconds without the server, FAILED if the server takes that call, and
    `TrackingUnavailable` is raised."""
    from digitcnn.core.stops import shield

    recorder = open_run(store, *args, **kwargs)
    try:
        yield recorder
    except BaseException as exc:
        finish_run(recorder, exc, traceback.format_exc())
        raise
    stopped = None
    while True:  # a stop while the finished work is being closed: closed all the same, then
        try:  # the stop goes on (its line says the run FINISHED)
            finish_run(recorder, None)
            break
        except KeyboardInterrupt as stop:
            shield()
            stopped = stopped or stop
            if recorder.ended is not None:  # ended already: only the stop is left to raise
                break
    if stopped is not None:
        raise stopped
