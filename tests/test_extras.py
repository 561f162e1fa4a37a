"""A command that needs an optional extra that is not installed says which, in one line, before
Hydra writes a folder, any data is read or any run is opened. The extras cannot be uninstalled
for a test, so each command runs with their modules hidden from Python's import system."""

from __future__ import annotations

import os

import pytest

from tests.conftest import failure_report, run_cli

HIDE = '''
import importlib.abc, os, sys

HIDDEN = set(os.environ["DIGITCNN_TEST_HIDDEN"].split(","))

class Hidden(importlib.abc.MetaPathFinder):
    """As if these packages were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name in HIDDEN or name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hidden())
'''


def _without(tmp_path, modules: str) -> dict[str, str]:
    """Variables that start Python with `modules` (comma-separated) hidden."""
    folder = tmp_path / "hide"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "DIGITCNN_TEST_HIDDEN": modules}


@pytest.mark.parametrize(
    ("hidden", "args", "named"),
    [
        ("ray,hydra_plugins.hydra_ray_launcher", ("-m", "hydra/launcher=ray", "seed=1,2"),
         "hydra/launcher=ray needs digitcnn's 'ray' extra"),
        ("submitit,hydra_plugins.hydra_submitit_launcher",
         ("-m", "hydra/launcher=submitit_slurm", "seed=1,2"),
         "hydra/launcher=submitit_slurm needs digitcnn's 'slurm' extra"),
        ("jax", ("backend=jax",), "backend=jax needs digitcnn's 'jax' extra"),
        ("torch", ("backend=torch",), "backend=torch needs digitcnn's 'torch' extra"),
        ("psycopg", ("tracking.uri=postgresql://mlflow@127.0.0.1:9/mlflow",),
         "tracking.uri=postgresql://... needs digitcnn's 'team' extra"),
        ("psycopg", ("-m", "hparams_search=optuna",
                     "hydra.sweeper.storage=postgresql://optuna@127.0.0.1:9/optuna"),
         "hydra.sweeper.storage=postgresql://... needs digitcnn's 'team' extra"),
    ],
)  # fmt: skip
@pytest.mark.new_store  # nothing written: not even the store a first run would make
def test_a_run_that_needs_a_missing_extra_says_which_before_anything(tmp_path, hidden, args, named):
    proc = run_cli(tmp_path, *args, "dataset=digits", env=_without(tmp_path, hidden))
    assert proc.returncode == 2, failure_report(proc)
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert named in line and "pip install -c requirements.lock -e '.[" in line, line
    assert "Traceback" not in proc.stderr
    # Nothing written: no output folder, no store, no data.
    assert not [p for p in tmp_path.iterdir() if p.name not in ("home", "hide")]


def test_the_team_server_without_its_extra_says_which(tmp_path):
    proc = run_cli(
        tmp_path,
        "--artifacts",
        str(tmp_path / "artifacts"),
        module="digitcnn.team_server",
        env=_without(tmp_path, "flask_wtf"),
    )
    assert proc.returncode == 2, failure_report(proc)
    assert proc.stderr.strip().splitlines() == [
        "error: python -m digitcnn.team_server needs digitcnn's 'team' extra, which is not "
        "installed: pip install -c requirements.lock -e '.[team]'"
    ]
    assert not (tmp_path / "artifacts").exists()
