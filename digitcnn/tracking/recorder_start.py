"""How a single run's recorder process starts: forked from the training process (Linux), or
as a new interpreter, `python -m digitcnn.tracking.service FD PARENT_PID SOURCE`, where fork
is not safe to use (macOS, whose system libraries forbid it once threads ran; Windows has
none).

Forked, the recorder shares what the training process imported before it (Hydra, OmegaConf,
digitcnn's config) instead of starting Python again, and is left as a new interpreter would
be: Python's signal handlers and the parent's log handlers (its console, the job's log file)
are not its own; what the parent ignores it ignores. It keeps the parent's `sys.argv`, so
MLflow names the command as the run's source (a new interpreter is handed it as SOURCE), and
its warning filters and loggers' levels, which digitcnn leaves as Python sets them.

The job forks its recorder first thing (digitcnn.job), when it has imported neither Keras,
MLflow nor NumPy (measured) and runs one thread. That is the condition checked: a fork copies
only the calling thread, and a lock another thread held would stay held in the child, so where
another thread runs (NumPy's OpenBLAS starts some when imported) a new interpreter starts
instead. The fork happens with the stop signals blocked, so a Ctrl-C or a SIGTERM to the
whole process group never reaches the recorder before it ignores them (see `service.run`):
the parent decides; one that came meanwhile is raised in the parent once the recorder exists,
which is then ended.

Files the parent has open stay open in the recorder, unused: none of them is closed or
finalized there (the parent's objects are frozen out of its garbage collections). There are
few: the fork comes before the run's writer lock is taken (whose descriptors a forked child
closes anyway, digitcnn.core.writer_lock) and before any store is opened.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from digitcnn.tracking import service

log = logging.getLogger(__name__)
FORKS = sys.platform.startswith("linux")
# The recorder runs the logged model once, to check it, on the CPU: the accelerators are the
# training process's.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def start(ours: socket.socket, theirs: socket.socket, fork: bool = FORKS):
    """The recorder process, serving the socket pair's `theirs` end (closed here once it has
    it; `ours` stays this process's): a `ForkedRecorder`, or a `subprocess.Popen` where this
    process cannot fork safely (`fork` False, or a thread already runs)."""
    parent_pid = os.getpid()
    if not (fork and _one_thread()):
        process = subprocess.Popen(
            # The run's source, as MLflow records it (`mlflow.source.name`), is the command's.
            [sys.executable, "-m", service.__name__, str(theirs.fileno()), str(parent_pid),
             sys.argv[0]],
            pass_fds=[theirs.fileno()],
            env=os.environ | CPU_ONLY,
        )  # fmt: skip
        theirs.close()
        log.debug("recorder process %d started (a new interpreter)", process.pid)
        return process
    for stream in (sys.stdout, sys.stderr):  # else what is buffered would be written twice
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    gc.freeze()  # the objects made so far are never collected, hence never finalized, there
    try:
        pid = os.fork()
        if pid == 0:
            _be_the_recorder(ours, theirs, parent_pid, blocked)  # never returns
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise
    finally:
        gc.unfreeze()
    theirs.close()
    recorder = ForkedRecorder(pid)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a stop that came is raised here
    except BaseException:
        ours.close()  # the recorder ends at the channel's end, having done nothing
        recorder.wait()
        raise
    log.debug("recorder process %d forked", pid)
    return recorder


def _one_thread() -> bool:
    """Whether this process runs a single thread, as Linux counts them (native ones too): a
    fork copies only the calling thread, and a lock another held stays held in the child."""
    try:
        stat = Path("/proc/self/stat").read_bytes()
    except OSError:
        return False
    return int(stat.rpartition(b") ")[2].split()[17]) == 1  # field 20, num_threads


def _be_the_recorder(
    ours: socket.socket, theirs: socket.socket, parent_pid: int, mask: set
) -> NoReturn:
    """In the forked child: become what a new recorder interpreter would be, and serve."""
    code = 1
    try:
        ours.close()  # the parent's end: the channel ends when the parent closes it
        signal.set_wakeup_fd(-1)
        for signum in signal.valid_signals():  # as exec leaves them: handled ones to default
            with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP, ...
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
        logging.root.handlers.clear()  # not closed: the files are the parent's
        logging.getLogger("digitcnn").handlers.clear()
        logging.root.setLevel(logging.WARNING)
        os.environ.update(CPU_ONLY)
        service.run(theirs, parent_pid, unblock=mask)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


class ForkedRecorder:
    """The forked recorder, waited for and killed as a `subprocess.Popen` would be."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._waitpid(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            return self._waitpid(0)
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"recorder process {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def _waitpid(self, options: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, options)
            except ChildProcessError:  # reaped elsewhere: its status is lost, as Popen says
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
