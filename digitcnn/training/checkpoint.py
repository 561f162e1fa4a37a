"""Per-epoch checkpoints in a run's output folder, and reading them back to resume.

A checkpoint is `checkpoint/epoch-NNN.keras` (weights and optimizer state) plus
`checkpoint/state.json` (epochs done, history so far, Python and NumPy RNG states, the MLflow
run id). Both are written under temporary names and renamed once whole (digitcnn.core.disk), the
model file first, so the state always names a complete model file, also after a full disk.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from digitcnn.core import stops
from digitcnn.core.disk import write_text_whole, written_whole

FOLDER = "checkpoint"
STATE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    epoch: int  # epochs completed
    model_file: Path
    history: dict[str, list[float]]
    run_id: str
    rng: dict[str, Any]

    def restore_rng(self) -> None:
        random.setstate((self.rng["python"][0], tuple(self.rng["python"][1]), None))
        kind, keys, pos, has_gauss, cached = self.rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _rng_state() -> dict[str, Any]:
    version, internal, _ = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal)],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint after every epoch into `output_dir/checkpoint/`."""

    def __init__(self, output_dir: Path, run_id: str, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.folder = Path(output_dir) / FOLDER
        self.run_id = run_id
        self.history = {k: list(v) for k, v in history.items()}  # epochs before this process

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        model_file = self.folder / f"epoch-{epoch + 1:03d}.keras"
        with written_whole(model_file) as partial, stops.held():  # see stops.held
            self.model.save(partial)
        state = {
            "epoch": epoch + 1,
            "model_file": model_file.name,
            "history": self.history,
            "run_id": self.run_id,
            "rng": _rng_state(),
        }
        write_text_whole(self.folder / STATE, json.dumps(state))
        for old in self.folder.glob("epoch-*.keras"):
            if old != model_file:
                old.unlink()


def read_checkpoint(output_dir: Path) -> Checkpoint | None:
    """The last completed checkpoint in a run's output folder, or None."""
    folder = Path(output_dir) / FOLDER
    try:
        state = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        return None
    return Checkpoint(
        folder=folder,
        epoch=int(state["epoch"]),
        model_file=folder / state["model_file"],
        history=state["history"],
        run_id=state["run_id"],
        rng=state["rng"],
    )
