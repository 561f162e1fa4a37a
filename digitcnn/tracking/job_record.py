"""What a job's run says about the job: its name, tags, params and config, the files of its
results, its Hydra log, and the lines that tell its user where it went. MLflow calls go
through the recorder the job hands in (`digitcnn.tracking.runs.Recorder` or its process)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from digitcnn.core.config import Config
from digitcnn.core.config_groups import MAX_RUN_NAME
from digitcnn.data import Dataset
from digitcnn.evaluation import figures
from digitcnn.evaluation.metrics import Evaluation
from digitcnn.models.families import trainable_parameters
from digitcnn.tracking import describe
from digitcnn.tracking.describe import redact
from digitcnn.training.backends import device_name, platform_name
from digitcnn.training.batching import steps_per_epoch

log = logging.getLogger("digitcnn")


def run_name(typed: Config, overrides: list[str]) -> str:
    """`tracking.run_name`, else the overrides that say what this run changed."""
    if typed.tracking.run_name:
        return typed.tracking.run_name
    shown = ",".join(o for o in overrides if not o.startswith(("hydra.", "tracking.")))
    if len(shown) > MAX_RUN_NAME:  # MLflow's limit; the overrides tag keeps them all
        shown = shown[: MAX_RUN_NAME - 1] + "…"
    return shown or "default"


def summary_lines(typed: Config) -> list[str]:
    """The config groups' choices and values, one line each, for the job's log."""
    cfg = OmegaConf.structured(typed)
    lines = []
    for group in ("dataset", "model", "optimizer", "trainer"):
        values = ", ".join(f"{k}={v}" for k, v in cfg[group].items() if k != "name")
        name = cfg[group].get("name", "")
        lines.append(f"  {group:<9} {name + ': ' if name else ''}{values}")
    return [*lines, f"  seed      {typed.seed}"]


def tags(
    typed: Config, data: Dataset, overrides: list[str], hydra_cfg: DictConfig, parent: str | None
) -> dict[str, str]:
    """The run's tags: its code, command, data, overrides, machine and labels."""
    found = {
        **describe.git_state(Path(typed.paths.root_dir)),
        "hydra.output_dir": typed.paths.output_dir,
        "command": redact(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "dataset.digest": data.digest,
        "validation_set": "test" if data.validation_is_test else "holdout",
        "overrides": json.dumps([redact(o) for o in overrides]),
    }
    if parent:
        found["sweep.job"] = str(hydra_cfg.job.num)
    if typed.debug.mode != "none":
        found["debug"] = typed.debug.mode
    local = hydra_cfg.runtime.choices.get("local")
    if local and _in_search_path(hydra_cfg, f"local/{local}.yaml"):  # applied, not just named
        found["local_config"] = f"local/{local}.yaml"
    return found | node_tags() | {label: "true" for label in typed.tags}


def _in_search_path(hydra_cfg: DictConfig, name: str) -> bool:
    """Whether a config file `name` exists in one of Hydra's config folders. Hydra reports an
    optional group's option (`optional local: default`) as chosen also when its file is
    absent."""
    for source in hydra_cfg.runtime.config_sources:
        if source.schema == "file" and (Path(source.path) / name).is_file():
            return True
        if source.schema == "pkg":
            from importlib.resources import files

            with contextlib.suppress(ModuleNotFoundError):
                if files(source.path.replace("/", ".")).joinpath(name).is_file():
                    return True
    return False


# Slurm's variables in a job -> the run's tags that say where it ran (the latest attempt's)
SLURM_TAGS = {
    "SLURM_JOB_ID": "slurm.job_id",
    "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm.array_task_id",
    "SLURMD_NODENAME": "slurm.node",
    "SLURM_JOB_PARTITION": "slurm.partition",
    "SLURM_RESTART_COUNT": "slurm.restart_count",
}


def node_tags() -> dict[str, str]:
    """The machine that ran the job: its host name, its Ray node inside a Ray worker, its
    Slurm job, node and restarts inside a Slurm job."""
    import socket

    found = {"host": socket.gethostname()}
    if "SLURM_JOB_ID" in os.environ:
        found["slurm.restart_count"] = "0"  # a first attempt has no SLURM_RESTART_COUNT
        found |= {tag: os.environ[var] for var, tag in SLURM_TAGS.items() if os.environ.get(var)}
    ray = sys.modules.get("ray")  # imported only where a Ray launcher runs the job
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        found["ray.node_id"] = context.get_node_id()
        found["ray.node_ip"] = ray.util.get_node_ip_address()
        gpus = ray.get_gpu_ids()  # those reserved for this job
        if gpus:
            found["ray.gpu_ids"] = ",".join(str(g) for g in gpus)
    return found


def recorded_config(cfg: DictConfig, typed: Config) -> dict:
    """The resolved config as a run records it (params, config.yaml): credentials redacted."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["tracking"]["uri"] = redact(typed.tracking.uri)
    return resolved


def params(
    cfg: DictConfig,
    typed: Config,
    model: keras.Model,
    data: Dataset,
    threads: tuple[int, int],
    tuning: str,
) -> dict[str, Any]:
    """The run's params: its config, flattened, and what the job derived from it."""
    return {
        **describe.flatten(recorded_config(cfg, typed)),
        "derived.trainable_params": trainable_parameters(model),
        "derived.input_shape": list(data.input_shape),
        "derived.num_classes": data.num_classes,
        "derived.keras_backend": keras.backend.backend(),
        "derived.device": device_name(),
        "derived.platform": platform_name(typed.backend),
        "derived.trainer_settings": tuning,
        "derived.steps_per_execution": typed.trainer.steps_per_execution,
        "derived.precision": typed.trainer.precision,
        # JAX: full batches only (one compiled shape); elsewhere the last batch is ragged
        "derived.steps_per_epoch": steps_per_epoch(len(data.x_train), typed.trainer.batch_size)[0],
        "derived.intra_op_threads": threads[0],
        "derived.inter_op_threads": threads[1],
        **{f"derived.{k}_size": v for k, v in data.sizes().items()},
        **describe.library_versions(),
    }


def store_folders(typed: Config) -> list[Path]:
    """The local folders a run's records go to besides its output folder: the SQLite store's,
    the artifacts', the temporary folder (files handed to the recorder)."""
    folders = [Path(tempfile.gettempdir())]
    if db := describe.sqlite_path(typed.tracking.uri):
        folders.append(db.parent)
    location = typed.tracking.artifact_location
    if location and (folder := describe.local_folder(location)) is not None:
        folders.append(folder)
    return folders


def log_model(
    recorder,
    typed: Config,
    model: keras.Model,
    data: Dataset,
    probabilities,
    done: Path,
    since: int,
) -> None:
    """The trained model, as a pyfunc over raw pixels, with an example and its requirements;
    `done`: the ledger's file for the model step; `since`: when its training was decided to
    be over (a READY model logged before is an earlier training's, in an extended run)."""
    requirements = describe.model_requirements(describe.library_versions())
    example = data.x_test[:2, ..., 0] * data.pixel_max  # raw pixels, as users hold them
    recorder.log_model(
        model,
        example,
        probabilities[:2],
        data.pixel_max,
        requirements,
        typed.tracking.register_as,
        done=done,
        since=since,
    )


def log_results(
    recorder,
    cfg: DictConfig,
    typed: Config,
    data: Dataset,
    scores: Evaluation | None,
    history: dict,
    overrides: list[str],
    done: Path,
) -> None:
    """The learning curves, the test's figures and tables (none for a pruned trial, which
    was not tested: `scores` None), and the config the run trained with, in one call: the
    ledger's results step (`done`, its file)."""
    files = {
        "learning_curves.png": figures.learning_curves_figure(history),
        "config/config.yaml": OmegaConf.to_yaml(recorded_config(cfg, typed)),
        "config/overrides.yaml": OmegaConf.to_yaml([redact(o) for o in overrides]),
    }
    if scores is not None:
        labels = [str(c) for c in range(data.num_classes)]
        files |= {
            "confusion_matrix.png": figures.confusion_figure(scores.confusion, scores.accuracy),
            "confusion_matrix.csv": pd.DataFrame(scores.confusion, index=labels, columns=labels),
            "classification_report.json": scores.report,
            "misclassified.png": figures.misclassified_figure(
                data.x_test, data.y_test, scores.predicted
            ),
        }
    recorder.log_files(files, done=done)


def log_job_log(recorder, hydra_cfg: DictConfig) -> None:
    """Hydra's log file of this job, flushed first, as artifact logs/run.log."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"
    if log_file.is_file():
        recorder.log_file(log_file, "logs")


def say_where(recorder, typed: Config, scores: Evaluation | None, fit_metrics: dict) -> None:
    """The lines that end a job's log: its test scores (`scores` None: a pruned trial, not
    tested), speed, and where its records are."""
    if scores is None:
        log.info("pruned: not tested, no model logged (the run's curves say why)")
    else:
        log.info(
            "test accuracy %.4f  loss %.4f  macro F1 %.4f  (%d test images)",
            scores.accuracy,
            scores.loss,
            scores.macro_f1,
            int(scores.confusion.sum()),
        )
    if fit_metrics:
        log.info(
            "trained %.1fs (%.0f img/s)",
            fit_metrics["train_seconds"],
            fit_metrics["images_per_second"],
        )
    log.info("run %s in experiment %r", recorder.run_id, typed.tracking.experiment)
    log.info("artifacts %s", recorder.artifact_uri)
    log.info(
        "browse    mlflow ui --backend-store-uri %s --host 127.0.0.1 --port 5000",
        shlex.quote(redact(typed.tracking.uri)),
    )
