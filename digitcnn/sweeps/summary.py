"""What a finished sweep produced, as tables and a figure: pure pandas, no MLflow."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from digitcnn.evaluation.figures import objective_figure

METRICS = ("val_accuracy", "test_accuracy", "test_loss", "macro_f1", "train_seconds")
LOWER_IS_BETTER = {"val_loss", "loss", "test_loss"}


@dataclass(frozen=True)
class JobRecord:
    job: int
    run_id: str
    status: str
    overrides: list[str]  # this job's own overrides, as Hydra gave them
    metrics: dict[str, float]
    pruned_at_epoch: int | None = None  # an Optuna trial stopped early by the pruner
    ended_at: int = 0  # when its run ended (ms since the epoch; 0: still open)


def _parse(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(records: Iterable[JobRecord]) -> list[str]:
    """The override keys whose values differ between jobs, in the order they first appear."""
    values: dict[str, set[str]] = {}
    for record in records:
        for key, value in map(_parse, record.overrides):
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]


def jobs_table(records: list[JobRecord], objective: str) -> pd.DataFrame:
    """One row per job: its overrides, status (and, in a search that pruned, the epoch a
    pruned job stopped after), objective and test metrics, run id."""
    rows = []
    searched = any(r.pruned_at_epoch is not None for r in records)
    for r in sorted(records, key=lambda r: r.job):
        row = {"job": r.job, "overrides": " ".join(r.overrides), "status": r.status}
        if searched:
            row["pruned_at_epoch"] = r.pruned_at_epoch if r.pruned_at_epoch is not None else ""
        for metric in dict.fromkeys((objective, *METRICS)):
            row[metric] = r.metrics.get(metric, np.nan)
        row["run_id"] = r.run_id
        rows.append(row)
    return pd.DataFrame(rows).set_index("job")


def best_job(table: pd.DataFrame, objective: str) -> pd.Series | None:
    """The finished job with the best objective (a validation metric, never the test set);
    a pruned job is no candidate: its objective is that of an early epoch."""
    finished = table[(table["status"] == "FINISHED") & table[objective].notna()]
    if "pruned_at_epoch" in finished:
        finished = finished[finished["pruned_at_epoch"] == ""]
    if finished.empty:
        return None
    index = (
        finished[objective].idxmin()
        if objective in LOWER_IS_BETTER
        else (finished[objective].idxmax())
    )
    return finished.loc[index]


def seed_aggregate(records: list[JobRecord]) -> pd.DataFrame:
    """Mean and standard deviation of each metric over finished jobs that differ only in
    `seed`; one row per combination of the other swept values."""
    finished = [r for r in records if r.status == "FINISHED"]
    varied = [k for k in swept_keys(finished) if k != "seed"]
    rows = []
    for r in finished:
        values = dict(map(_parse, r.overrides))
        label = " ".join(f"{k}={values.get(k, '')}" for k in varied) or "(all jobs)"
        rows.append({"config": label, **{m: r.metrics.get(m, np.nan) for m in METRICS}})
    if not rows:
        return pd.DataFrame()
    groups = pd.DataFrame(rows).groupby("config", sort=False)
    aggregate = groups.agg(["mean", "std"])
    aggregate.columns = [f"{metric}_{stat}" for metric, stat in aggregate.columns]
    aggregate.insert(0, "runs", groups.size())
    return aggregate


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (pandas' own needs the optional `tabulate`)."""
    frame = table.reset_index()

    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def objective_plot(records: list[JobRecord], objective: str) -> Figure:
    """The objective against each swept parameter, one panel per parameter."""
    keys = swept_keys(records) or ["job"]
    finished = [r for r in records if r.status == "FINISHED" and objective in r.metrics]
    series = {}
    for key in keys:
        points = []
        for r in finished:
            value = str(r.job) if key == "job" else dict(map(_parse, r.overrides)).get(key)
            if value is not None:
                points.append((value, r.metrics[objective]))
        series[key] = points
    return objective_figure(series, objective)


def stamp(ended_ms: Iterable[int]) -> int:
    """The timestamp a sweep's (or a search's) summary metrics are logged with: when the last
    of its jobs ended (`ended_ms`, each job's end in ms). A resumed sweep whose jobs did not
    change logs the same rows again, which MLflow stores once; one whose jobs changed logs a
    later row, the summary's latest value."""
    return max(ended_ms, default=0) or 1
