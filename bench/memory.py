"""Peak memory of a default run against the plain Keras script, for one backend.

    python bench/memory.py --data ~/.keras/datasets/mnist.npz            # TensorFlow, 5 epochs
    KERAS_BACKEND=jax python bench/memory.py --data … --backend jax
    python bench/memory.py --epochs 1 --dataset digits                   # a smoke check

Each side runs once, alone, as a process tree: the plain script (bench/plain_keras.py, the
same model, split sizes and batch size as `python -m digitcnn.run`) and digitcnn's default run
(`python -m digitcnn.run`: the training process and its recorder process). The tree is sampled
every 0.1 s from /proc; reported per process, its peak resident set (VmHWM, the kernel's own
high-water mark, so no sample can miss it), and for the tree, the largest sum at one sample
of resident sets (RSS: shared libraries counted in each process) and of proportional sets
(PSS: each shared page split among the processes that map it, so the sum is what the tree
really holds). Writes bench/memory.json and .md (`--out` another stem). Figures are for
reading, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitcnn.tracking import service as recorder

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc's children lists."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tasks = Path(f"/proc/{pid}/task").iterdir()
            for task in tasks:
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # it ended between two reads
            continue
    return found


def _name(pid: int) -> str:
    """What the process runs: a forked recorder keeps its parent's command line, its name is
    its own."""
    if Path(f"/proc/{pid}/comm").read_bytes().strip() == recorder.NAME:
        return recorder.__name__
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    module = [w for w in words if w.startswith(b"digitcnn.") or w.endswith(b".py")]
    return (module[-1] if module else words[0]).decode()


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd`; its processes' peaks and the tree's, in MiB."""
    with tempfile.TemporaryFile() as said:  # not a pipe: a full one would stop the process
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=said, stderr=subprocess.STDOUT)
        started = time.perf_counter()
        peaks, rss_sum, pss_sum = _sample(proc)
        seconds = time.perf_counter() - started
        if proc.returncode:
            said.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{said.read().decode()[-3000:]}")
    return {
        "processes": sorted(peaks.values(), key=lambda p: -p["peak_rss_mib"]),
        "tree_rss_mib": rss_sum / 1024,
        "tree_pss_mib": pss_sum / 1024,
        "seconds": seconds,
    }


def _sample(proc: subprocess.Popen) -> tuple[dict[int, dict], int, int]:
    """Until `proc` ends: each process's peak, the largest sums of RSS and PSS (KiB)."""
    peaks: dict[int, dict] = {}
    rss_sum = pss_sum = 0
    while proc.poll() is None:
        rss_now = pss_now = 0
        for pid in _tree(proc.pid):
            try:
                hwm, rss, pss = _status_kib(pid, "VmHWM"), _status_kib(pid, "VmRSS"), _pss_kib(pid)
                name = peaks.get(pid, {}).get("name") or _name(pid)
            except (OSError, ValueError):
                continue
            peaks[pid] = {"name": name, "peak_rss_mib": hwm / 1024}
            rss_now, pss_now = rss_now + rss, pss_now + pss
        rss_sum, pss_sum = max(rss_sum, rss_now), max(pss_sum, pss_now)
        time.sleep(0.1)
    return peaks, rss_sum, pss_sum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Keras-layout mnist.npz (default: --dataset digits)")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--epochs", type=int, default=5, help="5: a default run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "memory", help="file stem")
    args = parser.parse_args()
    if args.dataset == "mnist" and not args.data:
        raise SystemExit("--data mnist.npz is needed for --dataset mnist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"KERAS_BACKEND": args.backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    plain = [sys.executable, str(REPO / "bench" / "plain_keras.py"), "--epochs", str(args.epochs)]
    plain += ["--data", args.data] if args.dataset == "mnist" else ["--val-size", "180"]
    with tempfile.TemporaryDirectory() as root:
        ours = [sys.executable, "-m", "digitcnn.run", f"trainer.epochs={args.epochs}"]
        ours += [f"backend={args.backend}", "tracking.experiment=memory"]
        ours += [f"dataset.path={args.data}"] if args.dataset == "mnist" else ["dataset=digits"]
        results = {
            "plain Keras script": measure(plain, env),
            "digitcnn default run": measure(ours, env | {"DIGITCNN_ROOT": root}),
        }
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "backend": args.backend,
        "epochs": args.epochs,
        "dataset": args.dataset,
        "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    table = "\n".join(_table(args.backend, args.epochs, results)) + "\n"
    args.out.with_suffix(".md").write_text(table)
    print(table, end="")


def _table(backend: str, epochs: int, results: dict) -> list[str]:
    base = results["plain Keras script"]["tree_pss_mib"]
    lines = [
        f"| {backend}, {epochs} epochs | tree PSS (MiB) | x plain | tree RSS (MiB) "
        "| peak RSS per process (MiB) | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for side, r in results.items():
        each = ", ".join(f"{Path(p['name']).name} {p['peak_rss_mib']:.0f}" for p in r["processes"])
        lines.append(
            f"| {side} | {r['tree_pss_mib']:.0f} | {r['tree_pss_mib'] / base:.2f} "
            f"| {r['tree_rss_mib']:.0f} | {each} | {r['seconds']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    main()
