"""One Hydra job: check the config, load data, build, train, evaluate, record in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from contextlib import ExitStack
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from digitcnn import resume, stops
from digitcnn.backends import (
    CompilationCache,
    device_name,
    platform_name,
    select_backend,
    settings_for,
)
from digitcnn.config import MAX_RUN_NAME, Config, TrainerConfig, to_typed
from digitcnn.disk import write_text_whole
from digitcnn.explain import Explained
from digitcnn.resume import RESOLVED_CONFIG, job_source
from digitcnn.runtime import import_keras_quietly
from digitcnn.search.trial import PRUNED_AT_TAG, STATE_TAG, TRIAL_TAG, trial_of
from digitcnn.timing import Timings, process_age
from digitcnn.tracking.recording import open_recording
from digitcnn.writer_lock import writing

if TYPE_CHECKING:
    from digitcnn.training import TrainResult

log = logging.getLogger("digitcnn")


def _summary_lines(typed: Config) -> list[str]:
    cfg = OmegaConf.structured(typed)
    lines = []
    for group in ("dataset", "model", "optimizer", "trainer"):
        values = ", ".join(f"{k}={v}" for k, v in cfg[group].items() if k != "name")
        name = cfg[group].get("name", "")
        lines.append(f"  {group:<9} {name + ': ' if name else ''}{values}")
    return [*lines, f"  seed      {typed.seed}"]


def _job_overrides(hydra_cfg) -> list[str]:
    """What the job was asked to change: its overrides less `resume=`, which says how it was
    run, not what (a job keeps its name and record however often its sweep is resumed)."""
    return [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")]


def _run_name(typed: Config, overrides: list[str]) -> str:
    if typed.tracking.run_name:
        return typed.tracking.run_name
    shown = ",".join(o for o in overrides if not o.startswith(("hydra.", "tracking.")))
    if len(shown) > MAX_RUN_NAME:  # MLflow's limit; the overrides tag keeps them all
        shown = shown[: MAX_RUN_NAME - 1] + "…"
    return shown or "default"


def run_job(cfg: DictConfig, compose_seconds: float = 0.0) -> float:
    """Train and record one model; returns the last epoch's `objective` (what sweepers
    optimise: a validation metric, never a test-set number)."""
    stops.install()  # also in a launcher's worker process: a stop ends the job's run KILLED
    timings = Timings()
    timings.set("startup_seconds", process_age())  # interpreter, imports, Hydra
    timings.set("compose_seconds", compose_seconds)
    job_started = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    select_backend(cfg.backend)  # before anything imports Keras
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and cfg.resume:  # it names the sweep, whose parent run the callback reopened
        cfg = cfg.copy()
        cfg.resume = None
    with ExitStack() as held:  # the run's writer lock, for as long as this job writes it
        source = job_source(cfg, overrides, held)  # resume=/rerun= swap in a recorded config
        cfg = source.cfg
        typed = to_typed(cfg)  # range checks: fail here, before data or MLflow are touched
        select_backend(typed.backend)  # a resumed run goes on where it started
        if source.checkpoint is None:
            output_key = "hydra.sweep.dir" if in_sweep else "hydra.run.dir"
            held.enter_context(writing(Path(typed.paths.output_dir), output_key))
        parent_run_id = _parent_run_id(hydra_cfg)

        # A single run records from a second process, started now: it imports MLflow and
        # opens the store while this process imports Keras (see digitcnn.tracking.recording).
        recording = open_recording(typed.tracking, separate=not in_sweep)
        try:
            return _job(cfg, typed, source, recording, parent_run_id, timings, job_started, held)
        finally:
            recording.close()


def _job(cfg, typed, source, recording, parent_run_id, timings, job_started, held) -> float:
    """The job once its config is known: imports, data, model, the run and its records."""
    hydra_cfg = HydraConfig.get()
    overrides = _job_overrides(hydra_cfg)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    with timings.measure("import_seconds"):
        _import_libraries(typed.tracking.uri, with_mlflow=not recording.separate)
    import keras

    from digitcnn import debug, tracking
    from digitcnn.data import load_dataset
    from digitcnn.training import configure_backend

    typed, tuning = _as_run_here(typed)
    log.info(
        "digitcnn on %s (Keras %s), %s; trainer: %s",
        typed.backend,
        keras.__version__,
        device_name(),
        tuning,
    )
    for line in _summary_lines(typed):
        log.info(line)

    with timings.measure("mlflow_preflight_seconds"):  # the wait for it, when separate
        store = recording.preflight()
        if parent_run_id is None and in_sweep:
            parent_run_id = tracking.find_parent_run(store, str(Path(hydra_cfg.sweep.dir)))
    if parent_run_id:
        attempt = tracking.earlier_attempt(store, parent_run_id, overrides)
        if attempt is not None and attempt.info.status == "FINISHED":
            log.info("job done already, in run %s: not run again", attempt.info.run_id)
            return float(attempt.data.metrics.get(typed.objective, float("nan")))
        continued = resume.continue_attempt(attempt, held) if attempt is not None else None
        if continued is not None:
            source, cfg = continued, continued.cfg
            typed, tuning = _as_run_here(to_typed(cfg))
        elif attempt is not None:
            log.info("earlier attempt %s has no checkpoint: starting over", attempt.info.run_id)
            tracking.supersede(store, attempt.info.run_id)
    threads = _thread_share(typed.trainer, hydra_cfg)
    checkpoint = source.checkpoint
    # A resumed run draws fresh backend randomness for its later epochs.
    configure_backend(typed.trainer, typed.seed + (checkpoint.epoch if checkpoint else 0), threads)
    compiled = None
    if typed.backend == "jax" and typed.trainer.compilation_cache:
        compiled = CompilationCache(Path(typed.paths.cache_dir))
    with timings.measure("data_seconds"):
        data = load_dataset(typed.dataset, typed.seed)
    typed, data = debug.prepare(typed, data)  # debug=...: its data and settings
    _check_against_data(typed, data)
    sizes = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
    log.info("data      %s from %s: %s", data.name, data.source, sizes)

    output_dir = Path(typed.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_whole(output_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    if checkpoint:
        checkpoint.restore_rng()
        with stops.held():  # HDF5 reads through Python: see stops.held
            model = keras.saving.load_model(checkpoint.model_file)  # weights, optimizer state
        log.info("resuming run %s after epoch %d", checkpoint.run_id, checkpoint.epoch)
    else:
        model = _built(typed, data)

    tags = _tags(typed, data, overrides, hydra_cfg, parent_run_id)
    if source.rerun_of:
        tags["rerun_of"] = source.rerun_of
    with (
        Explained(output_dir, typed.trainer.epochs, _store_folders(typed)) as explained,
        recording.tracked_run(
            _run_name(typed, overrides),
            tags,
            parent_run_id,
            run_id=checkpoint.run_id if checkpoint else None,
            outage_limit=typed.tracking.outage_limit_seconds,
        ) as recorder,
    ):
        explained.recorder = recorder
        if typed.tracking.log_model:
            recorder.prepare_model_logging()
        if checkpoint:
            recorder.log_tags({"resumed_after_epoch": checkpoint.epoch})
            recorder.log_missing_epochs(checkpoint.history)  # waiting when a server went away
        else:
            recorder.log_params(_params(cfg, typed, model, data, threads, tuning))
            recorder.log_dataset(data.x_test, data.y_test, data.name, data.digest, data.source)
        history = _train_and_record(
            typed, cfg, model, data, recorder, checkpoint, overrides, timings
        )
        if compiled:
            recorder.log_metrics(compiled.counts)
        if typed.debug.mode == "profile":  # the backend's trace and the job's phases so far
            timings.set("job_seconds", time.perf_counter() - job_started)
            recorder.log_files({"phases.json": timings.values}, folder="profile")
            if (output_dir / "profile").is_dir():
                recorder.log_folder(output_dir / "profile", "profile/trace")
        _log_job_log(recorder, Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.name)
    separately = " (in the recorder process)" if recording.separate else ""
    log.info("MLflow calls %.2fs%s", recorder.seconds, separately)
    timings.set("mlflow_seconds", recorder.seconds)
    timings.set_series("mlflow_call_seconds", recorder.call_seconds)
    timings.set("job_seconds", time.perf_counter() - job_started)
    timings.write(output_dir / "timings.json")
    return float(history[typed.objective][-1])


def _check_against_data(typed: Config, data) -> None:
    """Sizes that only the loaded data can judge: a batch larger than the training set would
    train on fewer images than asked (or none, where batches must be full)."""
    from digitcnn.errors import ConfigValueError

    train_size = len(data.x_train)
    if typed.trainer.batch_size > train_size:
        raise ConfigValueError(
            "trainer.batch_size",
            typed.trainer.batch_size,
            f"at most the {train_size:,} training images of dataset={data.name}",
        )


def _built(typed: Config, data):
    """The model for this data; a family whose settings do not fit the images (a kernel
    larger than what is left of them) is one line naming the model's keys."""
    from digitcnn.errors import InputError
    from digitcnn.model import build_model

    try:
        return build_model(typed.model, data.input_shape, data.num_classes)
    except ValueError as exc:
        height, width = data.input_shape[:2]
        raise InputError(
            f"model={typed.model.name} does not fit dataset={data.name}'s {height}x{width} "
            f"images with these settings: {str(exc).splitlines()[0]}"
        ) from None


