"""How a single run's recorder process starts: forked from the training process (Linux), or
as a new interpreter, `python -m digitcnn.tracking.service FD PARENT_PID`, where fork is not
safe to use (macOS, whose system libraries forbid it once threads ran; Windows has none).

Forked, the recorder shares what the training process imported before it (Hydra, OmegaConf,
digitcnn's config) instead of starting Python again, and is left as a new interpreter would
be: Python's signal handlers and the parent's log handlers (its console, the job's log file)
are not its own; what the parent ignores it ignores. The training process has imported
neither Keras, MLflow nor NumPy at that point, and runs a single thread (tests/
test_reliability.py checks both); where another thread runs, it starts a new interpreter
instead. The fork happens with the stop signals blocked, so a Ctrl-C or a SIGTERM to the
whole process group never reaches the recorder before it ignores them (see `service.run`):
the parent decides.

Files the parent has open stay open in the recorder, unused: none of them is closed or
finalized there (`gc.freeze`), and the parent waits for its recorder to end before it lets go
of any (its writer lock last).
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
            [sys.executable, "-m", service.__name__, str(theirs.fileno()), str(parent_pid)],
            pass_fds=[theirs.fileno()],
            env=os.environ | CPU_ONLY,
        )
        theirs.close()
        log.debug("recorder process %d started (a new interpreter)", process.pid)
        return process
    sys.stdout.flush()  # else what is buffered would be written twice
    sys.stderr.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        pid = os.fork()
        if pid == 0:
            _be_the_recorder(ours, theirs, parent_pid, blocked)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    theirs.close()
    log.debug("recorder process %d forked", pid)
    return ForkedRecorder(pid)


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
        gc.freeze()  # the parent's objects (open files among them) are never finalized here
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
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"recorder process {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
