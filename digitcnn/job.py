"""One Hydra job, step by step: its config, data, model, training, test and records.

Each step lives in the folder of its stage (data, models, training, evaluation, tracking,
sweeps); this module only puts them in order and holds what must outlive a step: the run's
writer lock, its recorder, its timings.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from importlib import import_module
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from digitcnn.core import faults, stops
from digitcnn.core.config import Config, job_overrides, to_typed
from digitcnn.core.disk import write_text_whole
from digitcnn.core.extras import runs_jobs_elsewhere
from digitcnn.core.runtime import import_keras_quietly
from digitcnn.core.writer_lock import writing
from digitcnn.sweeps.search.trial import STATE_TAG
from digitcnn.tracking.recording import RecorderProcess, open_recording
from digitcnn.tracking.resume import RESOLVED_CONFIG, JobSource, job_source
from digitcnn.training.backends import select_backend
from digitcnn.training.timing import Timings, process_age

log = logging.getLogger("digitcnn")
PRUNED_SKIPS = ("tested", "model")  # a pruned trial's run: its `results` keep only the curves


def run_job(cfg: DictConfig, compose_seconds: float = 0.0) -> float:
    """Train and record one model; returns the last epoch's `objective` (what sweepers
    optimise: a validation metric, never a test-set number)."""
    stops.install()  # also in a launcher's worker process: a stop ends the job's run KILLED
    timings = Timings()
    timings.set("startup_seconds", process_age())  # interpreter, imports, Hydra
    timings.set("compose_seconds", compose_seconds)
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_pid = int(os.environ.get(stops.SWEEP_PID, "0"))
    # A launcher's worker process on the sweep's machine (Ray's and Slurm's nodes have their
    # own pids).
    elsewhere = runs_jobs_elsewhere(hydra_cfg.launcher)
    if in_sweep and sweep_pid not in (0, os.getpid()) and not elsewhere:
        stops.stop_when_gone(sweep_pid)
    select_backend(cfg.backend)  # before anything imports Keras
    if in_sweep and cfg.resume:  # it names the sweep, whose parent run the callback reopened
        cfg = cfg.copy()
        cfg.resume = None
    # A single run records from a second process, started now: forked before this process
    # opens a store or a lock or imports NumPy (digitcnn.tracking.recorder_start); it imports
    # MLflow and opens the store while this process imports Keras.
    process = None if in_sweep else RecorderProcess()
    try:
        return _held_job(cfg, hydra_cfg, in_sweep, process, timings)
    finally:
        if process is not None:
            process.close()  # also when the job ended before it reached its store


def _held_job(
    cfg: DictConfig,
    hydra_cfg: DictConfig,
    in_sweep: bool,
    process: RecorderProcess | None,
    timings: Timings,
) -> float:
    """The job from its config to its end, holding the run's writer lock."""
    with ExitStack() as held:  # the run's writer lock, for as long as this job writes it
        source = job_source(cfg, list(hydra_cfg.overrides.task), held)  # resume=, rerun=
        typed = to_typed(source.cfg)  # range checks: before data or MLflow are touched
        select_backend(typed.backend)  # a resumed run goes on where it started
        if source.checkpoint is None:
            output_key = "hydra.sweep.dir" if in_sweep else "hydra.run.dir"
            held.enter_context(writing(Path(typed.paths.output_dir), output_key))
        recording = open_recording(typed.tracking, process)
        try:
            return _job(source, typed, recording, timings, held)
        finally:
            recording.close()


