"""A Hydra callback that checks the output folder before Hydra uses it.

Hydra creates a run's (or a sweep's) folder itself and answers a folder it cannot create with a
traceback; this check runs first and answers with one line naming the key, like any other bad
input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from digitcnn.paths import ensure_writable


def check_writable(folder: Path, key: str, config: DictConfig) -> None:
    """Create `folder` and write a file in it, or exit 2 with one line naming `key` (and
    `paths.root_dir` when the folder was derived from an overridden root)."""
    try:
        ensure_writable(folder)
    except OSError as exc:
        root = str(config.paths.root_dir)
        origin = f" (from paths.root_dir={root!r})" if str(folder).startswith(root) else ""
        reason = exc.strerror or type(exc).__name__
        print(f"error: {key}={str(folder)!r}{origin} cannot be written: {reason}", file=sys.stderr)
        sys.exit(2)  # Hydra would turn an exception here into a warning


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir", config)
