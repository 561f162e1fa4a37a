"""The benchmark harness runs end to end on a tiny configuration (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, failure_report


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_bench_compare_runs_on_digits(tmp_path, backend):
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "compare.py"),
            "--dataset",
            "digits",
            "--pairs",
            "1",
            "--epochs",
            "2",
            "--backend",
            backend,
            "--out",
            str(out),
        ],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, failure_report(proc)
    results = json.loads(out.with_suffix(".json").read_text())
    (pair,) = results["pairs"]
    for side in ("baseline", "framework"):
        assert pair[side]["steady_images_per_second"] > 0
        assert pair[side]["process_seconds"] > 0 and pair[side]["wall_seconds"] > 0
    assert pair["framework"]["mlflow_seconds"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| steady-state training images/s" in table and "plain Keras" in table
    assert f"Keras on {backend}" in table


def test_flop_count_of_the_reference_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("flops", REPO / "bench" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    conv1 = 2 * 28 * 28 * 3 * 3 * 1 * 32
    conv2 = 2 * 14 * 14 * 3 * 3 * 32 * 64
    dense = 2 * (7 * 7 * 64) * 128 + 2 * 128 * 10
    assert flops.forward_flops([32, 64], 3, 128) == conv1 + conv2 + dense
    conv1_2 = 2 * 28 * 28 * 3 * 3 * 32 * 32
    conv2_1 = 2 * 14 * 14 * 3 * 3 * 32 * 64
    conv2_2 = 2 * 14 * 14 * 3 * 3 * 64 * 64
    assert flops.forward_flops([32, 64], 3, 128, convs_per_block=2) == (
        conv1 + conv1_2 + conv2_1 + conv2_2 + dense
    )
    valid_conv1 = 2 * 24 * 24 * 5 * 5 * 1 * 16
    valid_conv2 = 2 * 8 * 8 * 5 * 5 * 16 * 32
    valid_dense = 2 * (4 * 4 * 32) * 256 + 2 * 256 * 10
    assert flops.forward_flops([16, 32], 5, 256, padding="valid") == (
        valid_conv1 + valid_conv2 + valid_dense
    )


def test_bench_memory_finds_each_process_of_a_tree_and_its_peak(tmp_path):
    """bench/memory.py's sampling, on a parent holding 150 MiB while its child holds 80."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory", REPO / "bench" / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    child = "import time; held = b'x' * (80 << 20); time.sleep(1.5)"
    parent = (
        "import subprocess, sys; held = b'x' * (150 << 20); "
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    )
    found = memory.measure([sys.executable, "-c", parent], cli_env(tmp_path))
    peaks = sorted(p["peak_rss_mib"] for p in found["processes"])
    assert len(peaks) == 2 and 150 < peaks[1] < 200 and 80 < peaks[0] < 130, found
    assert 230 < found["tree_pss_mib"] <= found["tree_rss_mib"], found


def test_bench_augment_compares_one_warp_with_the_keras_chain(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "augment.py"), "--digits", "--repeats", "1"],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, failure_report(proc)
    result = json.loads(proc.stdout)
    sharpness = result["sharpness"]
    assert sharpness["original"] > sharpness["one_affine_warp"] > 0
    assert set(result["ms_per_batch"]) == {"one_affine_warp", "keras_chain"}


@pytest.mark.slow
def test_bench_gpu_prints_its_table_on_any_device(tmp_path):
    """bench/gpu.py's smoke mode (digits, 2 epochs, the fast recipe and plain Keras on JAX):
    the script that measures the GPU table runs, and every row has its figures."""
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu.py"),
            "--smoke",
            "--backends",
            "jax",
            "--recipes",
            "fast",
            "--out",
            str(out),
        ],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, failure_report(proc)
    runs = json.loads((out / "gpu.json").read_text())["runs"]
    assert [(r["run"], r["cache"]) for r in runs] == [
        ("fast", "cold"),
        ("fast", "warm"),
        ("plain Keras (2 epochs on digits)", "-"),
    ]
    assert all("error" not in r and r["test_accuracy"] > 0 for r in runs), runs
    assert "| fast | jax | warm |" in (out / "gpu.md").read_text()
