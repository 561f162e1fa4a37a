"""How a process of digitcnn stops on a signal.

SIGINT (Ctrl-C), SIGTERM (what Slurm, Kubernetes, systemd and `timeout` send) and SIGHUP (a
closed terminal, a dropped ssh session) all mean the same: stop now, cleanly. Each raises
`Stopped` (a KeyboardInterrupt, so every `finally` runs and an open run ends KILLED) in the
main thread; later signals are ignored while the process closes its records, which takes at
most `GRACE_SECONDS`, well inside a scheduler's grace period before its SIGKILL (30 s for
Kubernetes and Slurm by default). The process then exits with 128 + the signal's number, after
one line that says what was recorded and how to go on.

A signal that was ignored when the process started (`nohup`, a background job of a
non-interactive shell) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_signals: list[int] = list(STOP_SIGNALS)  # and a scheduler's warning, where one is added
GRACE_SECONDS = 15.0  # the most a stopped process spends closing its records

_before_stopping: list[Callable[[int], None]] = []
_closers: list[Callable[[Stopped], None]] = []
_received: list[int] = []  # the stop signal this process got, if any
_held = 0  # how many `held()` blocks the main thread is in
_installed = False  # whether `install` ran in this process


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; `outcome` is what the process made of it (one line)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcome = ""

    def __reduce__(self):  # a launcher's worker hands it back to the sweep's process
        return type(self), (self.signum,), {"outcome": self.outcome}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def before_going_on(self) -> str:
        """What the user does before resuming (nothing, after a signal)."""
        return ""


class StoppedByFullDisk(Stopped):
    """A job of a sweep found a disk full: the sweep stops as on a signal (each job after it
    would fail the same way, and a search would count them as failed trials), its records
    ended KILLED where the store can still be written, to be resumed once there is room."""

    def __init__(self) -> None:
        KeyboardInterrupt.__init__(self, "disk full")
        self.signum = 0
        self.outcome = ""

    def __reduce__(self):  # from a launcher's worker, like a signal's
        return type(self), (), {"outcome": self.outcome}

    @property
    def name(self) -> str:
        return "disk full"  # the tag a single run stopped by it gets, `stopped_by`

    @property
    def exit_status(self) -> int:
        return 2  # as for a single run's full disk

    @property
    def before_going_on(self) -> str:
        return "once there is room, "


class StoppedByScheduler(Stopped):
    """A cluster's scheduler ended a job of the sweep for good (Slurm: `scancel`, or a job out
    of requeues): the sweep stops as on SIGTERM once its other jobs have ended, its records
    ended KILLED, to be resumed. `name` says what ended it (the `stopped_by` tag)."""

    def __init__(self, what: str) -> None:
        KeyboardInterrupt.__init__(self, what)
        self.signum = signal.SIGTERM
        self.outcome = ""
        self.what = what

    def __reduce__(self):
        return type(self), (self.what,), {"outcome": self.outcome}

    @property
    def name(self) -> str:
        return self.what


def shield() -> None:
    """Ignore further stop signals while the first one is handled: the records are being
    closed (within GRACE_SECONDS), and interrupting that would leave them half-closed. Called
    by what handles a stop, also one that did not come through `install`'s handlers (a
    KeyboardInterrupt raised by Python's or a library's own SIGINT handler)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _signals:
        if signal.getsignal(signum) not in (signal.SIG_IGN, _ignore_later):
            signal.signal(signum, _ignore_later)


def as_stopped(exc: KeyboardInterrupt) -> Stopped:
    """A KeyboardInterrupt as a `Stopped` (one raised by Python's own SIGINT handler, before
    `install` ran, is a SIGINT)."""
    if isinstance(exc, Stopped):
        return exc
    stopped = Stopped(signal.SIGINT)
    stopped.outcome = getattr(exc, "outcome", "")
    return stopped