def _as_run_here(typed: Config) -> tuple[Config, str]:
    """The config with the trainer settings this backend and device run, and why."""
    trainer, tuning = settings_for(typed.trainer, typed.backend)
    return dataclasses.replace(typed, trainer=trainer), tuning


def _import_libraries(tracking_uri: str, with_mlflow: bool) -> None:
    """Keras and its backend, matplotlib and, `with_mlflow` (when the job records from this
    process), MLflow with its store's modules, up front: a job's timings then show import time
    apart from the work it does."""
    import_keras_quietly()
    import_module("digitcnn.plots")
    if with_mlflow:
        import_module("digitcnn.serving")
        import_module("digitcnn.tracking.store").import_store_modules(tracking_uri)


def _tags(typed: Config, data, overrides: list[str], hydra_cfg, parent: str | None) -> dict:
    from digitcnn import tracking

    tags = {
        **tracking.git_state(Path(typed.paths.root_dir)),
        "hydra.output_dir": typed.paths.output_dir,
        "command": tracking.redact(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "dataset.digest": data.digest,
        "validation_set": "test" if data.validation_is_test else "holdout",
        "overrides": json.dumps([tracking.redact(o) for o in overrides]),
    }
    if parent:
        tags["sweep.job"] = str(hydra_cfg.job.num)
    if trial := trial_of(hydra_cfg.sweeper):
        tags[TRIAL_TAG] = str(trial.number)
    if typed.debug.mode != "none":
        tags["debug"] = typed.debug.mode
    local = hydra_cfg.runtime.choices.get("local")
    if local and _in_search_path(hydra_cfg, f"local/{local}.yaml"):  # applied, not just named
        tags["local_config"] = f"local/{local}.yaml"
    return tags | _node_tags() | {label: "true" for label in typed.tags}


def _store_folders(typed: Config) -> list[Path]:
    """The local folders a run's records go to besides its output folder: the SQLite store's,
    the artifacts', the temporary folder (files handed to the recorder)."""
    import tempfile

    from digitcnn.tracking.describe import sqlite_path

    folders = [Path(tempfile.gettempdir())]
    if db := sqlite_path(typed.tracking.uri):
        folders.append(db.parent)
    location = typed.tracking.artifact_location
    if location and "://" not in location:
        folders.append(Path(location))
    return folders


def _in_search_path(hydra_cfg, name: str) -> bool:
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


def _node_tags() -> dict[str, str]:
    """The machine that ran the job: its host name, and its Ray node inside a Ray worker."""
    import socket

    tags = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")  # imported only where a Ray launcher runs the job
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        tags["ray.node_id"] = context.get_node_id()
        tags["ray.node_ip"] = ray.util.get_node_ip_address()
        gpus = ray.get_gpu_ids()  # those reserved for this job
        if gpus:
            tags["ray.gpu_ids"] = ",".join(str(g) for g in gpus)
    return tags


def _recorded_config(cfg: DictConfig, typed: Config) -> dict:
    """The resolved config as a run records it (params, config.yaml): credentials redacted."""
    from digitcnn import tracking

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["tracking"]["uri"] = tracking.redact(typed.tracking.uri)
    return resolved


def _params(
    cfg: DictConfig, typed: Config, model, data, threads: tuple[int, int], tuning: str
) -> dict:
    import keras

    from digitcnn import tracking
    from digitcnn.batching import steps_per_epoch
    from digitcnn.model import trainable_parameters

    return {
        **tracking.flatten(_recorded_config(cfg, typed)),
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
        **tracking.library_versions(),
    }


def _train_and_record(typed, cfg, model, data, recorder, checkpoint, overrides, timings) -> dict:
    """Fit (checkpointing every epoch), evaluate on the test set once, log the results."""
    from digitcnn import plots, tracking
    from digitcnn.batching import predict_probabilities
    from digitcnn.evaluation import evaluate

    history, fit_metrics, validated = _fit(typed, model, data, recorder, checkpoint, timings)
    if validated is not None and data.x_val is data.x_test:
        probabilities = validated  # dataset.val_size=0: the last validation was this test
    else:
        probabilities = predict_probabilities(model, data.x_test)
    scores = evaluate(probabilities, data.y_test)
    recorder.log_metrics({**scores.metrics(), **fit_metrics})
    # First the model: a recorder process logs it while the figures are drawn here.
    if typed.tracking.log_model:
        requirements = tracking.model_requirements(tracking.library_versions())
        example = data.x_test[:2, ..., 0] * data.pixel_max  # raw pixels, as users hold them
        recorder.log_model(
            model,
            example,
            probabilities[:2],
            data.pixel_max,
            requirements,
            typed.tracking.register_as,
        )
    labels = [str(c) for c in range(data.num_classes)]
    recorder.log_files(
        {
            "confusion_matrix.png": plots.confusion_figure(scores.confusion, scores.accuracy),
            "confusion_matrix.csv": pd.DataFrame(scores.confusion, index=labels, columns=labels),
            "classification_report.json": scores.report,
            "learning_curves.png": plots.learning_curves_figure(history),
            "misclassified.png": plots.misclassified_figure(
                data.x_test, data.y_test, scores.predicted
            ),
        }
    )
    recorder.log_files(
        {
            "config.yaml": OmegaConf.to_yaml(_recorded_config(cfg, typed)),
            "overrides.yaml": OmegaConf.to_yaml([tracking.redact(o) for o in overrides]),
        },
        folder="config",
    )

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
        shlex.quote(tracking.redact(typed.tracking.uri)),
    )
    return history


