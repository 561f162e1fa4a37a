"""Shared helpers: compose configs as Hydra does, and run the real CLI in a subprocess.

The suite is hermetic: it never reads or writes the user's home. Before anything imports Keras
or MLflow, HOME points at a throwaway folder (each test then gets its own, and so does each
CLI process), MLflow's and Keras's environment variables are dropped, and at the end of the
session the real home's Keras, MLflow and digitcnn folders are checked to be as they were.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

# Before Keras (which writes ~/.keras/keras.json on import) or MLflow are imported.
REAL_HOME = Path.home()
os.environ["HOME"] = tempfile.mkdtemp(prefix="digitcnn-test-home-")
atexit.register(shutil.rmtree, os.environ["HOME"], ignore_errors=True)
# Every command in a new interpreter, none forked from the warm one (tests/warm_cli.py).
FRESH_ENV = "DIGITCNN_TEST_FRESH_INTERPRETER"
ALL_FRESH = os.environ.get(FRESH_ENV) == "1"
for _name in [n for n in os.environ if n.startswith(("MLFLOW_", "KERAS_", "DIGITCNN_"))]:
    del os.environ[_name]
# The commands the tests start take Ctrl-C as from a terminal, however the suite was started:
# a background job of a non-interactive shell (`.ci/run &`) inherits SIGINT ignored, and a
# command keeps a signal ignored at its start (digitcnn.core.stops, as `nohup`).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Matplotlib's font cache is shared by the session's processes: not the user's, built once.
os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="digitcnn-test-mpl-")
atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from digitcnn.core import faults, paths  # noqa: E402
from digitcnn.core.config import register_configs  # noqa: E402
from digitcnn.tracking.service import NAME as RECORDER_NAME  # noqa: E402
from tests.warm_cli import (  # noqa: E402
    WarmInterpreter,
    WarmInterpreterUnavailable,
    WarmProcess,
)

REPO = Path(__file__).resolve().parents[1]
ON_LINUX = sys.platform.startswith("linux")
# What in the user's home a test could touch: Keras's cache and config, MLflow's defaults,
# an installed digitcnn's root.
_WATCHED = (".keras", ".mlflow", "mlruns", "mlflow.db", "digitcnn", "outputs", "multirun")


def _home_state() -> dict[str, tuple[int, int]]:
    state = {}
    for name in _WATCHED:
        top = REAL_HOME / name
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if path.exists():
                info = path.stat()
                state[str(path)] = (info.st_size, info.st_mtime_ns)
    return state


_HOME_AT_START = _home_state()


def pytest_sessionfinish(session, exitstatus) -> None:
    changed = sorted(set(_home_state().items()) ^ set(_HOME_AT_START.items()))
    if changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nthe suite changed the user's home: {sorted({p for p, _ in changed})}")


# `--dist loadfile` hands whole files to the test processes in collection order
# (`--no-loadscope-reorder`): the files that take longest on 2 cores go first, so that none
# starts last and runs alone (their times: docs/performance.md, The test suite).
LONGEST_FIRST = (
    "test_team", "test_use", "test_ray", "test_slurm", "test_boundaries_sweeps", "test_boundaries",
    "test_sweep", "test_search", "test_ui_e2e", "test_faults", "test_team_gate", "test_reliability",
    "test_stops", "test_backends", "test_bench", "test_cli",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable within a file


@pytest.fixture(scope="session", autouse=True)
def _registered() -> None:
    register_configs()


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory, monkeypatch) -> None:
    """Each test its own empty home: a user's ~/.keras (or anything else there) cannot leak in."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> the composed DictConfig, as a job would see it (its output
    folder, which Hydra's runtime would name, under tmp_path)."""

    def _compose(overrides: list[str] = ()):
        with initialize_config_dir(str(paths.config_dir()), version_base="1.3"):
            return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'job'}"])

    return _compose


# A new SQLite store costs its first process MLflow's schema migrations (about 0.7 s of CPU).
# Each root a command is started in gets a copy of one store made by digitcnn at the start of
# the session, as a project whose store was made by its first run; the tests marked
# `new_store` (runs that race to create one) start with no store at all.
_store_template: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _a_store_to_copy(tmp_path_factory) -> None:
    global _store_template
    from digitcnn.tracking import tracking_client

    template = tmp_path_factory.mktemp("store-template")
    tracking_client(store_uri(template))
    _store_template = template / "mlruns"


@pytest.fixture(autouse=True)
def _new_store_when_marked(request, monkeypatch) -> None:
    if request.node.get_closest_marker("new_store"):
        monkeypatch.setattr(sys.modules[__name__], "_store_template", None)


