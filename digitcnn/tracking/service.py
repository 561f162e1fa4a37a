"""The recorder process, started by `RecorderProcess` (forked from it, or as `python -m
digitcnn.tracking.service FD PARENT_PID SOURCE`: see digitcnn.tracking.recorder_start;
`ps -o comm` names it digitcnn-record). It imports MLflow, opens the store and writes one run,
on requests that arrive over the socket FD; each reply carries the result or the error, and
the log records of digitcnn's loggers since the last reply.

It lives and dies with its parent: a stop signal (Ctrl-C, SIGTERM, SIGHUP, also when sent to
the whole process group) is the parent's to handle (it asks for the run to end KILLED), and
if the parent is killed this process is killed too (Linux), or stops at the channel's end,
leaving the run open for `resume=` as a killed single process would.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from digitcnn.tracking.channel import Channel, ChannelClosed

# What the training process may ask of the open run (Recorder's methods).
RECORDER_CALLS = frozenset(
    {
        "flush",
        "log_dataset",
        "log_epoch",
        "log_file",
        "log_files",
        "log_folder",
        "log_keras_file",
        "log_metrics",
        "log_missing_epochs",
        "log_params",
        "log_tags",
        "prepare_model_logging",
        "record_step",
    }
)


class _Collected(logging.Handler):
    """Keeps digitcnn's log records for the next reply, ready to pickle."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._taken = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        with self._taken:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._taken:
            records, self.records = self.records, []
        return records


NAME = b"digitcnn-record"  # the process's name (Linux keeps 15 bytes)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: be killed (SIGKILL) when the parent dies, and be named NAME; parent gone
    already: stop now."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig, pr_set_name = 1, 15
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        libc.prctl(pr_set_name, ctypes.c_char_p(NAME), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


def _portable(exc: BaseException) -> BaseException:
    """`exc` as the parent will raise it: itself if it pickles, else a RuntimeError with its
    text; with this process's traceback as a note, for `hydra.verbose=true`."""
    import pickle

    from digitcnn.core.errors import InputError

    if not isinstance(exc, InputError):  # a user's error is one line; a bug, the whole story
        exc.add_note("in the recorder process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        plain.__notes__ = getattr(exc, "__notes__", [])
        return plain


class RecorderService:
    """The state of the recorder process: its store and its run."""

    def __init__(self) -> None:
        self.store = None
        self.recorder = None

    def preflight(self, cfg) -> None:
        """Import MLflow and open the store (see `tracking.preflight`)."""
        from digitcnn.tracking.store import import_store_modules, preflight

        import_store_modules(cfg.uri)
        self.store = preflight(cfg)

    def open_run(self, *args: Any, **kwargs: Any) -> tuple[str, str]:
        from digitcnn.tracking.runs import open_run

        self.recorder = open_run(self.store, *args, **kwargs)
        return self.recorder.run_id, self.recorder.artifact_uri

    def record(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name not in RECORDER_CALLS:
            raise ValueError(f"the recorder does not take {name!r}")
        return getattr(self.recorder, name)(*args, **kwargs)

    def log_dataset_files(self, features: Path, targets: Path, *args: Any) -> None:
        """`Recorder.log_dataset` of arrays saved as .npy files."""
        import numpy as np

        self.record("log_dataset", np.load(features), np.load(targets), *args)

    def finish_run(self, error: BaseException | None, trace: str) -> tuple[float, dict, str]:
        from digitcnn.tracking.runs import finish_run

        finish_run(self.recorder, error, trace)
        return self.recorder.seconds, self.recorder.call_seconds, self.recorder.ended


def serve(channel: Channel) -> None:
    collected = _Collected()
    digitcnn_log = logging.getLogger("digitcnn")
    digitcnn_log.addHandler(collected)
    digitcnn_log.setLevel(logging.DEBUG)  # the parent's loggers decide what is shown
    digitcnn_log.propagate = False
    service = RecorderService()
    while True:
        try:
            name, args, kwargs = channel.receive()
        except ChannelClosed:  # the parent is done, or ended without ending the run
            os._exit(0)  # which then stays open; Python's teardown would take a second
        try:
            result = getattr(service, name)(*args, **kwargs)
        except BaseException as exc:  # every error goes to the parent, which decides
            answer = ("error", _portable(exc), collected.take())
        else:
            answer = ("ok", result, collected.take())
        try:
            channel.send(answer)
        except OSError:  # the parent stopped waiting (its grace ran out) or is gone
            os._exit(0)


def run(sock: socket.socket, parent_pid: int, unblock: set | None = None) -> None:
    """Serve the parent `parent_pid` on `sock` until it closes its end; its stop signals
    ignored, then the signal mask set to `unblock` (a forked recorder's parent's)."""
    _die_with_parent(parent_pid)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the parent decides
        signal.signal(signum, signal.SIG_IGN)
    if unblock is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblock)
    serve(Channel(sock))


def main() -> None:
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    sys.argv = sys.argv[3:] or sys.argv  # the command's own: MLflow names the run's source
    run(socket.socket(fileno=fd), parent_pid)


if __name__ == "__main__":
    main()
