"""Writing a run's per-epoch checkpoints (their files: digitcnn.training.checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import keras
import numpy as np

from digitcnn.core import stops
from digitcnn.core.disk import write_text_whole, written_whole
from digitcnn.training.checkpoint import FOLDER, KEPT, STATE, epoch_of


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
        for left in self.folder.glob(".*.partial*"):  # a killed save's; never this one's
            left.unlink(missing_ok=True)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        name = f"epoch-{epoch + 1:03d}"
        model_file = self.folder / f"{name}.keras"
        with written_whole(model_file) as partial, stops.held():  # see stops.held
            self.model.save(partial)
        state = json.dumps(
            {
                "epoch": epoch + 1,
                "model_file": model_file.name,
                "history": self.history,
                "run_id": self.run_id,
                "rng": _rng_state(),
            }
        )
        write_text_whole(self.folder / f"{name}.json", state)
        write_text_whole(self.folder / STATE, state)
        for old in self.folder.glob("epoch-*.*"):  # earlier ones, and a superseded attempt's
            number = epoch_of(old)
            if number is not None and not epoch + 1 - KEPT < number <= epoch + 1:
                old.unlink()
