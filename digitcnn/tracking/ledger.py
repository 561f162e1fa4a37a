"""Which steps of a run's life are done: one record, in the run's output folder, that a
resumed run reads to do only what is left.

A run's life: opened, epochs 1..N, then `trained`, `tested`, `model`, `results`, closed.
Epochs are the checkpoint's (digitcnn.training.checkpoint); the run's MLflow status says
whether it closed. For the steps after training the ledger holds, in `steps/`:

- `NAME.json`, the step's intent: exactly what it records (params, tags, metrics with their
  timestamp), written whole before anything is sent;
- `NAME.done`, written by the recorder once MLflow took the whole step.

A step whose intent exists is replayed from it, never recomputed. MLflow keeps a metric as
(key, value, step, timestamp) and stores a row it already has once, params and tags keep one
value each, artifacts are files at fixed paths: a replayed step changes nothing that was
written, and adds what was not. The model step is repeatable another way: the recorder
looks up the run's logged model before logging one (digitcnn.tracking.runs). So a stop
anywhere, then `resume=`, leaves the record an uninterrupted run leaves, each step once.

Each file names the run it belongs to: a sweep's job that starts over in its folder does not
take its superseded attempt's steps for its own. No MLflow here: the training process writes
intents, the recorder (either process) marks steps done.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from digitcnn.core.disk import write_text_whole

FOLDER = "steps"
STEPS = ("trained", "tested", "model", "results")


class Ledger:
    """The steps of run `run_id`, whose output folder is `output_dir`."""

    def __init__(self, output_dir: Path, run_id: str) -> None:
        self.folder = Path(output_dir) / FOLDER
        self.run_id = run_id

    def done_file(self, step: str) -> Path:
        """The file the recorder writes once `step` is recorded whole (see `mark_done`)."""
        return self.folder / f"{step}.done"

    def intent_file(self, step: str) -> Path:
        return self.folder / f"{step}.json"

    def done(self, step: str) -> bool:
        return _read(self.done_file(step)).get("run_id") == self.run_id

    def intent(self, step: str) -> dict[str, Any] | None:
        """What `step` records, if it was decided already (by this run)."""
        found = _read(self.intent_file(step))
        return found if found.get("run_id") == self.run_id else None

    def write_intent(self, step: str, **records: Any) -> dict[str, Any]:
        """Decide what `step` records (`params`, `tags`, `metrics`, and anything the job needs
        to replay it), stamped now; returns it as it will be replayed."""
        intent = {"run_id": self.run_id, "timestamp": int(time.time() * 1000), **records}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_whole(self.intent_file(step), json.dumps(intent, sort_keys=True))
        return intent

    def left(self, skipping: tuple[str, ...] = ()) -> list[str]:
        return [step for step in STEPS if not self.done(step) and step not in skipping]

    def start_over(self) -> None:
        """Forget the steps of a finished run that `resume=` extends with more epochs: they
        are taken again, after its new epochs (its record keeps the earlier results as
        earlier values)."""
        for step in STEPS:
            self.done_file(step).unlink(missing_ok=True)
            self.intent_file(step).unlink(missing_ok=True)


def mark_done(done_file: Path, run_id: str) -> None:
    """Record that a step of run `run_id` is whole in MLflow (called by the recorder)."""
    done_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_whole(done_file, json.dumps({"run_id": run_id, "at": time.time()}))


def read_intent(intent_file: Path) -> dict[str, Any]:
    return _read(intent_file)


def _read(path: Path) -> dict[str, Any]:
    """A ledger file's content; {} when absent or damaged (the step is then not done, or is
    decided again: nothing of it can have been sent before its intent was whole)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
