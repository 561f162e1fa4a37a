"""Where the configs and the project's files live, in a checkout or after `pip install`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # digitcnn/, above core/
_CHECKOUT_DIR = PACKAGE_DIR.parent


def _in_checkout() -> bool:
    return (_CHECKOUT_DIR / "pyproject.toml").is_file() and (_CHECKOUT_DIR / "conf").is_dir()


def config_dir() -> Path:
    """The `conf/` folder: the checkout's, or the copy a wheel ships inside the package."""
    return _CHECKOUT_DIR / "conf" if _in_checkout() else PACKAGE_DIR / "conf"


def experiments_dir() -> Path:
    """The `experiments/` folder of named recipes, found the same way as `conf/`."""
    return _CHECKOUT_DIR / "experiments" if _in_checkout() else PACKAGE_DIR / "experiments"


def project_root() -> Path:
    """The absolute folder that holds the MLflow store, outputs and data cache.

    `DIGITCNN_ROOT` wins; otherwise the checkout's root, or `~/digitcnn` for an installed
    package. It never depends on the folder a run is launched from.
    """
    if env := os.environ.get("DIGITCNN_ROOT"):
        return Path(env).expanduser().resolve()
    return _CHECKOUT_DIR if _in_checkout() else Path.home() / "digitcnn"


def ensure_writable(folder: Path) -> None:
    """Create `folder` (and its parents) and write a throwaway file in it; raises OSError when
    either cannot be done."""
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()
