"""The optional extras of `pip install -e '.[EXTRA]'`, and the one-line error of a command
that needs one that is not installed: said before Hydra writes a folder, before any data is
read or any run is opened.

The core install runs `python -m digitcnn.run` on TensorFlow, sweeps on one machine (basic and
joblib launchers, Optuna), `predict`, `evaluate` and `mlflow ui`; `dev` installs every extra.
"""

from __future__ import annotations

import importlib.util

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from digitcnn.core.errors import InputError

# extra -> the modules it brings that digitcnn imports
EXTRAS = {
    "ray": ("ray", "hydra_plugins.hydra_ray_launcher"),
    "slurm": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "jax": ("jax",),
    "torch": ("torch",),
    "team": ("psycopg", "flask_wtf"),  # the PostgreSQL driver; MLflow's auth app
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package that is missing, or that fails to import
        return False


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """InputError naming `what` and the extra to install, if a module of it is missing."""
    if all(_installed(m) for m in modules or EXTRAS[extra]):
        return
    raise InputError(
        f"{what} needs digitcnn's '{extra}' extra, which is not installed: "
        f"pip install -c requirements.lock -e '.[{extra}]'"
    )


def _is_postgresql(uri: str | None) -> bool:
    return str(uri or "").startswith(("postgresql", "postgres:"))


def _target(launcher: DictConfig | None) -> str:
    """The class a launcher's config names (`hydra.launcher._target_`), or ""."""
    target = OmegaConf.select(launcher, "_target_", default="") if launcher is not None else ""
    return str(target or "")


def is_ray_launcher(launcher: DictConfig | None) -> bool:
    """Whether `launcher` (a config's `hydra.launcher`) is the Ray launcher, whose jobs run on
    Ray's nodes rather than beside the sweep."""
    return "hydra_ray_launcher" in _target(launcher)


def is_submitit_launcher(launcher: DictConfig | None) -> bool:
    """Whether `launcher` is a submitit launcher (`submitit_slurm`, `submitit_local`)."""
    return "submitit_launcher" in _target(launcher)


def runs_jobs_elsewhere(launcher: DictConfig | None) -> bool:
    """Whether `launcher` runs its jobs on other machines (Ray's nodes, a Slurm cluster's),
    where the sweep's process ids and disks say nothing."""
    if is_ray_launcher(launcher):
        return True
    return is_submitit_launcher(launcher) and _target(launcher).endswith("SlurmLauncher")


def check_config(config: DictConfig) -> None:
    """The extras that a composed config (launcher, backend, stores) needs, installed."""
    launcher = OmegaConf.select(config, "hydra.launcher", default=None)
    if is_ray_launcher(launcher) and config.hydra.mode == RunMode.MULTIRUN:
        require("ray", "hydra/launcher=ray")
    if is_submitit_launcher(launcher) and config.hydra.mode == RunMode.MULTIRUN:
        kind = "slurm" if runs_jobs_elsewhere(launcher) else "local"
        require("slurm", f"hydra/launcher=submitit_{kind}")
    backend = OmegaConf.select(config, "backend", default="tensorflow")
    if backend in ("jax", "torch"):
        require(backend, f"backend={backend}")
    for key in ("tracking.uri", "hydra.sweeper.storage"):
        uri = OmegaConf.select(config, key, default=None)
        if _is_postgresql(uri):
            require("team", f"{key}=postgresql://...", modules=("psycopg",))
