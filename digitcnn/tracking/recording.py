"""Where a job's records are written from: this process, or a recorder process beside it.

A single run (`python -m digitcnn.run ...`) hands its records to a second process
(`RecorderProcess`, forked from this one: digitcnn.tracking.recorder_start): MLflow's imports
(~1.5 s), the store's checks and the run's calls then happen while this process imports Keras
and trains, on the other core. Jobs of a sweep record from their own process
(`InlineRecording`): the sweep's process holds MLflow already, and a launcher's worker pays
the imports once for all its jobs.

Both give `preflight()` (fails early on a bad store) and `tracked_run(...)`, whose recorder
takes the same calls as `tracking.Recorder`.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitcnn.core.config_groups import TrackingConfig
from digitcnn.core.errors import RecorderGone
from digitcnn.core.stops import GRACE_SECONDS, held, shield
from digitcnn.tracking import recorder_start
from digitcnn.tracking.channel import Channel, ChannelClosed
from digitcnn.tracking.files import write_files

if TYPE_CHECKING:
    import keras

    from digitcnn.tracking.store import Store


def open_recording(
    cfg: TrackingConfig, process: RecorderProcess | None
) -> RecorderProcess | InlineRecording:
    """The recorder `process` (a single run's, started early) or this process; the store
    check starts now."""
    if process is None:
        return InlineRecording(cfg)
    process.check_store(cfg)
    return process


class InlineRecording:
    """Records from this process (see `tracking.tracked_run`)."""

    separate = False  # MLflow is imported here

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.store: Store | None = None

    def preflight(self) -> Store:
        from digitcnn.tracking.store import preflight

        self.store = preflight(self.cfg)
        return self.store

    def tracked_run(self, *args: Any, **kwargs: Any):
        from digitcnn.tracking.runs import tracked_run

        return tracked_run(self.store, *args, **kwargs)

    def close(self) -> None:
        pass


class RecorderProcess:
    """A second Python process that imports MLflow and writes the run (digitcnn.tracking.
    service), started as the job starts (digitcnn.tracking.recorder_start); given the store
    (`check_store`), it opens it while this process imports Keras.

    Calls that return nothing are sent without waiting; their answers (an error, the log
    lines the recorder wrote) are read at the next call that waits, or as they arrive.
    """

    separate = True  # MLflow is imported there, not here

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = recorder_start.start(ours, theirs)
        self._channel = Channel(ours)
        self.deadline: float | None = None  # set when a stopped run has GRACE_SECONDS left
        self._waiting: deque[Callable[[], None]] = deque()  # per answer due: its clean-up
        self._closed = False

    def check_store(self, cfg: TrackingConfig) -> None:
        """Have the recorder import MLflow and check the store; `preflight` waits for it."""
        self._send("preflight", cfg)

    def _send(self, name: str, *args: Any, after: Callable[[], None] = lambda: None, **kwargs):
        # Queued and counted before anything is sent: a stop signal that interrupts the send
        # leaves the message to go out with the next one, and its answer is still expected.
        self._channel.queue((name, args, kwargs))
        self._waiting.append(after)
        try:
            self._channel.flush()
        except OSError:
            self._gone()

    def _read(self, wait: bool = True) -> tuple[bool, Any]:
        """Read one answer due; (False, None) if `wait` is False and none has come. Past the
        `deadline` (a stopped run's grace) the recorder is ended and counts as gone."""
        left = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
        try:
            answer = self._channel.receive(wait, timeout=left)
        except ChannelClosed:
            self._gone()
        if answer is None and wait:
            self._process.kill()
            raise RecorderGone(
                f"the recorder process (MLflow) did not answer within {GRACE_SECONDS:.0f} s"
            )
        if answer is None:
            return False, None
        self._waiting.popleft()()
        status, value, records = answer
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        if status == "error":
            raise value
        return True, value

    def _gone(self):
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
        raise RecorderGone(f"the recorder process (MLflow) ended unexpectedly, {how}")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Ask and wait for the answer (after those of earlier calls)."""
        self.preflight()  # reads every answer due
        self._send(name, *args, **kwargs)
        return self._read()[1]

    def post(self, name: str, *args: Any, after=lambda: None, **kwargs: Any) -> None:
        """Ask without waiting (`after` runs once answered, or now if an earlier answer is
        an error); answers that came are read."""
        try:
            while self._waiting and self._read(wait=False)[0]:
                pass
        except BaseException:
            after()  # never sent: its files go now
            raise
        self._send(name, *args, after=after, **kwargs)

    def preflight(self) -> None:
        """Wait for the store check (an `InputError` if the store cannot be used), and any
        other answer due."""
        while self._waiting:
            self._read()

    def settle(self) -> BaseException | None:
        """Read every answer due; the first error among them, if any (not raised)."""
        first = None
        while self._waiting:
            try:
                self._read()
            except RecorderGone:
                raise
            except Exception as exc:
                first = first or exc
        return first

    @contextmanager
    def tracked_run(
        self,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
        outage_limit: float = 900,
    ) -> Iterator[RemoteRecorder]:
        """As `tracking.tracked_run`, in the recorder process."""
        started = time.perf_counter()
        opened = self.call("open_run", run_name, dict(tags), parent_run_id, run_id, outage_limit)
        recorder = RemoteRecorder(self, *opened)
        recorder.seconds = time.perf_counter() - started
        try:
            yield recorder
        except BaseException as exc:
            if not isinstance(exc, RecorderGone):
                recorder.finish(exc, traceback.format_exc())
            raise
        recorder.finish(None, "")

    def close(self) -> None:
        """Let the recorder process end (it stops at the channel's end) and wait for it: it
        may still be creating the store, which must not be cut short; a stopped run waits
        GRACE_SECONDS at most. Once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()
        try:
            self._process.wait(timeout=GRACE_SECONDS if self.deadline else None)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        while self._waiting:  # answers that never came (the recorder died): their files go
            self._waiting.popleft()()


class RemoteRecorder:
    """`tracking.Recorder`'s calls, made in the recorder process. Those that return nothing
    do not wait for it; temporary files they hand over are removed once it answered."""

    def __init__(self, process: RecorderProcess, run_id: str, artifact_uri: str) -> None:
        self._process = process
        self.run_id, self.artifact_uri = run_id, artifact_uri
        self.seconds = 0.0  # the recorder's time in MLflow calls, known once the run ended
        self.call_seconds: dict[str, list[float]] = {}
        self.ended: str | None = None  # the status the run was ended with

    def _post(self, name: str, *args: Any, after=lambda: None, **kwargs: Any) -> None:
        self._process.post("record", name, *args, after=after, **kwargs)

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        self._post("log_epoch", dict(metrics), step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._post("log_params", dict(params))

    def log_tags(self, tags: Mapping[str, Any]) -> None:
        self._post("log_tags", dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, **kwargs: Any) -> None:
        self._post("log_metrics", {k: float(v) for k, v in metrics.items()}, step, **kwargs)

    def log_dataset(self, features, targets, name: str, digest: str, source: str) -> None:
        """The arrays go as files (a pipe of tens of MB would hold this process up)."""
        import numpy as np

        def save(folder: Path) -> None:
            np.save(folder / "features.npy", features)
            np.save(folder / "targets.npy", targets)

        folder, remove = _handed_over(save)
        args = (folder / "features.npy", folder / "targets.npy", name, digest, source)
        self._process.post("log_dataset_files", *args, after=remove)

    def log_missing_epochs(self, history: Mapping[str, list[float]]) -> None:
        self._process.call("record", "log_missing_epochs", dict(history))

    def record_step(self, intent_file: Path, done_file: Path) -> None:
        self._post("record_step", intent_file, done_file)

    def wait_written(self) -> None:
        """Return once the recorder has written everything handed to it so far."""
        self._process.call("record", "flush")

    def prepare_model_logging(self) -> None:
        self._post("prepare_model_logging")

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self._post("log_file", path, folder)

    def log_folder(self, path: Path, folder: str | None = None, done: Path | None = None) -> None:
        self._post("log_folder", path, folder, done)

    def log_files(
        self, files: Mapping[str, Any], folder: str | None = None, done: Path | None = None
    ) -> None:
        """Written here (figures need matplotlib, not MLflow), logged there."""
        written, remove = _handed_over(lambda tmp: write_files(files, tmp))
        self._post("log_folder", written, folder, done, after=remove)

    def log_model(
        self, model: keras.Model, *details: Any, done: Path | None = None, since: int = 0
    ) -> None:
        """Saved here, logged there while this process goes on; `details` as
        `Recorder.log_keras_file` takes them after the file."""
        saved, remove = _handed_over(lambda tmp: model.save(tmp / "model.keras"))
        self._post(
            "log_keras_file", saved / "model.keras", *details, done=done, since=since, after=remove
        )

    def finish(self, error: BaseException | None, trace: str) -> None:
        """End the run (see `tracking.runs.finish_run`) once every call made was answered;
        one that failed fails the run, if the work itself did not. A stopped run (Ctrl-C,
        SIGTERM, SIGHUP) is ended within GRACE_SECONDS, or left open for `resume=` (`ended`
        stays None).

        A stop that arrives while the run is being ended does not cut that short: the run is
        ended as it was going to be (FINISHED when its work was done), within GRACE_SECONDS
        from the stop, and the stop is raised once it is."""
        stopped = None
        while True:
            try:
                self._finish(error, trace)
                break
            except KeyboardInterrupt as stop:
                shield()
                stopped = stopped or stop
                if self._process.deadline is None:
                    self._process.deadline = time.monotonic() + GRACE_SECONDS
        if stopped is not None:
            raise stopped

    def _finish(self, error: BaseException | None, trace: str) -> None:
        if isinstance(error, KeyboardInterrupt):
            shield()
            self._process.deadline = time.monotonic() + GRACE_SECONDS
        try:
            late = self._process.settle()
            if error is None and late is not None:
                error, trace = late, "".join(traceback.format_exception(late))
            self.seconds, self.call_seconds, self.ended = self._process.call(
                "finish_run", _outcome(error), trace
            )
        except RecorderGone:
            if error is None:
                raise
            return  # the error that ended the work says more
        if late is not None and late is error:
            raise late


def _outcome(error: BaseException | None) -> BaseException | None:
    """What the recorder needs to know of the error that ended the work: a stop (KILLED),
    the server's absence (nothing more to write) or any other (FAILED, traceback logged)."""
    from digitcnn.core.errors import TrackingUnavailable

    if error is None:
        return None
    if isinstance(error, KeyboardInterrupt):
        return KeyboardInterrupt(str(error))  # the signal's name
    if isinstance(error, TrackingUnavailable):
        return TrackingUnavailable(str(error))
    return RuntimeError(f"{type(error).__name__}: {error}")


def _handed_over(write: Callable[[Path], None]) -> tuple[Path, Callable[[], None]]:
    """A new temporary folder filled by `write`, and what removes it once the recorder has
    read it (at once if `write` fails). A stop waits for `write` (Keras files: see
    digitcnn.core.stops.held)."""
    folder = Path(tempfile.mkdtemp(prefix="digitcnn-"))
    try:
        with held():
            write(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, lambda: shutil.rmtree(folder, ignore_errors=True)
