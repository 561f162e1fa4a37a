"""What describes a run, without MLflow: redaction of secrets, flattened configs, the git
state, the library versions and a logged model's pinned requirements. The training process
imports this; only the recorder imports MLflow."""

from __future__ import annotations

import platform
import re
import subprocess
import urllib.parse
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(uri: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`: secrets never reach a record."""
    return _CREDENTIALS.sub("***@", uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI, or None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def local_folder(location: str) -> Path | None:
    """The folder of an artifact location on this machine (`file:` URIs, plain paths); None
    for any other (`mlflow-artifacts:/2`, `s3://...`)."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    return Path(location) if len(parts.scheme) <= 1 else None  # none, or a drive letter


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.dropout": "0.25", ...}; lists stay whole, as `[32, 64]`."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value)
    return flat


def git_state(folder: Path) -> dict[str, str]:
    """The commit and dirty flag of the checkout holding `folder`; empty outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


@cache  # the same for every run of a process; callers must not change it
def library_versions() -> dict[str, str]:
    import keras
    import sklearn

    versions = {
        "version.python": platform.python_version(),
        "version.keras": keras.__version__,
        "version.mlflow": metadata.version("mlflow"),  # without importing it (~1.5 s)
        "version.numpy": np.__version__,
        "version.scikit_learn": sklearn.__version__,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["version.tensorflow"] = tf.__version__
    return versions


def model_requirements(versions: Mapping[str, str]) -> list[str]:
    """Pinned pip requirements of a logged model: Keras, its backend and MLflow, as trained."""
    pins = {
        "keras": versions["version.keras"],
        "mlflow": versions["version.mlflow"],
        "numpy": versions["version.numpy"],
    }
    if "version.tensorflow" in versions:
        pins["tensorflow"] = versions["version.tensorflow"]
    return [f"{name}=={version}" for name, version in pins.items()]