def _fit(typed, model, data, recorder, checkpoint, timings):
    """Train the epochs not yet done, checkpointing each; returns every epoch's history, the
    fit's metrics (`_fit_metrics`) and the trained model's probabilities for the validation
    images; no metrics and no probabilities when a resumed run had trained all its epochs
    already (it was stopped while it evaluated and recorded them)."""
    from digitcnn import debug, tracking
    from digitcnn.checkpoint import EpochCheckpoint
    from digitcnn.training import train

    done = checkpoint.epoch if checkpoint else 0
    if done >= typed.trainer.epochs:
        log.info("all %d epochs were trained; evaluating and recording", done)
        return checkpoint.history, {}, None
    timings.set("fit_start_seconds", process_age())
    saver = EpochCheckpoint(
        Path(typed.paths.output_dir), recorder.run_id, checkpoint.history if checkpoint else {}
    )
    checks = debug.callbacks(typed, Path(typed.paths.output_dir))
    reporter = _trial_reporter(typed, saver.history)
    result = train(
        model,
        data,
        typed.optimizer,
        typed.trainer,
        # the checkpoint first: a pruned trial's last epoch is saved
        [saver, tracking.EpochMetricsLogger(recorder), *reporter, *checks],
        initial_epoch=done,
        seed=typed.seed + done,
    )
    if reporter:
        pruned_at = reporter[0].pruned_at
        recorder.log_tags(
            {STATE_TAG: "PRUNED", PRUNED_AT_TAG: pruned_at}
            if pruned_at
            else {STATE_TAG: "COMPLETE"}
        )
    if not checkpoint:  # what Keras made of jit_compile (auto: its per-backend choice)
        recorder.log_params({"derived.jit_compile": model.jit_compile})
    timings.set("fit_seconds", result.train_seconds)
    metrics = _fit_metrics(result, len(data.x_train))
    for name, value in metrics.items():
        timings.set(name, value)
    metrics |= debug.verdict(typed, checks, saver.history)
    # every epoch, those before a resume included
    return saver.history, metrics, result.validation_probabilities


