"""Named fault points: where a test stops a run exactly, instead of sleeping until a signal
probably lands.

A run passes `point(NAME)` at each boundary between the steps of its life (see
digitcnn.tracking.ledger): `opened`, `epoch-N` (epoch N checkpointed and handed to the
recorder), `trained`, `tested`, `model`, `results`, `closed`; and, inside an epoch,
`mid-epoch-N` (after half of epoch N's batches). A job of a sweep on Slurm passes `started`
first, once its stop signals are in place, before Hydra composes its config (its `@jobN` is
Hydra's job number; the others' is a search's trial number). A point does
nothing unless the environment variable DIGITCNN_FAULT names it:

    DIGITCNN_FAULT=tested:SIGKILL           # killed once the test metrics are recorded
    DIGITCNN_FAULT=epoch-2:SIGTERM@job1     # in a sweep, job 1 only (a search's trial 1)
    DIGITCNN_FAULT=mid-epoch-2:HOLD         # waits there (see below)
    DIGITCNN_FAULT=opened:HOLD@job0,epoch-2:HOLD@job1   # several, each fired once

The point first waits until the records handed over so far are written (`settle`, the
recorder's), so that "after tested" means the store has them; then the process sends itself
the signal. A SIGTERM then takes the path any SIGTERM takes (digitcnn.core.stops); a SIGKILL
ends the process on the spot, as the kernel's OOM killer or a scheduler's last word would.

HOLD is for what happens from outside: the process writes its pid to the file
`held-POINT` (`held-POINT-jobN` for job N) in the folder named by DIGITCNN_FAULT_HOLD and waits
there, exactly at the point, until that file is removed (the test's "go on") or a signal stops
it (the test's SIGTERM, its sweep's watch, a scheduler).
So a test kills a sweep, a recorder or a server while a job is known to be mid-epoch, with no
slow run and no sleep.

Only tests set these variables; a user's run reads nothing else of this module.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

ENV = "DIGITCNN_FAULT"
HOLD_FOLDER_ENV = "DIGITCNN_FAULT_HOLD"
HOLD = "HOLD"


def _armed() -> list[tuple[str, str, int | None]]:
    """The faults asked for: (point, signal name or HOLD, job number or None for any job)."""
    armed = []
    for spec in os.environ.get(ENV, "").split(","):
        where, _, how = spec.strip().partition(":")
        if not where:
            continue
        how, _, job = how.partition("@job")
        how = how or "SIGKILL"
        if how != HOLD:
            signal.Signals[how]  # a KeyError names a signal that does not exist
        armed.append((where, how, int(job) if job else None))
    return armed


def armed_inside_epochs() -> bool:
    """Whether an armed point is one inside an epoch (`mid-epoch-N`): only then does
    training watch its batches."""
    return any(where.startswith("mid-epoch-") for where, _, _ in _armed())


def spec(where: str, how: str, job: int | None = None) -> str:
    """The DIGITCNN_FAULT entry for point `where`, signal name or HOLD `how`, job `job`."""
    return f"{where}:{how}" if job is None else f"{where}:{how}@job{job}"


def hold_file(folder: Path, name: str, job: int | None = None) -> Path:
    """The file a process held at point `name` (of job `job`) waits on."""
    return folder / (f"held-{name}" if job is None else f"held-{name}-job{job}")


def point(name: str, settle: Callable[[], object] | None = None, job: int | None = None) -> None:
    """A boundary named `name` (of sweep job `job`, if in a sweep): fire the fault armed here,
    after `settle()` has made the records handed over so far durable."""
    armed = _armed()
    fault = next((f for f in armed if f[0] == name and f[2] in (None, job)), None)
    if fault is None:
        return
    _, how, only_job = fault
    if settle is not None:
        settle()
    armed.remove(fault)  # once: a resume in this process, or a later job, goes on
    os.environ[ENV] = ",".join(spec(*other) for other in armed)
    if how == HOLD:
        _hold(hold_file(Path(os.environ[HOLD_FOLDER_ENV]), name, only_job))
    else:
        os.kill(os.getpid(), signal.Signals[how])


def _hold(release: Path) -> None:
    """Say where this process is (its pid in `release`, written whole), then wait until the
    file is gone; a stop signal ends the wait as it would end an epoch."""
    partial = release.with_name(f".{release.name}.{os.getpid()}")
    partial.write_text(str(os.getpid()))
    partial.replace(release)
    while release.exists():
        time.sleep(0.02)
