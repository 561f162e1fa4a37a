"""What a finished search shows on its parent run: the best trial (or the Pareto front), the
optimisation history, the parameter importances and each trial's curve, drawn with Optuna's
own functions; a table of every trial with its state and where it was pruned."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

log = logging.getLogger("digitcnn.sweeps.search")


def trials_table(trials: list) -> pd.DataFrame:
    """One row per trial: its state, objectives, epochs trained, pruning epoch, parameters and
    child run."""
    rows = []
    for t in trials:
        row = {"trial": t.number, "state": t.state.name}
        for i, value in enumerate(t.values or []):
            row[f"value_{i}" if i else "value"] = value
        row["epochs"] = _epochs(t)
        row["pruned_at_epoch"] = t.user_attrs.get("pruned_at_epoch", "")
        row |= {f"params.{k}": v for k, v in t.params.items()}
        row["run_id"] = t.user_attrs.get("mlflow.run_id")
        rows.append(row)
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def _epochs(trial) -> int:
    """The epochs a trial trained: those it reported (a study of several objectives takes no
    reports; its jobs note their count instead)."""
    from digitcnn.sweeps.search.trial import EPOCHS_ATTR

    return len(trial.intermediate_values) or trial.user_attrs.get(EPOCHS_ATTR, 0)


def _figures(study, names: list[str]) -> dict:
    """Optuna's matplotlib figures for this study; a figure it cannot draw yet (too few
    finished trials, no parameter that varies) is left out with a note in the log."""
    from optuna.visualization import matplotlib as plots

    wanted = {"intermediate_values.png": plots.plot_intermediate_values}
    if len(names) == 1:
        wanted["optimization_history.png"] = plots.plot_optimization_history
        wanted["param_importances.png"] = plots.plot_param_importances
    else:
        wanted["pareto_front.png"] = lambda s: plots.plot_pareto_front(s, target_names=names)
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for file, draw in wanted.items():
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:
                log.info("search: no %s (%s)", file, str(exc).splitlines()[0] if str(exc) else "")
                continue
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figures[file] = figure
    return figures


def _best(study, names: list[str]) -> list:
    try:
        return list(study.best_trials) if len(names) > 1 else [study.best_trial]
    except ValueError:  # no trial completed
        return []


def record(study, trials: list, client, parent: str, names: list[str]) -> None:
    """Log the search's figures, trials table, counts and best trial(s) on the parent run."""
    from digitcnn.sweeps.summary import markdown, stamp
    from digitcnn.tracking.runs import Recorder

    recorder = Recorder(client, parent, client.get_run(parent).info.artifact_uri)
    table = trials_table(trials)
    files = _figures(study, names)
    if not table.empty:
        files |= {"trials.csv": table, "trials.md": markdown(table)}
    best = _best(study, names)
    if best:
        files["best_trials.json"] = {
            "objectives": names,
            "best": [
                {
                    "trial": t.number,
                    "values": dict(zip(names, t.values, strict=True)),
                    "params": t.params,
                    "run_id": t.user_attrs.get("mlflow.run_id"),
                }
                for t in best
            ],
        }
    if len(names) == 1 and sum(t.state.name == "COMPLETE" for t in study.trials) > 1:
        import optuna

        try:
            files["param_importances.json"] = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as exc:
            log.info("search: no parameter importances (%s)", exc)
    recorder.log_files(files, folder="search")

    states = pd.Series([t.state.name for t in trials]).value_counts()
    metrics = {
        f"trials_{s.lower()}": float(states.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL")
    }
    metrics["epochs_trained"] = float(sum(_epochs(t) for t in trials))
    if len(names) == 1 and best:
        metrics[f"best_trial_{names[0]}"] = best[0].value
        recorder.log_tags({"search.best_trial": best[0].number})
    ended = (int(t.datetime_complete.timestamp() * 1000) for t in trials if t.datetime_complete)
    recorder.log_metrics(metrics, timestamp=stamp(ended))  # logged once however often resumed
    pruned = table[table["state"] == "PRUNED"] if not table.empty else table
    log.info(
        "search: %d trials, %d pruned (%s), %d epochs trained",
        len(trials),
        len(pruned),
        ", ".join(f"#{n} after epoch {e}" for n, e in pruned["pruned_at_epoch"].items()) or "none",
        metrics["epochs_trained"],
    )
    for t in best:
        log.info(
            "search: best trial #%d %s %s",
            t.number,
            dict(zip(names, t.values, strict=True)),
            t.params,
        )


def write_results(study, sweep_dir: Path, names: list[str]) -> None:
    """`optimization_results.yaml` in the sweep folder, as hydra-optuna-sweeper wrote it."""
    from digitcnn.core.disk import write_text_whole

    best = _best(study, names)
    if len(names) == 1:
        results = (
            {"name": "optuna", "best_params": best[0].params, "best_value": best[0].value}
            if best
            else {"name": "optuna"}
        )
    else:
        results = {
            "name": "optuna",
            "solutions": [{"params": t.params, "values": t.values} for t in best],
        }
    write_text_whole(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(results))
