"""`resume=` and `rerun=`: the config a job runs with when it continues or repeats a run.

- `resume=<run id | output folder>` continues an interrupted run from its last checkpoint,
  into the same MLflow run, with the config it was started with (only `trainer.epochs` may
  change). A run stopped after its last epoch, while it was tested and recorded, is tested
  and recorded from that epoch's checkpoint and closed.
- `rerun=<run id>` repeats a recorded run as a new run, from what MLflow recorded alone.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from digitcnn.core.config import schema_config
from digitcnn.core.errors import InputError
from digitcnn.core.writer_lock import writing

if TYPE_CHECKING:
    from digitcnn.training.checkpoint import Checkpoint

RESOLVED_CONFIG = "config.resolved.yaml"  # written into every run's output folder
# Overrides that may accompany resume=/rerun= (the rest would change what is repeated).
_ALLOWED = {"resume": {"resume", "trainer.epochs"}, "rerun": {"rerun"}}


@dataclass(frozen=True)
class JobSource:
    cfg: DictConfig  # what the job runs with
    checkpoint: Checkpoint | None = None  # resume from here
    rerun_of: str | None = None

    @property
    def epochs_done(self) -> int:
        """The epochs its checkpoint holds: 0 for a new run."""
        return self.checkpoint.epoch if self.checkpoint else 0


def _check_overrides(mode: str, overrides: list[str]) -> None:
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    extra = [
        o
        for o, k in zip(overrides, keys, strict=True)
        if k not in _ALLOWED[mode] and not k.startswith(("hydra.", "tracking."))
    ]
    if extra:
        allowed = " and ".join(sorted(_ALLOWED[mode] - {mode})) or "nothing else"
        raise InputError(
            f"{mode}= repeats a recorded config; {allowed} may change, not {' '.join(extra)}"
        )


def _client(cfg: DictConfig):
    from digitcnn.tracking import tracking_client

    return tracking_client(cfg.tracking.uri)


def _run_folder(cfg: DictConfig, target: str) -> Path:
    if Path(target).expanduser().is_dir():
        return Path(target).expanduser().resolve()
    try:
        run = _client(cfg).get_run(target)
    except Exception as exc:  # MLflow raises its own errors for unknown or malformed ids
        raise InputError(
            f"resume={target!r} is neither an output folder nor a run in {cfg.tracking.uri!r}"
        ) from exc
    return Path(run.data.tags["hydra.output_dir"])


def _finished(cfg: DictConfig, run_id: str) -> bool:
    """Whether the MLflow run `run_id` ended FINISHED (its test result and files recorded)."""
    return _client(cfg).get_run(run_id).info.status == "FINISHED"


def job_source(cfg: DictConfig, overrides: list[str], held: ExitStack) -> JobSource:
    """The config to run: the composed one, or the recorded one for resume=/rerun=. A resumed
    run is held for this process in `held` (see digitcnn.core.writer_lock) before its checkpoint
    is read."""
    if cfg.resume and cfg.rerun:
        raise InputError("resume= and rerun= cannot be combined")
    if cfg.resume:
        return _resume(cfg, overrides, held)
    if cfg.rerun:
        return _rerun(cfg, overrides)
    return JobSource(cfg)


def _resume(cfg: DictConfig, overrides: list[str], held: ExitStack) -> JobSource:
    from digitcnn.training.backends import select_backend

    _check_overrides("resume", overrides)
    folder = _run_folder(cfg, cfg.resume)
    if folder.is_dir():
        held.enter_context(writing(folder, f"resume={cfg.resume}"))
    recorded = folder / RESOLVED_CONFIG
    try:
        saved = OmegaConf.load(recorded) if recorded.is_file() else None
    except Exception as exc:  # a damaged file: OmegaConf's and YAML's errors alike
        raise InputError(
            f"resume={cfg.resume!r}: {recorded} cannot be read ({type(exc).__name__}); "
            "the run's config is lost: start it again, or rerun= its run"
        ) from None
    if saved is not None:  # Keras is imported on the run's own backend, not the command line's
        select_backend(saved.get("backend", "tensorflow"))
    from digitcnn.training.checkpoint import DamagedCheckpoint, read_checkpoint

    try:
        checkpoint = read_checkpoint(folder)
    except DamagedCheckpoint as exc:
        raise InputError(
            f"resume={cfg.resume!r}: no whole checkpoint in {folder / 'checkpoint'} ({exc}); "
            "the run cannot go on from it: start it again"
        ) from None
    if checkpoint is None or saved is None:
        raise InputError(f"resume={cfg.resume!r}: no checkpoint in {folder} (no epoch finished)")
    if any(o.startswith("trainer.epochs=") for o in overrides):
        saved.trainer.epochs = cfg.trainer.epochs
    if saved.trainer.epochs < checkpoint.epoch or (
        saved.trainer.epochs == checkpoint.epoch and _finished(cfg, checkpoint.run_id)
    ):
        raise InputError(
            f"trainer.epochs={saved.trainer.epochs} is not allowed: the run already has "
            f"{checkpoint.epoch} epochs; give more to continue"
        )
    # Equal and not finished: stopped while testing and recording; that is what is left.
    return _continued(saved, folder, checkpoint)


def _continued(saved: DictConfig, folder: Path, checkpoint: Checkpoint) -> JobSource:
    saved.paths.output_dir = str(folder)  # checkpoints go on in the run's own folder
    saved.resume = None
    return JobSource(schema_config(saved), checkpoint=checkpoint)


def continue_attempt(run, held: ExitStack) -> JobSource | None:
    """A sweep job's earlier, unfinished attempt (an MLflow run), continued from its last
    checkpoint, held for this process in `held`; None when it has none here (no epoch
    finished, or its folder is on a machine that is gone)."""
    from digitcnn.training.checkpoint import DamagedCheckpoint, read_checkpoint

    folder = Path(run.data.tags.get("hydra.output_dir", "/nonexistent"))
    if not folder.is_dir():
        return None
    held.enter_context(writing(folder, f"job {run.info.run_id}"))
    try:
        checkpoint = read_checkpoint(folder)
    except DamagedCheckpoint:  # logged: the job starts over
        return None
    if checkpoint is None or checkpoint.run_id != run.info.run_id:
        return None
    if not (folder / RESOLVED_CONFIG).is_file():
        return None
    return _continued(OmegaConf.load(folder / RESOLVED_CONFIG), folder, checkpoint)


def _rerun(cfg: DictConfig, overrides: list[str]) -> JobSource:
    _check_overrides("rerun", overrides)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = _client(cfg).download_artifacts(cfg.rerun, "config/config.yaml", tmp)
            saved = OmegaConf.load(path)
    except Exception as exc:  # unknown run, or one without a recorded config
        raise InputError(
            f"rerun={cfg.rerun!r}: no recorded config/config.yaml in {cfg.tracking.uri!r}"
        ) from exc
    # Where things live is this machine's business; what was trained is the record's.
    saved.paths = cfg.paths
    saved.tracking.uri = cfg.tracking.uri  # the record holds it redacted
    if "cache_dir" in saved.dataset:
        saved.dataset.cache_dir = cfg.paths.data_dir
    saved.rerun = None
    return JobSource(schema_config(saved), rerun_of=cfg.rerun)