def _seed_store(root: Path) -> None:
    """The session's empty store under `root`, unless it has one (or a test wants none)."""
    if _store_template is None or (root / "mlruns").exists():
        return
    try:
        shutil.copytree(_store_template, root / "mlruns")
    except OSError:  # a root a test made unwritable: the command finds no store, as a user's
        shutil.rmtree(root / "mlruns", ignore_errors=True)
        return
    with closing(sqlite3.connect(root / "mlruns" / "mlflow.db")) as db, db:
        # the default experiment's folder, as MLflow names it for a store made from `root`
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(root / "mlruns" / "0"),),
        )


def cli_env(root: Path) -> dict[str, str]:
    """An environment whose project root (store, outputs, data cache) is `root`, and whose
    home is `root/home`: nothing the CLI does reaches the user's home."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    _seed_store(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERAS_"))}
    env.update(DIGITCNN_ROOT=str(root), HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def run_cli(
    root: Path,
    *args: str,
    module: str = "digitcnn.run",
    cwd: Path | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """`python -m digitcnn.run ARGS` with its store under `root` (`env`: added variables;
    `fresh`: in a new interpreter, not forked from the warm one: tests/warm_cli.py)."""
    warm = _warm_for(args, env or {}, fresh)
    env = cli_env(root) | (env or {})
    if warm is None:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd or root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    proc = WarmProcess(warm, module, list(args), cwd or root, env, merged=False)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# What only a new interpreter shows (tests/warm_cli.py): the cold start's imports and what they
# print, a backend other than the warm one's TensorFlow, variables read at start-up or import.
_COLD_START_ENV = ("PYTHON", "KERAS_", "TF_", "OMP_", "MKL_", "KMP_", "CUDA_", "LC_", "LANG",
                   "MLFLOW_CONFIGURE_LOGGING", "MLFLOW_LOGGING_LEVEL",  # read by `import mlflow`
                   "DIGITCNN_VERBOSE_IMPORT")  # fmt: skip
# The warm interpreter's environment: the suite's, before any test changes it.
_WARM_ENV = dict(os.environ)
_warm_interpreter: WarmInterpreter | None = None
_warm_unavailable = False


def _warm_for(
    args: tuple[str, ...], added_env: dict[str, str], fresh: bool
) -> WarmInterpreter | None:
    """The warm interpreter to fork a command from, or None to start it cold (`added_env`: the
    variables the test adds to the suite's)."""
    cold = (
        fresh
        or not ON_LINUX
        or ALL_FRESH
        or _warm_unavailable
        or os.environ.get(FRESH_ENV) == "1"  # a test marked fresh_interpreter
        or any(name.startswith(_COLD_START_ENV) for name in added_env)
        or any(a.startswith("backend=") and a != "backend=tensorflow" for a in args)
    )
    return None if cold else _warm()


def _warm() -> WarmInterpreter | None:
    """This test process's warm interpreter, started on first use (again if it ended), closed
    at the process's end; None where it cannot serve (TensorFlow sees a GPU)."""
    global _warm_interpreter, _warm_unavailable
    if _warm_interpreter is None or not _warm_interpreter.alive():
        # Short (a socket's path), and 0700: no other user can ask it to run a command.
        folder = Path(tempfile.mkdtemp(prefix="digitcnn-warm-"))
        try:
            _warm_interpreter = WarmInterpreter(folder, _WARM_ENV)
        except WarmInterpreterUnavailable:
            _warm_unavailable = True
            return None
        atexit.register(_warm_interpreter.close)
    return _warm_interpreter


@pytest.fixture(autouse=True)
def _fresh_interpreter_when_marked(request, monkeypatch) -> None:
    if request.node.get_closest_marker("fresh_interpreter"):
        monkeypatch.setenv(FRESH_ENV, "1")


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
    """A client on the store under `root`; made under the store's lock, as digitcnn makes its
    own, so that a test looking at a store that a running command creates cannot race it."""
    from digitcnn.tracking import tracking_client

    return tracking_client(store_uri(root))


def runs_of(root: Path, experiment: str) -> list:
    """The runs of `experiment` in the store under `root`, oldest first."""
    client = client_for(root)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], order_by=["start_time ASC"])


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


