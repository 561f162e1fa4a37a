"""The GPU table of docs/performance.md, in one command.

    KERAS_BACKEND=jax python bench/gpu.py --data mnist.npz            # on a machine with a GPU
    python bench/gpu.py --data mnist.npz --backends jax --recipes fast # part of it
    python bench/gpu.py --smoke --backends jax                         # a check on any CPU

Runs `experiment=fast` (twice: with an empty compilation cache, then warm), the default run
and `experiment=best` on each backend (JAX and torch by default), and plain Keras on JAX on the
reference run's work as the baseline (bench/plain_keras.py: the same model, data and batch).
Each run is `python -m digitcnn.run` in a private project root (its own store, outputs and
cache); the figures are read back from its MLflow run. Prints a Markdown table headed by the
device's name and writes it, with the raw figures, to bench/gpu.md and bench/gpu.json.

The machine needs the wheels digitcnn runs with (Keras, Hydra, MLflow; jax[cuda] and a CUDA
torch) and MNIST as a file (`--data`: Keras's mnist.npz layout), since it may reach no network.
Whatever does not fit in `--budget` seconds is left out of the table, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # name -> overrides
    "fast": ["experiment=fast"],
    "default": [],
    "best": ["experiment=best"],
}
# digits' 8x8 images need the fast recipe's valid padding turned off
SMOKE = ["dataset=digits", "trainer.epochs=2", "model.padding=same", "tracking.log_model=false"]


def device_name(backend: str) -> str:
    code = {
        "jax": "import jax; d = jax.devices()[0]; print(d.platform, d.device_kind)",
        "torch": "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available()"
        " else 'cpu')",
    }[backend]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() or f"unknown ({proc.stderr.strip().splitlines()[-1:]})"


def digitcnn_run(root: Path, backend: str, overrides: list[str], timeout: float) -> dict:
    """One `python -m digitcnn.run` under `root`; its MLflow run's figures and wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERAS_"))}
    env |= {"DIGITCNN_ROOT": str(root), "HOME": str(root / "home"), "KERAS_BACKEND": backend}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "digitcnn.run", f"backend={backend}", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"], "wall_seconds": wall}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiments = client.search_experiments()
    (run,) = client.search_runs(
        [e.experiment_id for e in experiments], order_by=["start_time DESC"], max_results=1
    )
    m = run.data.metrics
    return {
        "wall_seconds": wall,
        "fit_seconds": m.get("train_seconds"),
        "first_epoch_seconds": m.get("first_epoch_seconds"),
        "steady_images_per_second": m.get("steady_images_per_second"),
        "test_accuracy": m.get("test_accuracy"),
        "jit_compile": run.data.params.get("derived.jit_compile"),
        "device": run.data.params.get("derived.device"),
    }


def plain_keras(data: Path | None, smoke: bool, timeout: float) -> dict:
    """The reference run's work in plain Keras on JAX: 5 epochs, batch 64 (2 on digits)."""
    cmd = [sys.executable, str(REPO / "bench" / "plain_keras.py")]
    if smoke:
        cmd += ["--epochs", "2", "--val-size", "180"]
    else:
        cmd += ["--epochs", "5", "--data", str(data)]
    env = os.environ | {"KERAS_BACKEND": "jax"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"], "wall_seconds": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, **result}


def plan(backends: list[str], recipes: list[str]) -> list[tuple[str, str, str]]:
    """(backend, recipe, cache) for each run, in order: the fast recipe cold, then warm."""
    runs = []
    for backend in backends:
        for recipe in recipes:
            if recipe == "fast":
                runs += [(backend, "fast", "cold"), (backend, "fast", "warm")]
            else:  # the cache holds the other recipes' programs only
                runs.append((backend, recipe, "first run"))
    return runs


def _cell(value, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def table(rows: list[dict], device: str) -> str:
    lines = [
        f"GPU table on {device}",
        "",
        "| run | backend | cache | wall s | fit s | first epoch s | steady img/s | test acc % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['backend']} | {r['cache']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['run']} | {r['backend']} | {r['cache']} | {_cell(r['wall_seconds'])} "
            f"| {_cell(r.get('fit_seconds'))} | {_cell(r.get('first_epoch_seconds'))} "
            f"| {_cell(r.get('steady_images_per_second'), 0)} "
            f"| {_cell(r.get('test_accuracy'), 2, 100)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="MNIST as Keras's mnist.npz")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything")
    parser.add_argument("--smoke", action="store_true", help="digits, 2 epochs: check the script")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    if not args.smoke and (args.data is None or not args.data.is_file()):
        parser.error("--data mnist.npz is needed (the GPU machine may reach no network)")

    deadline = time.monotonic() + args.budget
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="digitcnn-gpu-") as tmp:
        device = device_name(args.backends[0])
        print(f"device: {device}", file=sys.stderr)
        for backend, recipe, cache in plan(args.backends, args.recipes):
            root = Path(tmp) / backend  # one root per backend: its cache warms across runs
            if not root.exists():
                (root / "home").mkdir(parents=True)
                if args.data and not args.smoke:
                    (root / "data").mkdir()
                    shutil.copy(args.data, root / "data" / "mnist.npz")
            left = deadline - time.monotonic()
            if left < 10:
                rows.append({"run": recipe, "backend": backend, "cache": cache,
                             "error": "left out: over the budget"})  # fmt: skip
                continue
            overrides = [*RECIPES[recipe], *(SMOKE if args.smoke else [])]
            try:
                result = digitcnn_run(root, backend, overrides, timeout=left)
            except subprocess.TimeoutExpired:
                result = {"error": "stopped at the budget"}
            rows.append({"run": recipe, "backend": backend, "cache": cache, **result})
            print(f"{backend} {recipe} ({cache} cache): {result}", file=sys.stderr)
        left = deadline - time.monotonic()
        if "jax" in args.backends and left > 10:
            try:
                result = plain_keras(args.data, args.smoke, timeout=left)
            except subprocess.TimeoutExpired:
                result = {"error": "stopped at the budget"}
            work = "2 epochs on digits" if args.smoke else "5 epochs, batch 64"
            rows.append({"run": f"plain Keras ({work})", "backend": "jax", "cache": "-", **result})
    text = table(rows, device)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(text)
    (args.out / "gpu.json").write_text(json.dumps({"device": device, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
