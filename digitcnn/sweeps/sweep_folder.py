"""A sweep's folder names its parent run (`mlflow_parent_run_id`, written by the callback in
digitcnn.sweeps.parent_run): every job, in this process or on a launcher's worker or node, and
the search's sweeper find it there. Its own module, so that each of them depends on this file
and none on another."""

from __future__ import annotations

from pathlib import Path

from digitcnn.core.disk import write_text_whole

PARENT_RUN_FILE = "mlflow_parent_run_id"


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run of the sweep whose folder is `sweep_dir`, if the callback opened one."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


def write_parent_run_id(sweep_dir: str | Path, run_id: str) -> None:
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_whole(folder / PARENT_RUN_FILE, run_id)
