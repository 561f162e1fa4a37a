"""Plain Keras against digitcnn, alternately (A B A B ...), on the same data and settings.

    python bench/compare.py --pairs 3 --epochs 3            # MNIST from the data cache
    python bench/compare.py --dataset digits --pairs 1 --epochs 2   # a smoke check
    python bench/compare.py --backend jax --pairs 3 --epochs 1 --limit 15000   # JAX on both sides
    python bench/compare.py --pairs 3 --epochs 1 --limit 20000 --val-size 0 --kernel-size 3 \
        --padding valid --dense-dropout 0.5 --schedule constant   # a short job's fixed cost

Writes bench/results.json and bench/results.md (medians and per-pair ratios of steady-state
images/s, time to the end of the first epoch, overhead outside `fit`, Hydra composition time,
time in MLflow calls). Timings are for reading, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - started


def baseline(args, data: Path | None, env) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "bench" / "plain_keras.py"),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--val-size",
        str(args.val_size),
        "--kernel-size",
        str(args.kernel_size),
        "--padding",
        args.padding,
        "--dense-dropout",
        str(args.dense_dropout),
        "--schedule",
        args.schedule,
    ]
    if data:
        cmd += ["--data", str(data)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    out, wall = _run(cmd, env)
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "steady_images_per_second": r["steady_images_per_second"],
        "fit_seconds": r["fit_seconds"],
        "first_epoch_done_seconds": r["fit_start_seconds"] + r["first_epoch_seconds"],
        "overhead_seconds": r["process_seconds"]
        - r["fit_seconds"]
        - r["startup_seconds"]
        - r["import_seconds"],
        "import_seconds": r["import_seconds"],
        "compose_seconds": 0.0,
        "mlflow_seconds": 0.0,
        "process_seconds": r["process_seconds"],
        "wall_seconds": wall,
        "test_accuracy": r["test_accuracy"],
    }


def framework(args, data: Path | None, env, root: Path) -> dict:
    overrides = [
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"dataset.val_size={args.val_size}",
        f"model.kernel_size={args.kernel_size}",
        f"model.padding={args.padding}",
        f"model.dense_dropout={args.dense_dropout}",
        f"optimizer.schedule={args.schedule}",
        f"backend={args.backend}",
        "tracking.experiment=bench",
    ]
    overrides += [f"dataset.limit={args.limit}"] if args.limit else []
    overrides += [f"dataset.path={data}"] if data else ["dataset=digits"]
    before = set(root.glob("outputs/*/*"))
    _, wall = _run(
        [sys.executable, "-m", "digitcnn.run", *overrides], env | {"DIGITCNN_ROOT": str(root)}
    )
    (folder,) = set(root.glob("outputs/*/*")) - before
    t = json.loads((folder / "timings.json").read_text())
    imports = t["startup_seconds"] - t["compose_seconds"] + t["import_seconds"]
    process = t["startup_seconds"] + t["job_seconds"]
    return {
        "steady_images_per_second": t.get("steady_images_per_second"),
        "fit_seconds": t["fit_seconds"],
        "first_epoch_done_seconds": t["fit_start_seconds"] + t["first_epoch_seconds"],
        "overhead_seconds": process - t["fit_seconds"] - imports,
        "import_seconds": t["import_seconds"],
        "compose_seconds": t["compose_seconds"],
        "mlflow_seconds": t["mlflow_seconds"] + t["mlflow_preflight_seconds"],
        "process_seconds": process,
        "wall_seconds": wall,
    }


ROWS = [
    ("steady_images_per_second", "steady-state training images/s (epochs after the first)", 0),
    ("fit_seconds", "Keras `fit`, compilation included (s)", 1),
    ("first_epoch_done_seconds", "time to the end of the first epoch (s)", 1),
    ("overhead_seconds", "process time outside `fit`, imports excluded (s)", 2),
    ("import_seconds", "imports after start-up: Keras, TensorFlow (both), MLflow (s)", 2),
    ("compose_seconds", "Hydra composition (s)", 2),
    ("mlflow_seconds", "all MLflow calls (s)", 2),
    ("process_seconds", "whole process, as the process measured it (s)", 1),
    ("wall_seconds", "whole process, wall clock from launch to exit (s)", 1),
]


def markdown(results: dict) -> str:
    pairs = results["pairs"]
    lines = [
        f"Machine: {results['machine']}; {results['config']}; {len(pairs)} pairs, run A B A B.",
        "",
        "| measure | plain Keras (median) | digitcnn (median) | ratio per pair |",
        "|---|---|---|---|",
    ]
    for key, label, digits in ROWS:
        a = [p["baseline"][key] for p in pairs]
        b = [p["framework"][key] for p in pairs]
        if None in a + b:  # steady state needs a second epoch
            lines.append(f"| {label} | - | - | - |")
            continue
        ratios = ", ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=True) if x) or "-"
        lines.append(
            f"| {label} | {statistics.median(a):.{digits}f} | "
            f"{statistics.median(b):.{digits}f} | {ratios} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default="tensorflow")
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--limit", type=int, help="dataset.limit for both sides")
    parser.add_argument("--val-size", type=int, help="default: 5000 (mnist), 180 (digits)")
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--padding", choices=("same", "valid"), default="same")
    parser.add_argument("--dense-dropout", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / "data" / "mnist.npz",
        help="the MNIST .npz both sides read (fetch it with one digitcnn run)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if args.val_size is None:
        args.val_size = 5000 if args.dataset == "mnist" else 180
    data = args.data.resolve() if args.dataset == "mnist" else None
    if data and not data.is_file():
        raise SystemExit(f"{data} not found: run `python -m digitcnn.run` once to fetch MNIST")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["KERAS_BACKEND"] = args.backend  # both sides

    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            pair = {
                "baseline": baseline(args, data, env),
                "framework": framework(args, data, env, Path(tmp)),
            }
            pairs.append(pair)
            print(f"pair {i + 1}/{args.pairs}: " + json.dumps(pair), flush=True)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "config": f"Keras on {args.backend}, {args.dataset}, {args.epochs} epochs, "
        f"batch {args.batch_size}, "
        f"limit {args.limit}, val_size {args.val_size}, kernel {args.kernel_size} "
        f"{args.padding}, dense dropout {args.dense_dropout}, {args.schedule} rate",
        "pairs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