def only_run(root: Path, experiment: str):
    client = client_for(root)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def start_cli(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    own_group: bool = False,
    fresh: bool = False,
) -> subprocess.Popen | WarmProcess:
    """`python -m digitcnn.run ARGS` started in the background, its output in one pipe;
    `own_group`: in a process group of its own (signals sent to the group reach only it);
    `fresh`: in a new interpreter, not forked from the warm one (tests/warm_cli.py)."""
    warm = _warm_for(args, env or {}, fresh)
    env = cli_env(root) | (env or {})
    if warm is not None:
        return WarmProcess(warm, "digitcnn.run", list(args), root, env, True, own_group)
    return subprocess.Popen(
        [sys.executable, "-m", "digitcnn.run", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
    )


def wait_for_epoch(root: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The output folder of the only run under `root`, once its checkpoint has `epoch`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in root.glob("outputs/*/*/checkpoint/state.json"):
            if json.loads(state.read_text())["epoch"] >= epoch:
                return state.parent.parent
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of epoch {epoch}")


class Hold:
    """A run held at a named fault point (`DIGITCNN_FAULT=POINT:HOLD`, digitcnn.core.faults):
    `env` arms it (in sweep job `job` only, if given; `Hold.together` arms several);
    `wait(proc)` returns the pid of the process waiting there; `release()` lets it go on.
    Whatever the test does in between happens exactly at that point."""

    def __init__(self, folder: Path, point: str, job: int | None = None) -> None:
        self.file = faults.hold_file(folder, point, job)
        self.fault = faults.spec(point, faults.HOLD, job)
        self.env = {faults.ENV: self.fault, faults.HOLD_FOLDER_ENV: str(folder)}

    @staticmethod
    def together(*holds: Hold) -> dict[str, str]:
        """The environment that arms all of `holds` (made with the same folder)."""
        return holds[0].env | {faults.ENV: ",".join(hold.fault for hold in holds)}

    def wait(self, proc: subprocess.Popen, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while not self.file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
            assert time.monotonic() < deadline, f"nothing reached {self.file.name}"
            time.sleep(0.02)
        return int(self.file.read_text())

    def release(self) -> None:
        self.file.unlink()


def _recorder(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of process `pid` if it is a live recorder process (named
    digitcnn-record), else None."""
    try:
        name, _, rest = Path(f"/proc/{pid}/stat").read_bytes().partition(b" (")[2].rpartition(b") ")
    except OSError:
        return None  # ended
    fields = rest.split()
    if name != RECORDER_NAME or fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[19])


def recorder_processes(pid: int) -> dict[int, int]:
    """The live recorder processes of process `pid`, its children named digitcnn-record:
    {recorder pid: its start time} (Linux's /proc, else none are found). Taken while `pid`
    lives: a recorder its parent left would be another's child."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        recorder = _recorder(int(stat.parent.name))
        if recorder is not None and recorder[0] == pid:
            found[int(stat.parent.name)] = recorder[1]
    return found


def recorders_end(recorders: dict[int, int], timeout: float = 10) -> bool:
    """Whether these recorder processes (from `recorder_processes`) are all gone within
    `timeout` s, whoever their parent is by then."""

    def alive(pid: int, started: int) -> bool:  # the same process, not a new one with its pid
        found = _recorder(pid)
        return found is not None and found[1] == started

    deadline = time.monotonic() + timeout
    while any(alive(pid, started) for pid, started in recorders.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on a free loopback port: (port, store folder, its
    process, the leader of a process group of its own)."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    args = [
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{store}/mlflow.db",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--workers",
        "1",
    ]
    env = cli_env(tmp_path) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI jobs
    with serving(args, env, f"http://127.0.0.1:{port}/health") as server:
        yield port, store, server


@pytest.fixture(scope="session")
def postgres_cluster():
    """One PostgreSQL cluster for the session's tests (each of its test processes): a test
    takes a database of its own with `postgres_cluster.database()`."""
    from tests.servers import PostgresCluster, postgres_bin

    if postgres_bin() is None and os.environ.get("CI") != "true":
        pytest.skip("apt-get install postgresql")
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def team(tmp_path_factory, postgres_cluster):
    """One team server for the module, on a database of the session's PostgreSQL; alice and
    bob are users (default permission READ: each may read, not write, the other's
    experiments)."""
    from tests.servers import TeamServer
    from tests.teammates import ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD

    folder = tmp_path_factory.mktemp("team")
    store = postgres_cluster.database()
    server = TeamServer(store, folder / "served-artifacts", folder / "server.log")
    server.start()
    try:
        server.add_user(ALICE, ALICE_PASSWORD)
        server.add_user(BOB, BOB_PASSWORD)
        yield server
    finally:
        server.stop()
