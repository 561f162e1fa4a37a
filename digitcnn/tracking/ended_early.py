"""What a run that could not finish tells its user: one line, saying what was recorded and how
to go on (a stop signal, a full disk, a tracking server that stayed away, a dead recorder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digitcnn.core import stops
from digitcnn.core.disk import is_disk_full, where_full
from digitcnn.core.errors import DiskFull, RecorderGone, TrackingUnavailable


class Explained:
    """Around an open run: turns the ways it can end early into one line each. Set
    `recorder` once the run is open; it says how the run was ended (`ended`)."""

    def __init__(
        self, output_dir: Path, epochs: int, store_folders: list[Path], in_sweep: bool = False
    ) -> None:
        self.output_dir, self.epochs = Path(output_dir), epochs
        self.store_folders = store_folders  # where else the run writes: its store, TMPDIR
        self.in_sweep = in_sweep  # then the sweep is resumed, not the job (its line says how)
        self.recorder: Any = None

    def __enter__(self) -> Explained:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        folder = self.output_dir
        if isinstance(exc, TrackingUnavailable):
            raise TrackingUnavailable(
                f"{exc}; the trained epochs are checkpointed in {folder}: once the server is "
                f"back, `python -m digitcnn.run resume={folder}` records them"
            ) from None
        if isinstance(exc, RecorderGone):
            raise RecorderGone(
                f"{exc}; the trained epochs are checkpointed in {folder}: "
                f"`python -m digitcnn.run resume={folder}` records them and finishes the run"
            ) from None
        if isinstance(exc, KeyboardInterrupt):
            stopped = stops.as_stopped(exc)
            stopped.outcome = self._stopped()
            raise stopped.with_traceback(None) from None
        if is_disk_full(exc):
            raise DiskFull(self._disk_full(exc)) from exc
        return False

    def _done(self) -> int:
        from digitcnn.training.checkpoint import DamagedCheckpoint, read_checkpoint

        try:
            checkpoint = read_checkpoint(self.output_dir)
        except DamagedCheckpoint:
            return 0
        return checkpoint.epoch if checkpoint else 0

    def _run_state(self, default: str) -> str:
        if self.recorder is None:
            return "no run was opened"
        ended = getattr(self.recorder, "ended", None)
        state = f"ended {ended}" if ended else f"is left RUNNING ({default})"
        return f"run {self.recorder.run_id} {state}"

    def _how_to_go_on(self, done: int) -> str:
        if self.in_sweep:
            resume = "resuming the sweep (`resume=` its folder)"
            again = f"{resume} runs it again"
        else:
            resume = f"`python -m digitcnn.run resume={self.output_dir}`"
            again = "start it again"
        if done == 0:
            return f"{again} (no epoch was checkpointed)"
        if done >= self.epochs:
            return f"{resume} tests and records its {done} checkpointed epochs"
        return f"{resume} continues after epoch {done} of {self.epochs}"

    def _stopped(self) -> str:
        if getattr(self.recorder, "ended", None) == "FINISHED":  # the stop came as it closed
            return f"run {self.recorder.run_id} ended FINISHED: its record is whole"
        return (
            f"{self._run_state('its recorder did not answer in time')}; "
            f"{self._how_to_go_on(self._done())}"
        )

    def _disk_full(self, exc: BaseException) -> str:
        what, remedy = where_full(exc, [self.output_dir, *self.store_folders])
        return (
            f"{what}; {self._run_state('the store could not be written')}; "
            f"{remedy}, then {self._how_to_go_on(self._done())}"
        )
