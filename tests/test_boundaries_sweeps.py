"""A sweep's job and a search's trial: stopped at every boundary between its steps, then
resumed, each records what an uninterrupted one does, each step once (see tests/boundaries.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.boundaries import SIGNALS, differences, records, stopped, uninterrupted
from tests.conftest import failure_report, run_cli

SWEEP = ("-m", "experiment=quick", "trainer.epochs=2", "tracking.experiment=walk", "seed=1,2")
JOB_CHAIN = ("epoch-2@job1", "trained@job1", "tested@job1", "model@job1", "results@job1")


def _sweep_resume(root: Path, args: tuple[str, ...]) -> tuple[str, ...]:
    first = sorted(root.glob("multirun/*/*"))[0]  # a resumed sweep logs to a folder of its own
    return (*args, f"resume={first}")


def _walk_sweep(root: Path, args: tuple[str, ...], chain, first: int) -> None:
    for i, point in enumerate(chain):
        signum = SIGNALS[(first + i) % 2]
        where, _, job = point.partition("@")
        fault = {"DIGITCNN_FAULT": f"{where}:{signum.name}@{job}"}
        proc = run_cli(root, *(args if i == 0 else _sweep_resume(root, args)), env=fault)
        stopped(proc, signum, where)
    proc = run_cli(root, *_sweep_resume(root, args))
    assert proc.returncode == 0, failure_report(proc)


def test_a_sweep_job_stopped_at_every_boundary_records_what_an_uninterrupted_sweep_does(
    tmp_path,
):
    root = tmp_path / "stopped"
    root.mkdir()
    _walk_sweep(root, SWEEP, JOB_CHAIN, first=1)
    assert not differences(records(root, "walk"), uninterrupted(tmp_path, SWEEP, "walk"))


SEARCH = (
    "-m",
    "hparams_search=optuna",
    "experiment=quick",
    "tracking.experiment=walk",
    "hydra.sweeper.n_trials=2",
)
# Every trial pruned after its first epoch (a floor no accuracy reaches): no candidate, so
# neither tested nor its model logged; or none pruned.
PRUNED = ("trainer.epochs=3", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01")
COMPLETE = ("trainer.epochs=2", "hydra/sweeper/pruner=none")
CHAINS = {
    "pruned": ("trained@job1", "results@job1"),
    "complete": ("trained@job1", "tested@job1", "model@job1", "results@job1"),
}


@pytest.mark.parametrize("ending", [PRUNED, COMPLETE], ids=["pruned", "complete"])
def test_a_search_trial_stopped_at_every_boundary_records_what_an_uninterrupted_search_does(
    tmp_path, ending
):
    args = (*SEARCH, *ending)
    root = tmp_path / "stopped"
    root.mkdir()
    _walk_sweep(root, args, CHAINS["pruned" if ending is PRUNED else "complete"], first=0)
    stopped = records(root, "walk")
    if ending is PRUNED:  # each trial pruned once, after its first epoch, and not tested
        for job in ("job 0", "job 1"):
            assert ("optuna.pruned_at_epoch", "1") in stopped[job]["tags"], stopped[job]["tags"]
            assert stopped[job]["metrics"]["val_accuracy"] == [1]
            assert "test_accuracy" not in stopped[job]["metrics"] and not stopped[job]["models"]
    assert not differences(stopped, uninterrupted(tmp_path, args, "walk"))