def install() -> None:
    """Make every stop signal raise `Stopped` in this process (its main thread only: Python
    runs signal handlers there)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    for signum in _signals:
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN and current is not _ignore_later:
            signal.signal(signum, _stop)


def add_stop_signal(signum: int) -> Callable[[int, object], None] | int | None:
    """Make `signum` a stop signal too in this process (a scheduler's warning before it
    preempts the job or its time runs out: Slurm's USR2 under submitit), from now on; returns
    the handler it had."""
    before = signal.getsignal(signum)
    if signum not in _signals:
        _signals.append(signum)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, _stop)
    return before


def installed() -> bool:
    """Whether `install` ran in this process (its stop signals then raise `Stopped`, or stay
    ignored if they were)."""
    return _installed


def before_stopping(hook: Callable[[int], None]) -> Callable[[], None]:
    """Run `hook(signum)` when a stop signal arrives, before `Stopped` is raised (a sweep
    lets its jobs in other processes close their runs first); returns what removes it."""
    _before_stopping.append(hook)
    return lambda: _before_stopping.remove(hook) if hook in _before_stopping else None


def closing(closer: Callable[[Stopped], None]) -> Callable[[], None]:
    """Run `closer(stopped)` once a stop has unwound the work, before the process exits (a
    sweep closes its parent run and says how to resume it, in `stopped.outcome`); returns
    what removes it."""
    _closers.append(closer)
    return lambda: _closers.remove(closer) if closer in _closers else None


def close(exc: KeyboardInterrupt) -> Stopped:
    """Run the closers for the stop `exc`; the stop, its outcome filled in."""
    stopped = as_stopped(exc)
    for closer in list(_closers):
        try:
            closer(stopped)
        except Exception as error:  # a closer that fails must not hide the others' work
            stopped.outcome = f"{stopped.outcome}; closing failed: {error}".lstrip("; ")
    return stopped


def requested() -> Stopped | None:
    """The stop this process was asked for, if any: also one whose `Stopped` was raised where
    Python drops exceptions (a finalizer, `__del__`), which a loop checks for between its
    steps (training does after each epoch)."""
    return Stopped(_received[0]) if _received else None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a stop that arrives during the block, and raise it when the block ends.

    For work an exception must not cut in the middle: a native library calling back into
    Python, above all HDF5 writing or reading a Keras file through a Python file object (Keras
    keeps the weights in a zip entry), whose state an exception raised in its callback breaks:
    a later write fails with EBADF, or the process aborts on a corrupted heap. Such blocks last
    well under a second."""
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = len(_received)
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and len(_received) > before:  # the stop wins over the block's error
            raise Stopped(_received[0])


@contextlib.contextmanager
def wins() -> Iterator[None]:
    """Raise the stop this process got in place of any other error that ends the block: a
    stop raised inside a native library's call back into Python can come back as another error
    (Keras's `predict` gave `SystemError: Objects/listobject.c:338: bad argument to internal
    function`), and the work was stopped, not failed: its run ends KILLED, as after `held`."""
    try:
        yield
    except Exception as error:
        stop = requested()
        if stop is None:
            raise
        raise stop from error


def _ignore_later(signum: int, frame) -> None:
    """A stop signal while an earlier one is being handled (see `shield`)."""


def _stop(signum: int, frame) -> None:
    shield()
    _received.append(signum)
    for hook in list(_before_stopping):
        hook(signum)
    if not _held:
        raise Stopped(signum)


def descendants(pid: int | None = None) -> list[int]:
    """The live processes below `pid` (default: this one), children first; Linux's /proc,
    elsewhere none."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [pid or os.getpid()]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def forward(signum: int, pids: list[int]) -> None:
    """Send `signum` to each of `pids` that is still alive."""
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            os.kill(pid, signum)


SWEEP_PID = "DIGITCNN_SWEEP_PID"  # the sweep's own process, for its launcher's workers
_watching: list[int] = []


def stop_when_gone(pid: int, every: float = 1.0) -> None:
    """In a launcher's worker: once process `pid` (the sweep's) is gone, killed without a
    word to its workers (SIGKILL, the OOM killer), stop this process as SIGTERM would (its
    job's run ends KILLED), and end it if that has not within GRACE_SECONDS. Once per
    process."""
    if _watching:
        return
    _watching.append(pid)

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive, another user's: not ours to watch
                continue
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_SECONDS + 5)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="digitcnn-sweep-watch", daemon=True).start()
