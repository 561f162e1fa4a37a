"""Sweeps on a real Ray cluster: a head and a second node on this machine, started with
`ray start` as on a team's machines; `hydra/launcher=ray` sends the jobs there."""

from __future__ import annotations

import pytest

from tests.conftest import Hold, client_for, failure_report, run_cli, runs_of, start_cli
from tests.servers import RayCluster

SHORT = ["dataset=digits", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes with one CPU and one GPU each, as Ray counts them (Ray takes `--num-gpus` at
    its word: a job that reserves a GPU gets CUDA_VISIBLE_DEVICES, CPU builds ignore it)."""
    ray = RayCluster(tmp_path_factory.mktemp("ray-home"), cpus=1, gpus=1)
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
        "hydra.launcher.ray.remote.num_gpus=1",
        "tracking.register_as=ray-digits",
        env=cluster.driver_env,
        timeout=600,
    )
    assert proc.returncode == 0, failure_report(proc)
    (parent,), children = children_and_parent(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    assert parent.data.tags["sweep.launcher"] == "RayLauncher"
    assert sorted(c.data.tags["sweep.job"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    # One CPU (and one GPU) per node and per job: the two jobs ran at once, one on each node,
    # each with the GPU it reserved.
    assert len({c.data.tags["ray.node_id"] for c in children}) == 2
    assert all(c.data.tags["ray.gpu_ids"] == "0" for c in children)
    assert all(c.data.params["derived.intra_op_threads"] == "1" for c in children)
    # The sweep's records, as with the other launchers: seed statistics, the champion alias.
    assert "test_accuracy_mean" in parent.data.metrics
    champion = client_for(tmp_path).get_model_version_by_alias("ray-digits", "champion")
    assert champion.run_id == parent.data.tags["best.run_id"]


def test_a_node_that_dies_mid_sweep_costs_no_job_and_no_duplicate(tmp_path_factory, tmp_path):
    """Stop the node a job trains on, held there after its epoch 2 (a named fault point,
    armed in the jobs through the launcher's runtime_env): Ray runs the job again on a node
    that joins later, which continues the job's run from its checkpoint; the sweep ends with
    each job once. The head takes no job, so the job is on the node that is stopped."""
    hold = Hold(tmp_path, "epoch-2", job=0)
    in_jobs = "+hydra.launcher.ray.init.runtime_env.env_vars"
    ray = RayCluster(tmp_path_factory.mktemp("ray-home"), cpus=1)
    try:
        ray.start(workers=1, head_cpus=0)
        sweep = start_cli(
            tmp_path, "-m", "hydra/launcher=ray", *SHORT, "trainer.epochs=3", "seed=1,2",
            *(f'{in_jobs}.{name}="{value}"' for name, value in hold.env.items()),
            env=ray.driver_env,
        )  # fmt: skip
        hold.wait(sweep)
        ray.stop_node(ray.nodes[1])  # the only node that runs jobs, mid-job
        ray.add_node()
        output, _ = sweep.communicate(timeout=600)
    finally:
        ray.stop()
    assert sweep.returncode == 0, output[-4000:]
    (parent,), children = children_and_parent(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    counted = [c for c in children if c.data.tags.get("sweep.superseded") != "true"]
    assert sorted(c.data.params["seed"] for c in counted) == ["1", "2"]
    assert all(c.info.status == "FINISHED" for c in counted)
    (interrupted,) = [c for c in counted if c.data.tags["sweep.job"] == "0"]
    assert interrupted.data.tags["resumed_after_epoch"] == "2"
    history = client_for(tmp_path).get_metric_history(interrupted.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]  # every epoch once


def test_two_optuna_sweeps_on_ray_share_one_study_in_postgresql_and_prune(
    cluster, tmp_path, postgres_cluster
):
    """Optuna on the Ray launcher, trials in parallel on the cluster's nodes, the study in
    PostgreSQL: two sweep processes on one study add their trials to it, none lost; the jobs
    report each epoch to the study from their nodes, and its pruner stops some of them."""
    import optuna

    database = postgres_cluster.database()
    sweep = [
        "-m", "hparams_search=optuna",
        "hydra/launcher=ray", "dataset=digits", "trainer.epochs=3",
        f"hydra.sweeper.storage={database}", "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
        # past its first epoch only a trial that is the best so far there
        "hydra.sweeper.pruner.reduction_factor=100", "hydra.sweeper.pruner.n_startup_trials=0",
    ]  # fmt: skip
    procs = [start_cli(tmp_path, *sweep, env=cluster.driver_env) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    study = optuna.load_study(study_name="shared", storage=database)
    trials = study.get_trials(deepcopy=False)
    states = sorted(t.state.name for t in trials)
    assert len(trials) == 6 and {"COMPLETE", "PRUNED"} == set(states), states
    parents, children = children_and_parent(tmp_path)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["optuna.state"] for c in children} == {"COMPLETE", "PRUNED"}
    assert all("ray.node_id" in c.data.tags for c in children)
    # Each trial's value is its run's last validation accuracy; each epoch was reported.
    by_run = {c.info.run_id: c for c in children}
    for trial in trials:
        run = by_run[trial.user_attrs["mlflow.run_id"]]
        assert run.data.tags["optuna.trial"] == str(trial.number)
        state = trial.state.name
        epochs = 3 if state == "COMPLETE" else int(run.data.tags["optuna.pruned_at_epoch"])
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(run.data.metrics["val_accuracy"])
