"""Which Keras backend a job runs on, what device it has, and the trainer settings that suit it.

`backend=` (tensorflow | jax | torch) sets `KERAS_BACKEND` before Keras is first imported. Speed
settings measured on one backend and device (batches per compiled call, thread counts,
precision, XLA) are applied only there: a trainer config names where its settings were tuned
(`trainer.tuned_for`, e.g. `tensorflow-cpu`), and elsewhere those keys go back to the
backend's own choices, with the reason recorded in the run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
from functools import cache
from pathlib import Path
from typing import ClassVar

from omegaconf import DictConfig, OmegaConf

from digitcnn.core.config import Config
from digitcnn.core.config_groups import TrainerConfig
from digitcnn.core.errors import InputError

# The keys whose best value depends on the backend and device, and each backend's own choice.
NEUTRAL = {
    "steps_per_execution": 1,
    "intra_op_threads": 0,
    "inter_op_threads": 0,
    "precision": "float32",
    "jit_compile": "auto",
}


def _not_a_missing_tpu_notice(record: logging.LogRecord) -> bool:
    return "Unable to initialize backend" not in record.getMessage()


def select_backend(name: str) -> None:
    """Make `name` Keras's backend: set before Keras is imported, or check that it is the one
    already imported (a process runs one backend; sweep backends with a launcher that starts a
    process per job)."""
    if name in ("jax", "torch"):  # also a resumed run's recorded backend
        from digitcnn.core.extras import require

        require(name, f"backend={name}")
    if name == "jax":  # JAX looks for a TPU runtime and says so when there is none
        logging.getLogger("jax._src.xla_bridge").addFilter(_not_a_missing_tpu_notice)
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = name
        return
    running = sys.modules["keras"].backend.backend()
    if running != name:
        raise InputError(
            f"backend={name} is not allowed here: this process already runs Keras on "
            f"{running}; start a new process (or hydra/launcher=joblib for a sweep over backends)"
        )


@cache
def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def accelerator() -> str | None:
    """The name of the first GPU the running backend sees, or None (CPU only)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform != "cpu"]
        return gpus[0].device_kind if gpus else None
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def platform_name(backend: str) -> str:
    """`tensorflow-cpu`, `jax-gpu`, …: what `trainer.tuned_for` names."""
    return f"{backend}-{'gpu' if accelerator() else 'cpu'}"


def device_name() -> str:
    """The device a job trains on, for its record: the GPU's name, else the CPU's."""
    return accelerator() or cpu_name()


def settings_for(cfg: TrainerConfig, backend: str) -> tuple[TrainerConfig, str]:
    """The trainer settings to use on `backend` (and this device), and why: settings tuned
    for another backend or device are replaced by NEUTRAL where they differ."""
    here = platform_name(backend)
    changes: dict[str, object] = {}
    if cfg.tuned_for and cfg.tuned_for != here:
        changes = {k: v for k, v in NEUTRAL.items() if getattr(cfg, k) != v}
        reason = f"trainer tuned for {cfg.tuned_for}, running on {here}"
    else:
        reason = f"trainer tuned for {cfg.tuned_for}" if cfg.tuned_for else "as configured"
    if changes:
        shown = ", ".join(f"{k}={v}" for k, v in changes.items())
        reason += f": {shown} (the backend's own choices)"
    return dataclasses.replace(cfg, **changes), reason


def as_run_here(typed: Config) -> tuple[Config, str]:
    """The config with the trainer settings this backend and device run, and why."""
    trainer, tuning = settings_for(typed.trainer, typed.backend)
    return dataclasses.replace(typed, trainer=trainer), tuning


def thread_share(trainer: TrainerConfig, launcher: DictConfig) -> tuple[int, int]:
    """(intra, inter) op threads: as configured, or this job's share of the CPUs when a
    launcher runs several jobs at once (2 jobs on 2 cores: 1 thread each; on Ray and Slurm
    the CPUs each job reserves)."""
    if trainer.intra_op_threads or trainer.inter_op_threads:
        return trainer.intra_op_threads, trainer.inter_op_threads
    reserved = OmegaConf.select(launcher, "ray.remote.num_cpus") or OmegaConf.select(
        launcher, "cpus_per_task"
    )
    if reserved:
        return max(1, int(reserved)), 1
    parallel = int(launcher.get("n_jobs") or 1)
    if parallel <= 1:
        return 0, 0
    return max(1, len(os.sched_getaffinity(0)) // parallel), 1


def resolved_jit(jit_compile: str) -> bool | str:
    """`trainer.jit_compile` as Keras takes it: True, False or "auto" (Keras's per-backend
    choice: XLA on JAX, none on torch, none on a CPU-only TensorFlow)."""
    return {"true": True, "false": False}.get(jit_compile, "auto")


class CompilationCache:
    """JAX's persistent cache of compiled programs in `folder`: a process that compiles what
    another one compiled before (the next job of a sweep, a rerun) loads it instead. Counts
    its hits and misses for the run's record. Other backends keep no such cache."""

    _EVENTS: ClassVar[dict[str, str]] = {
        "/jax/compilation_cache/cache_hits": "compilation_cache_hits",
        "/jax/compilation_cache/cache_misses": "compilation_cache_misses",
    }

    def __init__(self, folder: Path) -> None:
        import jax

        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # JAX caches only programs that took over a second to compile by default; a sweep's
        # small models compile faster than that and would never be cached.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        self.counts = dict.fromkeys(self._EVENTS.values(), 0)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_event(self, event: str, **kwargs) -> None:
        if event in self._EVENTS:
            self.counts[self._EVENTS[event]] += 1
