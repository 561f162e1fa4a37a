"""Per-job overhead of a launcher: the same sweep with joblib and on a Ray cluster.

    python bench/launchers.py --jobs 8 --parallel 2

The Ray side starts a one-node cluster here (`ray start --head --num-cpus P`, as
tests/servers.py does) and sends the sweep to it. For each launcher: the sweep's wall time,
the time its jobs spent inside the job function (timings.json: start-up of the job's process
excluded), and the overhead per job, (wall x parallel - time in jobs) / jobs: launching,
imports in fresh worker processes, Hydra's per-job set-up, idle slots. Writes
bench/launchers.json and bench/launchers.md.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.servers import RayCluster  # noqa: E402


def run_sweep(launcher: list[str], args, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="digitcnn-launch-") as tmp:
        root = Path(tmp)
        cmd = [
            sys.executable, "-m", "digitcnn.run", "-m", *launcher, "dataset=digits",
            f"trainer.epochs={args.epochs}", f"seed=range(0,{args.jobs})",
        ]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=root, env=env | {"DIGITCNN_ROOT": str(root), "HOME": str(root)},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"{' '.join(launcher)} failed:\n{proc.stderr[-3000:]}")
        inside = [
            json.loads(p.read_text())["job_seconds"]
            for p in root.glob("multirun/*/*/*/timings.json")
        ]
    assert len(inside) == args.jobs, f"{len(inside)} jobs wrote timings"
    return {
        "sweep_seconds": wall,
        "seconds_in_jobs": sum(inside),
        "overhead_per_job_seconds": (wall * args.parallel - sum(inside)) / args.jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "launchers"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    results = {
        "joblib": run_sweep(
            ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.parallel}"], args, env
        )
    }
    with tempfile.TemporaryDirectory(prefix="digitcnn-ray-home-") as home:
        cluster = RayCluster(Path(home), cpus=args.parallel)
        try:
            cluster.start(workers=0)
            ray_env = env | cluster.driver_env
            results["ray"] = run_sweep(["hydra/launcher=ray"], args, ray_env)
        finally:
            cluster.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        f"Machine: {machine}; {args.jobs} jobs of dataset=digits trainer.epochs={args.epochs}, "
        f"{args.parallel} at a time.",
        "",
        "| launcher | sweep (s) | in jobs (s) | overhead per job (s) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['sweep_seconds']:.1f} | {r['seconds_in_jobs']:.1f} | "
            f"{r['overhead_per_job_seconds']:.1f} |"
        )
    overhead = {name: r["overhead_per_job_seconds"] for name, r in results.items()}
    extra = overhead["ray"] - overhead["joblib"]
    lines += ["", f"Ray against joblib: {extra:+.1f} s per job."]
    Path(f"{args.out}.json").write_text(json.dumps({"machine": machine, **results}, indent=2))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
