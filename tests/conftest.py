"""Shared helpers: compose configs as Hydra does, and run the real CLI in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from digitcnn import paths
from digitcnn.config import register_configs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _registered() -> None:
    register_configs()


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> the composed DictConfig, as a job would see it (its output
    folder, which Hydra's runtime would name, under tmp_path)."""

    def _compose(overrides: list[str] = ()):
        with initialize_config_dir(str(paths.config_dir()), version_base="1.3"):
            return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'job'}"])

    return _compose


def cli_env(root: Path) -> dict[str, str]:
    """An environment whose project root (store, outputs, data cache) is `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(DIGITCNN_ROOT=str(root), PYTHONUNBUFFERED="1")
    return env


def run_cli(
    root: Path,
    *args: str,
    module: str = "digitcnn.run",
    cwd: Path | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """`python -m digitcnn.run ARGS` with its store under `root`."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or root,
        env=cli_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failure_report(proc: subprocess.CompletedProcess) -> str:
    """What a failed command said that matters: every line naming an error or a failure
    (a sweep's job can fail long before its last output), then the tails of both streams."""
    both = f"{proc.stdout or ''}\n{proc.stderr or ''}"
    flagged = [ln for ln in both.splitlines() if re.search(r"error|failed|traceback", ln, re.I)]
    return "\n".join(
        [
            "-- lines naming an error --",
            *flagged[:40],
            "-- stdout tail --",
            (proc.stdout or "")[-1500:],
            "-- stderr tail --",
            (proc.stderr or "")[-2500:],
        ]
    )


def store_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlruns/mlflow.db"


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(store_uri(root))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], env: dict[str, str], health_url: str, timeout: float = 180):
    """Run `python ARGS` as a server in its own process group until `health_url` answers;
    stop the whole group afterwards."""
    env = env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # uvicorn
    server = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(health_url, timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, f"{args} exited with {server.returncode}"
                assert time.monotonic() < deadline, f"{health_url} did not answer"
                time.sleep(0.5)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
