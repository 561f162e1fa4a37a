"""Train one model, or sweep many: `python -m digitcnn.run [-m] [overrides]`."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import traceback
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from digitcnn.core import paths, stops
from digitcnn.core.config import register_configs
from digitcnn.core.disk import is_disk_full
from digitcnn.core.errors import InputError
from digitcnn.core.extras import runs_jobs_elsewhere
from digitcnn.core.hydra_errors import hydra_errors_raised, one_line

register_configs()
# conf/hydra/launcher/ray.yaml sets the Ray launcher's defaults and is checked against the
# plugin's schema of the same name; Hydra 1.3 still does that, with a deprecation notice.
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")
log = logging.getLogger("digitcnn")
_LOADED = time.perf_counter()  # from here to the task function: Hydra's parsing and composition


@hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; the returned validation metric is what sweepers optimise."""
    from digitcnn.job import record_failed_job, run_job  # after Hydra parsed the command line

    compose_seconds = time.perf_counter() - _LOADED
    hydra_cfg = HydraConfig.get()
    try:
        return run_job(cfg, compose_seconds)
    except Exception as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("job #%s failed: %s", hydra_cfg.job.num, exc, exc_info=hydra_cfg.verbose)
            # A full disk beside the sweep would fail every job after this one; a Ray or
            # Slurm node's own disk says nothing of the other nodes'.
            if is_disk_full(exc) and not runs_jobs_elsewhere(hydra_cfg.launcher):
                raise stops.StoppedByFullDisk() from None
            # One failed job must not stop the sweep: its run is FAILED, the summary lists it.
            record_failed_job(cfg, exc)
            return float("nan")
        if hydra_cfg.verbose:
            raise
        if isinstance(exc, InputError):
            log.error("error: %s", exc)  # hydra.verbose=true shows the traceback
            sys.exit(2)
        if is_disk_full(exc):  # before the run opened: its job says more once it is open
            log.error("error: no space left on a disk this run writes to (%s); free space and "
                      "start it again: nothing was recorded", str(exc).splitlines()[0])  # fmt: skip
            sys.exit(2)
        raise


def cli() -> None:
    """The command: `main`, then a quick exit once everything is written.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP; see digitcnn.core.stops) ends the open run (and a
    sweep's) KILLED, prints one line saying how to go on, and exits with 128 + the signal.

    After the run, the atexit handlers (MLflow's, logging's) run, the other threads are joined
    and the streams flushed, as at any exit; then the process ends without Python's teardown of
    its modules, which takes about 2 s for TensorFlow and MLflow and writes nothing; so does a
    stopped process.
    """
    stops.install()
    try:
        with hydra_errors_raised():  # Hydra's refusals of the command line: one line, below
            main()
        status = 0
    except KeyboardInterrupt as exc:
        stops.shield()
        stopped = stops.close(exc)
        outcome = stopped.outcome or "before the run was opened: nothing was recorded"
        # The command's last word, not a job's: straight to the console (in a sweep, logging
        # still has the last job's format, `[job N] `)
        print(f"stopped by {stopped.name}: {outcome}", file=sys.stderr)
        status = stopped.exit_status
    except Exception as exc:  # the command's last word on any error
        refused = one_line(exc)
        if refused is None:  # not the command line's fault: the whole story
            traceback.print_exception(exc)
            status = 1
        else:
            print(f"error: {refused}", file=sys.stderr)
            status = 2
    except SystemExit as exc:  # Hydra's exit on errors, and ours
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:  # sys.exit("message"): printed, status 1, as Python does
            print(exc.code, file=sys.stderr)
            status = 1
    # What the interpreter does first at exit: threading's exit hooks (executors stop their
    # workers: joblib's loky), then every other non-daemon thread is joined; then atexit.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    cli()
