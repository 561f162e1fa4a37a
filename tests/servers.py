"""Real servers for the team-store and cluster tests: Debian's PostgreSQL in a throwaway
cluster, MLflow's tracking server with basic auth on it, and a two-node Ray cluster. Each runs
in its own process group and is stopped with it; none reads or writes the user's home."""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-for-tests"


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (`apt-get install postgresql`), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return found[0].parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, its commands run as Debian's `postgres`."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class StoreURI(str):
    """A PostgreSQL cluster's SQLAlchemy URI, which can also stop and start the cluster (a
    database outage)."""

    def __new__(cls, uri: str, ctl: list[str], options: str) -> StoreURI:
        made = super().__new__(cls, uri)
        made.ctl, made.options = ctl, options
        return made

    def stop(self) -> None:
        subprocess.run(_as_postgres([*self.ctl, "-m", "fast", "-w", "stop"]), check=True)

    def start(self) -> None:
        subprocess.run(_as_postgres([*self.ctl, "-o", self.options, "-w", "start"]), check=True)


class PostgresCluster:
    """A new PostgreSQL cluster in a temporary folder (removed at `close`) on a free 127.0.0.1
    port, trust authentication. `database()` adds an empty database to it and gives its
    SQLAlchemy URI (psycopg 3): tests share one cluster, each with a database of its own."""

    def __init__(self) -> None:
        binaries = postgres_bin()
        assert binaries, "PostgreSQL is not installed (apt-get install postgresql)"
        self.binaries = binaries
        self.data = Path(tempfile.mkdtemp(prefix="digitcnn-postgres-"))  # reachable as postgres
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.data, account.pw_uid, account.pw_gid)
        self.port = free_port()
        self.options = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=300"
        )
        self.ctl = [str(binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log")]
        self.made = 0
        initdb = [str(binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        subprocess.run(_as_postgres(initdb), **_CHECKED)
        subprocess.run(_as_postgres([*self.ctl, "-o", self.options, "-w", "start"]), **_CHECKED)

    def database(self, name: str | None = None) -> StoreURI:
        self.made += 1
        name = name or f"db{self.made}"
        createdb = [str(self.binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
        subprocess.run([*createdb, "-U", "postgres", name], **_CHECKED)
        uri = f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
        return StoreURI(uri, self.ctl, self.options)

    def close(self) -> None:
        subprocess.run(_as_postgres([*self.ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.data, ignore_errors=True)


_CHECKED = {"check": True, "capture_output": True, "text": True}


@contextmanager
def postgres():
    """A cluster of its own with an empty database `mlflow` (for a test that stops the
    database: others share the session's, `postgres_cluster`); yields its `StoreURI`."""
    cluster = PostgresCluster()
    try:
        yield cluster.database("mlflow")
    finally:
        cluster.close()


def _answers(url: str, cafile: str | None = None) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2, context=ssl.create_default_context(cafile=cafile))
        return True
    except OSError:
        return False


class TeamServer:
    """`python -m digitcnn.team_server` on a PostgreSQL store, as docs/team.md starts it: the
    store's URI in MLFLOW_BACKEND_STORE_URI, never on a command line."""

    def __init__(
        self,
        store_uri: str,
        artifacts: Path,
        log_file: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.store_uri, self.artifacts, self.log_file = store_uri, artifacts, log_file
        self.host, self.port, self.tls = host, free_port(), tls
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return env | {
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-secret-key-for-tests",
            "MLFLOW_BACKEND_STORE_URI": self.store_uri,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **self.extra_env,
        }

    def arguments(self) -> list[str]:
        return [
            sys.executable, "-m", "digitcnn.team_server",
            "--artifacts", str(self.artifacts),
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "2",
            *(["--certfile", str(self.tls[0]), "--keyfile", str(self.tls[1])] if self.tls else []),
        ]  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        with open(self.log_file, "a") as log:
            self.process = subprocess.Popen(
                self.arguments(),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        cafile = str(self.tls[0]) if self.tls else None
        while not _answers(f"{self.url}/health", cafile):
            assert self.process.poll() is None, self.log_file.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.url} did not answer"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def api(
        self,
        endpoint: str,
        payload: dict,
        user: str = ADMIN,
        password: str = ADMIN_PASSWORD,
        method: str = "POST",
    ) -> dict:
        """Call the server's REST API as `user` (the auth app's user and permission routes)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{endpoint}",
            data=json.dumps(payload).encode(),
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{endpoint}: {exc.code} {exc.read().decode()[:500]}") from None
        return json.loads(body) if body else {}

    def add_user(self, name: str, password: str) -> None:
        self.api("users/create", {"username": name, "password": password})


def ray_bin() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


class RayCluster:
    """A head node and `workers` more nodes on this machine, each with `cpus` CPUs, started as
    a user starts them (`ray start --head`, `ray start --address=HEAD:PORT`), each in the
    foreground (`--block`) in its own process group so that it can be stopped alone."""

    def __init__(self, home: Path, cpus: int = 1, gpus: int = 0) -> None:
        # Ray's socket paths must stay short: its temporary folder is directly under /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="ray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus, self.gpus = cpus, gpus  # GPUs as Ray counts them: a machine may have none
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        self.env |= {"HOME": str(home), "RAY_TMPDIR": str(self.temp)}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.nodes: list[subprocess.Popen] = []

    def _start(self, *args: str, cpus: int | None = None) -> subprocess.Popen:
        cpus = self.cpus if cpus is None else cpus
        common = ["--block", "--num-cpus", str(cpus), "--num-gpus", str(self.gpus)]
        common += ["--object-store-memory", "100000000"]
        node = subprocess.Popen(
            [ray_bin(), "start", *args, *common],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.nodes.append(node)
        return node

    def _ask(self, expression: str) -> str | None:
        """Evaluate `expression` in a driver connected to the cluster (`ray` imported)."""
        probe = subprocess.run(
            [sys.executable, "-c",
             "import ray; ray.init(address='auto', logging_level='ERROR');"
             f"print({expression})"],
            env=self.env | {"RAY_ADDRESS": self.address},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 else None

    def nodes_alive(self) -> int:
        return int(self._ask("sum(n['Alive'] for n in ray.nodes())") or 0)

    def start(self, workers: int = 1, head_cpus: int | None = None, timeout: float = 120) -> None:
        """The head (with `head_cpus` CPUs for jobs, if given: 0 keeps jobs off it) and
        `workers` more nodes, once all are up."""
        head = ("--head", "--port", str(self.port), "--include-dashboard", "false")
        self._start(*head, cpus=head_cpus)
        for _ in range(workers):
            self._start("--address", self.address)
        self._wait_for_nodes(timeout)

    def add_node(self, timeout: float = 120) -> None:
        """One more worker node, once it is up."""
        self._start("--address", self.address)
        self._wait_for_nodes(timeout)

    def _wait_for_nodes(self, timeout: float) -> None:
        """Until Ray counts every node of `self.nodes` alive."""
        deadline = time.monotonic() + timeout
        while self.nodes_alive() < len(self.nodes):
            assert all(n.poll() is None for n in self.nodes), "a Ray node exited"
            assert time.monotonic() < deadline, "the Ray nodes did not come up"
            time.sleep(1)

    @property
    def driver_env(self) -> dict[str, str]:
        """What a sweep's process needs in its environment to send its jobs here."""
        return {"RAY_ADDRESS": self.address, "RAY_TMPDIR": str(self.temp)}

    def stop_node(self, node: subprocess.Popen) -> None:
        """SIGKILL to the node's processes; it is no longer one of `self.nodes`."""
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        self.nodes.remove(node)

    def stop(self) -> None:
        for node in reversed(list(self.nodes)):
            self.stop_node(node)
        shutil.rmtree(self.temp, ignore_errors=True)
