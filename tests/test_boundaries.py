"""A single run: stopped at every boundary between its steps, then resumed, it records what an
uninterrupted one does, each step once (see tests/boundaries.py)."""

from __future__ import annotations

import pytest

from tests.boundaries import SIGNALS, differences, records, stopped, uninterrupted
from tests.conftest import failure_report, run_cli

SINGLE = ("experiment=quick", "trainer.epochs=2", "tracking.experiment=walk")
SINGLE_CHAIN = ("epoch-1", "epoch-2", "trained", "tested", "model", "results", "closed")


@pytest.fixture(scope="module")
def uninterrupted_single(tmp_path_factory) -> dict:
    """The record both walks are compared with: made once."""
    return uninterrupted(tmp_path_factory.mktemp("single"), SINGLE, "walk")


@pytest.mark.parametrize("first", [0, 1], ids=["SIGTERM-first", "SIGKILL-first"])
def test_a_single_run_stopped_at_every_boundary_records_what_an_uninterrupted_run_does(
    tmp_path, first, uninterrupted_single
):
    root = tmp_path / "stopped"
    root.mkdir()

    def resume() -> tuple[str, ...]:
        (checkpoint,) = root.glob("outputs/*/*/checkpoint")  # resumes log to folders of their own
        return (f"resume={checkpoint.parent}",)

    for i, point in enumerate(SINGLE_CHAIN):
        signum = SIGNALS[(first + i) % 2]
        fault = {"DIGITCNN_FAULT": f"{point}:{signum.name}"}
        proc = run_cli(root, *(SINGLE if i == 0 else resume()), env=fault)
        stopped(proc, signum, point)
    after = run_cli(root, *resume())  # nothing is left: one line says so
    assert after.returncode == 2 and "Traceback" not in after.stderr, failure_report(after)

    assert not differences(records(root, "walk"), uninterrupted_single)
