"""Sweeps on Slurm through submitit (`hydra/launcher=submitit_slurm`, and `submitit_local`):
what digitcnn adds to hydra-submitit-launcher's launchers (hydra_plugins/
digitcnn_submitit_launcher), so that a job Slurm stops comes back and continues its own run.

In a job, on its node (`run_in_job`):
- Slurm's warning, USR2 (on preemption, or `signal_delay_s` before the time limit), stops the
  job as SIGTERM does: its run ends KILLED, every whole epoch checkpointed. Then submitit
  requeues the job (`scontrol requeue`) with the same overrides into the same folder, where the
  next attempt finds the run and continues it: same run id, no epoch twice. submitit counts a
  warning that comes after 80% of the time limit as a time-out and gives up after
  `max_num_timeout` of them.
- SIGTERM (`scontrol requeue`, the end of a preemption's grace, `scancel`): the run ends KILLED
  the same way. The job writes no result: the sweep waits for the requeued attempt, or learns
  from `sacct` that the job was cancelled.
- Either way the job's log ends with one line, never a traceback. A stopped job must never
  return or raise an Exception: the launcher would take it as done.

In the sweep's process (`launch`):
- a job cancelled, or out of requeues: the sweep waits for its other jobs to end, then stops as
  on a signal (its parent run KILLED, one line; `resume=` its folder finishes it on Slurm);
- a stop signal to the sweep cancels its jobs (their runs end KILLED) and waits for them.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from digitcnn.core import faults, stops

# How long a stopped sweep waits for its cancelled jobs to end: past Slurm's default KillWait
# (30 s), after which Slurm kills what its SIGTERM did not stop.
JOBS_END_SECONDS = 45.0
UNANSWERED_SECONDS = 300.0  # how long a sweep waits on a Slurm controller that does not answer
POLL_SECONDS = 2.0


def run_in_job(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)` (the launcher's job: Hydra's run of digitcnn's task, `args[2]` its number)
    with Slurm's warning as a stop; after a stop, one line and an exit without a result
    (requeued first on USR2)."""
    # First thing: submitit ignores SIGTERM (it logs it and goes on), so a job cancelled while
    # Hydra composes its config would open its run anyway and be killed in it, leaving it open.
    stops.install()
    requeue = stops.add_stop_signal(signal.SIGUSR2)  # submitit's checkpoint_and_try_requeue
    # submitit logs each SIGCONT (which Slurm sends with every requeue and cancel) from its
    # handler: a log write that interrupts another fails as reentrant, with a traceback.
    signal.signal(signal.SIGCONT, signal.SIG_DFL)
    # Hydra's notice for conf/hydra/launcher/submitit_slurm.yaml (the plugin's schema checks it),
    # filtered in the sweep's process by digitcnn.run, here in each job's
    warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")
    try:
        faults.point("started", job=args[2])
        return call(*args)
    except stops.Stopped as stop:
        stops.shield()
        said = stop.outcome or "no run was opened"
        if stop.signum == signal.SIGUSR2 and callable(requeue):
            _say(f"stopped by SIGUSR2 (preempted, or its time limit is near): {said}; "
                 "the job is requeued and continues it")  # fmt: skip
            requeue(signal.SIGUSR2, None)  # exits; an UncompletedJobError when out of requeues
        else:
            _say(f"stopped by {stop.name}: {said}; a job Slurm requeued continues it by itself")
        raise SystemExit(stop.exit_status) from None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def launch(launcher: Any, launch_jobs: Callable, job_overrides: Sequence, first: int) -> list:
    """The launcher's `launch_jobs(job_overrides, first)`; a job that ended without a result
    (cancelled, out of requeues, killed) stops the sweep once the others have ended. On Slurm
    only: `submitit_local`'s jobs are this process's children, stopped as a joblib worker is
    (digitcnn.sweeps.parent_run), and its folders are named by process ids, not Slurm's."""
    from submitit.core.utils import UncompletedJobError

    on_slurm = getattr(launcher, "_EXECUTOR", None) == "slurm"
    folder = _jobs_folder(launcher)
    unhook = stops.before_stopping(lambda signum: _cancel(folder)) if on_slurm else lambda: None
    try:
        return launch_jobs(job_overrides, first)
    except UncompletedJobError as error:
        what = _what_ended(str(error), on_slurm)
        if on_slurm:
            _say(f"sweep: {what}; waiting for its other jobs to end")
            _wait_ended(folder, deadline=None)
        raise stops.StoppedByScheduler(what) from None
    finally:
        unhook()


def _jobs_folder(launcher: Any) -> Path:
    """Where submitit keeps one folder per job (`<job id>_<array task>`), for this sweep."""
    pattern = str(launcher.params["submitit_folder"])
    return Path(pattern.split("%", 1)[0]).resolve()


def _job_ids(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name))


def _unended(folder: Path) -> list[str] | None:
    """The jobs of the sweep that Slurm still lists (pending, running, requeued, completing);
    None when Slurm did not answer (a busy controller): not known to have ended."""
    ids = _job_ids(folder)
    if not ids:
        return []
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:  # none of them known any more (purged after MinJobAge): ended
        return [] if "Invalid job id" in listed.stderr else None
    return listed.stdout.split()


def _cancel(folder: Path) -> None:
    """Cancel the sweep's jobs (SIGTERM: their runs end KILLED) and wait for them to end:
    a job is ended once Slurm has killed what its SIGTERM did not stop (after KillWait)."""
    ids = _job_ids(folder)
    if not ids:
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # an ended job: refused, harmless
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    _wait_ended(folder, deadline=time.monotonic() + JOBS_END_SECONDS, every=POLL_SECONDS / 4)


def _wait_ended(folder: Path, deadline: float | None, every: float = POLL_SECONDS) -> None:
    """Wait until Slurm lists none of the sweep's jobs, or until `deadline` (None: as long as
    they run); a controller that has not answered for UNANSWERED_SECONDS ends the wait, with a
    line."""
    unanswered_since = None
    while deadline is None or time.monotonic() < deadline:
        listed = _unended(folder)
        if listed == []:
            return
        if listed is not None:
            unanswered_since = None
        elif unanswered_since is None:
            unanswered_since = time.monotonic()
        elif time.monotonic() - unanswered_since > UNANSWERED_SECONDS:
            _say(f"sweep: Slurm did not answer `squeue` for {UNANSWERED_SECONDS:.0f} s; "
                 "not waiting longer for its jobs to end")  # fmt: skip
            return
        time.sleep(every)


def _what_ended(message: str, on_slurm: bool) -> str:
    """One line from submitit's error for a job without a result (on `submitit_local`, whose
    job ids are process ids, a job that ended so was killed: it had no stop to say)."""
    job = re.search(r"Job (\S+)", message)
    if not on_slurm:
        where = f"in process {job.group(1)} " if job else ""
        return f"the job {where}ended without a result (killed)"
    name = f"Slurm job {job.group(1)}" if job else "a Slurm job"
    if "timed-out too many times" in message:
        return f"{name} reached its time limit more often than max_num_timeout allows"
    state = re.search(r"state: ([A-Z_]+)", message)
    return f"{name} ended {state.group(1) if state else 'without a result'}"
