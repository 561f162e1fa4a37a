"""One writer per run: a lock on the run's output folder, held while a process trains it.

The process that starts a run and every process that continues it (`resume=`, a resumed
sweep's job) holds an exclusive `flock` on `<output folder>/writer.lock` for as long as it
writes the run. A second process is refused in one line naming the holder's host and process.
The kernel drops the lock when its holder ends, however it ends (SIGKILL, a crash, a power
cut), so a dead holder never locks a run. The folder holds the run's checkpoints, which any
continuation needs, so the lock reaches every process that could continue the run: those on
this machine, whatever tracking store they write to, and those on other machines that share the
folder through a filesystem with working locks (NFS v4, Lustre, GPFS).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from digitcnn.core.errors import InputError

LOCK_FILE = "writer.lock"
_HELD: dict[Path, int] = {}  # the folders this process holds, and their lock's descriptor

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer is then the user's to ensure
    fcntl = None


class RunBusy(InputError):
    """Another live process writes the run."""


def _none_held_in_child() -> None:
    """A forked child (a single run's recorder) writes no run: its copies of the locks'
    descriptors are closed, so the lock ends with its holder alone. Closed, never unlocked:
    `flock`'s unlock would drop the parent's lock too."""
    for fd in _HELD.values():
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no flock either
    os.register_at_fork(after_in_child=_none_held_in_child)


def _holder(fd: int, wait: float = 2.0) -> str:
    """Who holds the lock, as it wrote in the file. A holder that has just taken the lock may
    not have written yet (the file then names nobody, or the holder before, dead): read again
    for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            held = json.loads(os.pread(fd, 4096, 0) or b"{}")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["since"]))
            if not _gone(held):
                return f"process {held['pid']} on {held['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "another process"
        time.sleep(0.02)


def _gone(held: dict) -> bool:
    """Whether the process `held` names ran on this machine and has ended."""
    if held["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's: alive
        pass
    return False


@contextmanager
def writing(folder: Path, what: str) -> Iterator[None]:
    """Hold the run in `folder` for this process within the block; `RunBusy` naming the holder
    (and `what` asked: `resume=...`) if another process holds it."""
    folder = Path(folder).resolve()
    if fcntl is None or folder in _HELD:  # this process holds it already (a retried job)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(
                f"{what}: the run in {folder} is being written by {_holder(fd)}; a run is "
                "continued by one process at a time: wait for it to end, or stop it first"
            ) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        written = json.dumps(holder).encode()
        try:  # who holds it, for the refusal's line; the lock works without it (a full disk)
            os.pwrite(fd, written, 0)  # over the last holder's, never an empty file
            os.ftruncate(fd, len(written))
        except OSError:
            pass
        _HELD[folder] = fd
        try:
            yield
        finally:
            _HELD.pop(folder, None)
    finally:
        os.close(fd)  # releases the lock
