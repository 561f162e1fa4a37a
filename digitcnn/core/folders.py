"""A Hydra callback that checks what Hydra is about to write, before it writes it.

Hydra creates a run's (or a sweep's) folder itself and answers a folder it cannot create with a
traceback; this check runs first and answers with one line naming the key, like any other bad
input; so is a command that needs an extra that is not installed (digitcnn.core.extras). Hydra
also writes the command's overrides and the config into that folder
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

from digitcnn.core.paths import ensure_writable


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


def _password_in(value: str) -> urllib.parse.SplitResult | None:
    """The URL `value`, if it carries a password (`scheme://user:password@host`)."""
    try:
        parts = urllib.parse.urlsplit(value)
        return parts if "://" in value and parts.password else None
    except ValueError:  # not a URL: nothing to hide in it
        return None


def check_no_password(config: DictConfig) -> None:
    """Exit 2 with one line if an override (`tracking.uri=...`, `hydra.sweeper.storage=...`)
    or the tracking URI from MLFLOW_TRACKING_URI carries a password: Hydra writes the
    overrides and the config into the run's folder, readable by every local user, and a
    command line shows in process lists and shell histories. Passwords belong in the
    environment: MLFLOW_TRACKING_PASSWORD for MLflow, PGPASSWORD or ~/.pgpass for a database."""
    overrides = [*config.hydra.overrides.task, *config.hydra.overrides.hydra]
    given = []  # (key, where its value came from, value)
    for override in overrides:
        key, _, value = override.partition("=")
        given.append((key.lstrip("+~"), "", value))
    uri = str(OmegaConf.select(config, "tracking.uri", default="") or "")
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        given.append(("tracking.uri", " (from MLFLOW_TRACKING_URI)", uri))
    for key, origin, value in given:
        parts = _password_in(value)
        if parts is None:
            continue
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        where = (
            "the user and password in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            if key == "tracking.uri"
            else "the password in the environment (PGPASSWORD or ~/.pgpass for PostgreSQL)"
        )
        print(
            f"error: {key}{origin} carries a password, which would be written to the run's "
            f"files: give {key}={bare} and {where}",
            file=sys.stderr,
        )
        sys.exit(2)


def check_extras(config: DictConfig) -> None:
    """Exit 2 with one line if the command needs an extra that is not installed."""
    from digitcnn.core.errors import InputError
    from digitcnn.core.extras import check_config

    try:
        check_config(config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_extras(config)
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_extras(config)
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir", config)
