"""Per-epoch checkpoints in a run's output folder: their files, and reading them back to
resume (without Keras: a resume with nothing left to train never imports it). They are written
by digitcnn.training.checkpointing.

A checkpoint is `checkpoint/epoch-NNN.keras` (weights and optimizer state) plus its state,
`checkpoint/epoch-NNN.json` (epochs done, history so far, Python and NumPy RNG states, the
MLflow run id), copied to `checkpoint/state.json` for the latest. Each is written under a
temporary name and renamed once whole (digitcnn.core.disk), the model file first, so a state
always names a complete model file, also after a full disk.

The previous epoch's checkpoint is kept until the next one is whole: a checkpoint damaged
afterwards (a disk error, a file cut by hand) makes a resume fall back to the one before it,
with a line saying so. Files a killed save left under temporary names are removed at the next
save (one process writes a run's folder: digitcnn.core.writer_lock).
"""

from __future__ import annotations

import json
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "checkpoint"
STATE = "state.json"
KEPT = 2  # checkpoints kept: the latest, and the one to fall back to
log = logging.getLogger("digitcnn")


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


class DamagedCheckpoint(Exception):
    """Every checkpoint of a run is damaged (no state reads, or no model file opens)."""


def _states(folder: Path) -> list[Path]:
    """The state files to try, newest first: each epoch's, then the latest's copy (all a
    checkpoint written before each epoch had its own state has)."""
    numbered = [p for p in folder.glob("epoch-*.json") if epoch_of(p) is not None]
    return [*sorted(numbered, key=epoch_of, reverse=True), folder / STATE]


def epoch_of(path: Path) -> int | None:
    """The epoch an `epoch-NNN.keras` or `epoch-NNN.json` file belongs to; None for others."""
    number = path.stem.removeprefix("epoch-")
    return int(number) if number.isdigit() else None


def _usable(folder: Path, path: Path) -> tuple[dict | None, str]:
    """A state file's content if it and its model file are whole; else None and why not."""
    try:
        state = json.loads(path.read_text())
        model_file = folder / state["model_file"]
        int(state["epoch"]), state["history"], state["run_id"], state["rng"]
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__})"
    if not model_file.is_file():
        return None, f"{model_file.name} is missing"
    try:
        with zipfile.ZipFile(model_file) as archive:  # a .keras file is a zip: a cut one fails
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return None, f"{model_file.name} is damaged ({exc})"
    if bad is not None:
        return None, f"{model_file.name} is damaged ({bad} does not match its checksum)"
    return state, ""


def read_checkpoint(output_dir: Path) -> Checkpoint | None:
    """The last whole checkpoint in a run's output folder; None when it has none. A damaged
    latest checkpoint falls back to the one before it, with a line saying so;
    `DamagedCheckpoint` when none is whole."""
    folder = Path(output_dir) / FOLDER
    damaged = []
    for path in _states(folder):
        state, why = _usable(folder, path)
        if state is None:
            if why and why not in damaged:
                damaged.append(why)
            continue
        if damaged:
            log.warning(
                "checkpoint: %s; going on from epoch %d, the last whole checkpoint",
                "; ".join(damaged),
                state["epoch"],
            )
        return Checkpoint(
            folder=folder,
            epoch=int(state["epoch"]),
            model_file=folder / state["model_file"],
            history=state["history"],
            run_id=state["run_id"],
            rng=state["rng"],
        )
    if damaged:
        raise DamagedCheckpoint("; ".join(damaged))
    return None
