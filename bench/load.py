"""Many jobs recording at once: a sweep of N jobs, P at a time, into SQLite and into the team
server (MLflow with basic auth on PostgreSQL, as docs/team.md starts it).

    python bench/load.py --jobs 16 --parallel 4          # both stores, one after the other

Checks that nothing is lost (every run FINISHED, the same params in each, every epoch's
metrics, every artifact, one logged model per run) and reports MLflow calls per second and
the latency per call (median, p95) from each job's timings.json. Writes bench/load.json and
bench/load.md. Needs Debian's PostgreSQL for the server half (apt-get install postgresql).
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
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.servers import TeamServer, postgres  # noqa: E402

USER, PASSWORD = "loadtest", "load-test-password-1"
ARTIFACTS = {"confusion_matrix.png", "confusion_matrix.csv", "classification_report.json",
             "learning_curves.png", "misclassified.png", "config", "logs"}  # fmt: skip


def sweep(root: Path, args, uri: str | None, env: dict[str, str]) -> float:
    cmd = [
        sys.executable, "-m", "digitcnn.run", "-m", "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={args.parallel}", "dataset=digits",
        f"trainer.epochs={args.epochs}", f"seed=range(0,{args.jobs})", "tracking.experiment=load",
    ]  # fmt: skip
    if uri:
        cmd.append(f"tracking.uri={uri}")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"the sweep failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def lost(uri: str, args) -> list[str]:
    """What the store lacks of what the sweep should have recorded."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("load")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    problems = [] if len(children) == args.jobs else [f"{len(children)} runs of {args.jobs}"]
    params = {len(r.data.params) for r in children}
    if len(params) != 1:
        problems.append(f"param counts differ: {sorted(params)}")
    for run in children:
        run_id = run.info.run_id
        if run.info.status != "FINISHED":
            problems.append(f"{run_id} {run.info.status}")
        steps = {m.step for m in client.get_metric_history(run_id, "val_accuracy")}
        if steps != set(range(1, args.epochs + 1)):
            problems.append(f"{run_id} epochs {sorted(steps)}")
        missing = ARTIFACTS - {a.path for a in client.list_artifacts(run_id)}
        if missing:
            problems.append(f"{run_id} lacks {sorted(missing)}")
    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models([experiment.experiment_id], output_format="list")
    if len({m.source_run_id for m in models}) != args.jobs:
        problems.append(f"{len(models)} logged models for {args.jobs} runs")
    return problems


def latencies(root: Path) -> dict[str, list[float]]:
    """Every MLflow call's seconds, by MLflow function, over the sweep's jobs."""
    calls: dict[str, list[float]] = {}
    for path in root.glob("multirun/*/*/*/timings.json"):
        for name, seconds in json.loads(path.read_text())["mlflow_call_seconds"].items():
            calls.setdefault(name, []).extend(seconds)
    return calls


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "calls": len(ordered),
        "median_seconds": statistics.median(ordered),
        "p95_seconds": ordered[int(0.95 * (len(ordered) - 1))],
    }


def measure(store: str, args) -> dict:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digitcnn-load-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {"DIGITCNN_ROOT": str(root), "HOME": str(root)}
        if store == "server":
            database = stack.enter_context(postgres())
            server = TeamServer(database, root / "served", root / "server.log")
            server.start()
            stack.callback(server.stop)
            server.add_user(USER, PASSWORD)
            uri = server.url
            env |= {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
            os.environ.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        else:
            uri = f"sqlite:///{root}/mlruns/mlflow.db"
        wall = sweep(root, args, uri if store == "server" else None, env)
        calls = latencies(root)
        every = [s for seconds in calls.values() for s in seconds]
        return {
            "store": store,
            "sweep_seconds": wall,
            "calls_per_second": len(every) / wall,
            "all": summary(every),
            "by_function": {name: summary(seconds) for name, seconds in sorted(calls.items())},
            "lost": lost(uri, args),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "server"])
    parser.add_argument("--out", default=str(REPO / "bench" / "load"))
    args = parser.parse_args()
    results = [measure(store, args) for store in args.stores]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        f"Machine: {machine}; {args.jobs} jobs, {args.parallel} at a time (joblib), "
        f"dataset=digits trainer.epochs={args.epochs}.",
        "",
        "| store | sweep (s) | MLflow calls | calls/s (sweep) | lost | call | n | median (ms) "
        "| p95 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = (
            f"| {r['store']} | {r['sweep_seconds']:.1f} | {r['all']['calls']} | "
            f"{r['calls_per_second']:.1f} | {len(r['lost']) or 'nothing'} "
        )
        for name, c in [("every call", r["all"]), *r["by_function"].items()]:
            lines.append(
                f"{head}| {name} | {c['calls']} | {1000 * c['median_seconds']:.0f} | "
                f"{1000 * c['p95_seconds']:.0f} |"
            )
            head = "| | | | | "
    record = {"machine": machine, "results": results}
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for r in results:
        for problem in r["lost"]:
            print(f"{r['store']}: {problem}")


if __name__ == "__main__":
    main()
