"""A Hydra callback that checks what Hydra is about to write, before it writes it.

Hydra creates a run's (or a sweep's) folder itself and answers a folder it cannot create with a
traceback; this check runs first and answers with one line naming the key, like any other bad
input. Hydra also writes the command's overrides and the config into that folder
(`.hydra/`), readable by every local user: a tracking URI that carries a password is refused
here, before any of it is written.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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


def check_no_password(config: DictConfig) -> None:
    """Exit 2 with one line if the tracking URI (an override, a recipe, or
    MLFLOW_TRACKING_URI) carries a password: it would be written to the run's folder, shown in
    process lists and shell histories. The password belongs in the environment."""
    uri = str(OmegaConf.select(config, "tracking.uri", default="") or "")
    try:
        parts = urllib.parse.urlsplit(uri)
        password = parts.password
    except ValueError:  # not a URL: nothing to hide in it
        return
    if password:
        origin = (
            " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
        )
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        print(
            f"error: tracking.uri{origin} carries a password, which would be written to the "
            f"run's files: give tracking.uri={bare} and the user and password in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
            file=sys.stderr,
        )
        sys.exit(2)


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir", config)
