"""Sweeps on a real Ray cluster: a head and a second node on this machine, started with
`ray start` as on a team's machines; `hydra/launcher=ray` sends the jobs there."""

from __future__ import annotations

import pytest

from tests.conftest import failure_report, run_cli, runs_of
from tests.servers import RayCluster

SHORT = ["dataset=digits", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = RayCluster(tmp_path_factory.mktemp("ray-home"), cpus=1)
    try:
        ray.start(workers=1)
        yield ray
    finally:
        ray.stop()


def children_and_parent(root, experiment="digitcnn"):
    runs = runs_of(root, experiment)
    parents = [r for r in runs if "sweep.dir" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_a_sweep_runs_its_jobs_on_the_clusters_nodes(cluster, tmp_path):
    proc = run_cli(
        tmp_path,
        "-m",
        "hydra/launcher=ray",
        *SHORT,
        "seed=1,2",
        env={"RAY_ADDRESS": cluster.address, "RAY_TMPDIR": str(cluster.temp)},
        timeout=600,
    )
    assert proc.returncode == 0, failure_report(proc)
    (parent,), children = children_and_parent(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    assert parent.data.tags["sweep.launcher"] == "RayLauncher"
    assert sorted(c.data.tags["sweep.job"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    # One CPU per node and one per job: the two jobs ran at once, one on each node.
    assert len({c.data.tags["ray.node_id"] for c in children}) == 2
    assert all(c.data.params["derived.intra_op_threads"] == "1" for c in children)
