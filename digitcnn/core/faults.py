"""Named fault points: where a test stops a run exactly, instead of sleeping until a signal
probably lands.

A run passes `point(NAME)` at each boundary between the steps of its life (see
digitcnn.tracking.ledger): `opened`, `epoch-N` (epoch N checkpointed and handed to the
recorder), `trained`, `tested`, `model`, `results`, `closed`. A point does nothing unless
the environment variable DIGITCNN_FAULT names it:

    DIGITCNN_FAULT=tested:SIGKILL           # killed once the test metrics are recorded
    DIGITCNN_FAULT=epoch-2:SIGTERM@job1     # in a sweep, job 1 only (a search's trial 1)

The point first waits until the records handed over so far are written (`settle`, the
recorder's), so that "after tested" means the store has them; then the process sends itself
the signal. A SIGTERM then takes the path any SIGTERM takes (digitcnn.core.stops); a SIGKILL
ends the process on the spot, as the kernel's OOM killer or a scheduler's last word would.

Only tests set the variable; a user's run never reads more than this one variable.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

ENV = "DIGITCNN_FAULT"


def _armed() -> tuple[str, signal.Signals, int | None] | None:
    """The fault asked for: (point, signal, job number or None for any job)."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    where, _, how = spec.partition(":")
    how, _, job = how.partition("@job")
    return where, signal.Signals[how or "SIGKILL"], int(job) if job else None


def point(name: str, settle: Callable[[], object] | None = None, job: int | None = None) -> None:
    """A boundary named `name` (of sweep job `job`, if in a sweep): fire the fault armed here,
    after `settle()` has made the records handed over so far durable."""
    armed = _armed()
    if armed is None:
        return
    where, signum, only_job = armed
    if where != name or (only_job is not None and only_job != job):
        return
    if settle is not None:
        settle()
    os.environ.pop(ENV, None)  # once: a resume in this process, or a later job, goes on
    os.kill(os.getpid(), signum)