def _job(source: JobSource, typed: Config, recording, timings: Timings, held: ExitStack) -> float:
    """The job once its config is known: the steps of a run, in order."""
    job_started = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    with timings.measure("import_seconds"):
        _import_libraries(typed.tracking.uri, with_mlflow=not recording.separate)
    from digitcnn.sweeps.search.trial import trial_tags
    from digitcnn.tracking import job_record
    from digitcnn.tracking.ended_early import Explained
    from digitcnn.training.backends import as_run_here, thread_share

    overrides = job_overrides(hydra_cfg)
    typed, tuning = as_run_here(typed)
    _log_opening(typed, tuning)
    with timings.measure("mlflow_preflight_seconds"):  # the wait for it, when separate
        store = recording.preflight()
    parent_run_id = _parent_run_id(hydra_cfg, store)
    if parent_run_id:  # in a resumed sweep, this job may have run before
        from digitcnn.sweeps import records

        finished, continued = records.pick_up_attempt(store, parent_run_id, overrides, held)
        if finished is not None:
            return float(finished.data.metrics.get(typed.objective, float("nan")))
        if continued is not None:
            source = continued
            typed, tuning = as_run_here(to_typed(source.cfg))
    threads = thread_share(typed.trainer, hydra_cfg.launcher)
    compiled = _configure_backend(typed, source, threads)
    typed, data = _data(typed, timings)
    output_dir = Path(typed.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_whole(output_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(source.cfg, resolve=True))
    model = _model(typed, data, source)

    tags = job_record.tags(typed, data, overrides, hydra_cfg, parent_run_id)
    tags |= trial_tags(hydra_cfg.sweeper) | _rerun_tag(source)
    checkpoint = source.checkpoint
    with (
        Explained(
            output_dir,
            typed.trainer.epochs,
            job_record.store_folders(typed),
            in_sweep=parent_run_id is not None,
        ) as explained,
        recording.tracked_run(
            job_record.run_name(typed, overrides),
            tags,
            parent_run_id,
            run_id=checkpoint.run_id if checkpoint else None,
            outage_limit=typed.tracking.outage_limit_seconds,
        ) as recorder,
        stops.wins(),  # an error that a stop signal caused ends the run as that stop
    ):
        explained.recorder = recorder
        _record_start(recorder, source, typed, model, data, threads, tuning)
        faults.point("opened", recorder.wait_written, _job_number(parent_run_id))
        history = _train_and_test(
            typed, source, model, data, recorder, overrides, timings, compiled, parent_run_id
        )
        if typed.debug.mode == "profile":  # the backend's trace and the job's phases so far
            timings.set("job_seconds", time.perf_counter() - job_started)
            recorder.log_files({"phases.json": timings.values}, folder="profile")
            if (output_dir / "profile").is_dir():
                recorder.log_folder(output_dir / "profile", "profile/trace")
        job_record.log_job_log(recorder, hydra_cfg)
    if parent_run_id is None:  # a stop from here on finds the run ended: its line says so
        ended = f"run {recorder.run_id} ended {recorder.ended}: its record is whole"
        stops.closing(lambda stopped: setattr(stopped, "outcome", stopped.outcome or ended))
    separately = " (in the recorder process)" if recording.separate else ""
    log.info("MLflow calls %.2fs%s", recorder.seconds, separately)
    timings.set("mlflow_seconds", recorder.seconds)
    timings.set_series("mlflow_call_seconds", recorder.call_seconds)
    timings.set("job_seconds", time.perf_counter() - job_started)
    timings.write(output_dir / "timings.json")
    faults.point("closed", job=_job_number(parent_run_id))
    return float(history[typed.objective][-1])


def _job_number(parent_run_id: str | None) -> int | None:
    """Which job of its sweep this is, for fault points: its trial's number in a search (a
    resumed search launches the trials left under new job numbers), else its job number;
    None for a single run."""
    if not parent_run_id:
        return None
    hydra_cfg = HydraConfig.get()
    trial = OmegaConf.select(hydra_cfg.sweeper, "trial")
    return int(trial) if trial is not None else hydra_cfg.job.num


def _import_libraries(tracking_uri: str, with_mlflow: bool) -> None:
    """Keras and its backend, matplotlib and, `with_mlflow` (when the job records from this
    process), MLflow with its store's modules, up front: a job's timings then show import time
    apart from the work it does."""
    import_keras_quietly()
    import_module("digitcnn.evaluation.figures")
    if with_mlflow:
        import_module("digitcnn.serving.pyfunc")
        import_module("digitcnn.tracking.store").import_store_modules(tracking_uri)


def _log_opening(typed: Config, tuning: str) -> None:
    import keras

    from digitcnn.tracking.job_record import summary_lines
    from digitcnn.training.backends import device_name

    device = device_name()
    log.info(
        "digitcnn on %s (Keras %s), %s; trainer: %s",
        typed.backend,
        keras.__version__,
        device,
        tuning,
    )
    for line in summary_lines(typed):
        log.info(line)


def _parent_run_id(hydra_cfg: DictConfig, store) -> str | None:
    """The sweep's parent run: from the sweep's folder, else found in the store."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    from digitcnn.sweeps import records
    from digitcnn.sweeps.sweep_folder import parent_run_id

    found = parent_run_id(hydra_cfg.sweep.dir)
    return found or records.find_parent_run(store, str(Path(hydra_cfg.sweep.dir)))


def _configure_backend(typed: Config, source: JobSource, threads: tuple[int, int]):
    """Seeds, threads and precision; with JAX's compilation cache, the cache's counter."""
    from digitcnn.training.backends import CompilationCache
    from digitcnn.training.fit import configure_backend

    # Fresh randomness on resume: the seed moves on by the epochs done.
    configure_backend(typed.trainer, typed.seed + source.epochs_done, threads)
    if typed.backend == "jax" and typed.trainer.compilation_cache:
        return CompilationCache(Path(typed.paths.cache_dir))
    return None


def _data(typed: Config, timings: Timings):
    """The dataset, shaped by a debug mode if one is on; a batch larger than it is refused."""
    from digitcnn.data import load_dataset
    from digitcnn.training import debug
    from digitcnn.training.batching import check_batch_fits

    with timings.measure("data_seconds"):
        data = load_dataset(typed.dataset, typed.seed)
    typed, data = debug.prepare(typed, data)  # debug=...: its data and settings
    check_batch_fits(typed.trainer.batch_size, data)
    sizes = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
    log.info("data      %s from %s: %s", data.name, data.source, sizes)
    return typed, data


def _rerun_tag(source: JobSource) -> dict[str, str]:
    return {"rerun_of": source.rerun_of} if source.rerun_of else {}


def _model(typed: Config, data, source: JobSource):
    """A resumed run's model from its checkpoint (weights, optimizer state), else a new one."""
    import keras

    from digitcnn.models.families import build_for

    checkpoint = source.checkpoint
    if checkpoint is None:
        return build_for(typed.model, data)
    checkpoint.restore_rng()
    with stops.held():  # HDF5 reads through Python: see stops.held
        model = keras.saving.load_model(checkpoint.model_file)
    log.info("resuming run %s after epoch %d", checkpoint.run_id, checkpoint.epoch)
    return model


def _record_start(recorder, source: JobSource, typed: Config, model, data, threads, tuning):
    """What a run records before it trains: params and dataset, or where a resume began."""
    from digitcnn.tracking import job_record

    if typed.tracking.log_model:
        recorder.prepare_model_logging()
    if source.checkpoint:  # where this attempt runs: a requeued Slurm job's node, restarts
        recorder.log_tags({"resumed_after_epoch": source.checkpoint.epoch} | job_record.node_tags())
        recorder.log_missing_epochs(source.checkpoint.history)  # waiting when a server went away
    else:
        recorder.log_params(job_record.params(source.cfg, typed, model, data, threads, tuning))
        recorder.log_dataset(data.x_test, data.y_test, data.name, data.digest, data.source)


def _train_and_test(
    typed: Config,
    source: JobSource,
    model,
    data,
    recorder,
    overrides: list[str],
    timings: Timings,
    compiled,
    parent_run_id: str | None,
) -> dict[str, list[float]]:
    """The steps after the run opened, each done once (see digitcnn.tracking.ledger): the
    epochs left, checkpointed each; `trained`, `tested`, `model`, `results` (a search's
    pruned trial is no candidate: `trained`, then `results` with its curves only). A resumed
    run does the steps its ledger does not mark done, replaying those already decided.
    Returns every epoch's history."""
    from digitcnn.evaluation.metrics import evaluate
    from digitcnn.tracking import job_record
    from digitcnn.tracking.ledger import Ledger
    from digitcnn.training.batching import predict_probabilities

    job = _job_number(parent_run_id)
    ledger = Ledger(Path(typed.paths.output_dir), recorder.run_id)

    def step(name: str) -> None:  # a boundary: a test's fault point
        faults.point(name, recorder.wait_written, job)

    history, validated, trained = _train(typed, source, model, data, recorder, ledger, timings,
                                         compiled, job)  # fmt: skip
    if not ledger.done("trained"):
        recorder.record_step(ledger.intent_file("trained"), ledger.done_file("trained"))
    step("trained")
    scores = None  # a pruned trial is no candidate: its curves and why, nothing of the test
    if not _pruned(trained):
        if validated is not None and data.x_val is data.x_test:
            probabilities = validated  # dataset.val_size=0: the last validation was this test
        else:
            probabilities = predict_probabilities(model, data.x_test)
        scores = evaluate(probabilities, data.y_test)
        if not ledger.done("tested"):
            if ledger.intent("tested") is None:
                ledger.write_intent("tested", metrics=scores.metrics())
            recorder.record_step(ledger.intent_file("tested"), ledger.done_file("tested"))
        step("tested")
        if typed.tracking.log_model and not ledger.done("model"):
            # first: a recorder process logs it while the figures are drawn
            job_record.log_model(recorder, typed, model, data, probabilities,
                                 ledger.done_file("model"), since=trained["timestamp"])  # fmt: skip
            step("model")
    if not ledger.done("results"):
        job_record.log_results(recorder, source.cfg, typed, data, scores, history, overrides,
                               ledger.done_file("results"))  # fmt: skip
        step("results")
    job_record.say_where(recorder, typed, scores, trained.get("metrics", {}))
    return history


def _train(typed: Config, source: JobSource, model, data, recorder, ledger, timings, compiled,
           job: int | None):  # fmt: skip
    """The epochs left, then the `trained` step's intent (how training ended, its timings):
    (every epoch's history, the last validation's probabilities or None, the intent). A run
    whose training ended already (the intent exists: its last epoch, or a search's trial
    pruned) trains nothing more."""
    from digitcnn.core.errors import InputError
    from digitcnn.sweeps.search.pruning import end_state_tags, reporters_for
    from digitcnn.tracking import EpochMetricsLogger
    from digitcnn.training.checkpointing import EpochCheckpoint
    from digitcnn.training.epochs import fault_points, train_remaining

    checkpoint, done = source.checkpoint, source.epochs_done
    history = checkpoint.history if checkpoint else {}
    decided = ledger.intent("trained")
    if (
        decided is not None
        and ledger.done("results")
        and typed.trainer.epochs > decided["configured_epochs"]
    ):
        ledger.start_over()  # a finished run given more epochs: a new training, then its steps
        decided = None
    if decided is not None:
        if decided["epochs"] != done:  # its checkpoint is damaged, an earlier one was read
            raise InputError(
                f"the checkpoint of epoch {decided['epochs']}, whose model run "
                f"{ledger.run_id} was being tested and recorded with, is damaged; the run "
                "cannot be finished: start it again"
            )
        if decided["configured_epochs"] != typed.trainer.epochs:
            raise InputError(
                f"trainer.epochs={typed.trainer.epochs} is not allowed: run {ledger.run_id} "
                f"ended its training after epoch {decided['epochs']} and is being recorded; "
                "resume it without trainer.epochs"
            )
        skipping = PRUNED_SKIPS if _pruned(decided) else ()
        log.info("training ended after epoch %d; recording: %s", decided["epochs"],
                 ", ".join(ledger.left(skipping)) or "closing")  # fmt: skip
        return {k: list(v) for k, v in history.items()}, None, decided
    saver = EpochCheckpoint(Path(typed.paths.output_dir), recorder.run_id, history)
    # A search's trial hears of epochs still to train; a resumed job whose epochs were all
    # trained (stopped while it was tested) does not reopen its trial.
    epochs_left = typed.trainer.epochs - done
    sweeper = HydraConfig.get().sweeper
    reporters = reporters_for(sweeper, typed.objective, saver.history) if epochs_left > 0 else []
    faults_at = fault_points(recorder.wait_written, job)
    callbacks = [EpochMetricsLogger(recorder), *reporters, faults_at]
    trained = train_remaining(typed, model, data, saver, callbacks, timings, done)
    metrics = {**trained.metrics, **(compiled.counts if compiled else {})}
    decided = ledger.write_intent(
        "trained",
        epochs=len(saver.history.get("loss", [])),
        configured_epochs=typed.trainer.epochs,
        # what Keras made of jit_compile (auto: its per-backend choice)
        params={"derived.jit_compile": model.jit_compile},
        metrics=metrics,
        tags={k: str(v) for k, v in end_state_tags(reporters).items()},
    )
    return trained.history, trained.validation_probabilities, decided


def _pruned(trained: dict) -> bool:
    """Whether the `trained` step's intent says a search's pruner stopped the trial."""
    return trained.get("tags", {}).get(STATE_TAG) == "PRUNED"


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """In a sweep, a job that failed before its run opened (bad value, bad data) still gets a
    FAILED child run naming the error, so the sweep's summary lists it."""
    import json

    from digitcnn.sweeps import records
    from digitcnn.sweeps.sweep_folder import parent_run_id
    from digitcnn.tracking.describe import redact

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    parent = parent_run_id(hydra_cfg.sweep.dir)
    if parent is None or records.has_child(cfg, parent, hydra_cfg.job.num):
        return  # not in a sweep, or the job's own run already ended FAILED
    overrides = [redact(o) for o in job_overrides(hydra_cfg)]
    tags = {
        "overrides": json.dumps(overrides),
        "sweep.job": str(hydra_cfg.job.num),
        "error": str(error)[:5000],
    }
    records.record_failed_run(cfg, ",".join(overrides) or "default", tags, parent)