def _trial_reporter(typed: Config, history: dict) -> list:
    """In an Optuna search, the callback that reports each epoch to the job's trial (and
    stops a pruned one); none elsewhere."""
    trial = trial_of(HydraConfig.get().sweeper)
    if trial is None:
        return []
    from digitcnn.search.pruning import ReportToTrial

    return [ReportToTrial(trial, typed.objective, history)]


def _fit_metrics(result: TrainResult, train_size: int) -> dict[str, float]:
    """The fit's time, split into its first epoch (tracing and compilation included) and the
    steady state of the epochs after it: `warmup_seconds` is how much longer the first took
    than a steady epoch (mostly compilation)."""
    seconds = result.history["epoch_seconds"]
    metrics = {
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "first_epoch_seconds": seconds[0],
    }
    if len(seconds) > 1:
        steady = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median steady epoch
        metrics["steady_images_per_second"] = train_size / steady
        metrics["warmup_seconds"] = max(seconds[0] - steady, 0.0)
    return metrics


def _parent_run_id(hydra_cfg) -> str | None:
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    from digitcnn.sweep import parent_run_id

    return parent_run_id(hydra_cfg.sweep.dir)


def _thread_share(trainer: TrainerConfig, hydra_cfg) -> tuple[int, int]:
    """(intra, inter) op threads: as configured, or this job's share of the CPUs when a
    launcher runs several jobs at once (2 jobs on 2 cores: 1 thread each; on Ray the CPUs
    each job reserves)."""
    if trainer.intra_op_threads or trainer.inter_op_threads:
        return trainer.intra_op_threads, trainer.inter_op_threads
    reserved = OmegaConf.select(hydra_cfg.launcher, "ray.remote.num_cpus")
    if reserved:
        return max(1, int(reserved)), 1
    parallel = int(hydra_cfg.launcher.get("n_jobs") or 1)
    if parallel <= 1:
        return 0, 0
    return max(1, len(os.sched_getaffinity(0)) // parallel), 1


def _log_job_log(recorder, output_dir: Path, job_name: str) -> None:
    """Hydra's log file of this job, flushed first, as artifact logs/run.log."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = output_dir / f"{job_name}.log"
    if log_file.is_file():
        recorder.log_file(log_file, "logs")


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """In a sweep, a job that failed before its run opened (bad value, bad data) still gets a
    FAILED child run naming the error, so the sweep's summary lists it."""
    from digitcnn import tracking

    hydra_cfg = HydraConfig.get()
    parent = _parent_run_id(hydra_cfg)
    if parent is None or tracking.has_child(cfg, parent, hydra_cfg.job.num):
        return  # not in a sweep, or the job's own run already ended FAILED
    overrides = [tracking.redact(o) for o in _job_overrides(hydra_cfg)]
    tags = {
        "overrides": json.dumps(overrides),
        "sweep.job": str(hydra_cfg.job.num),
        "error": str(error)[:5000],
    }
    tracking.record_failed_run(cfg, ",".join(overrides) or "default", tags, parent)
