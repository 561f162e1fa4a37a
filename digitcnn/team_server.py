"""A team's MLflow server: runs in a database (PostgreSQL), artifacts served by the server
itself, users and permissions from MLflow's basic-auth app, its tables in the same database.

    export MLFLOW_AUTH_ADMIN_PASSWORD=...      # the admin's password, set on first start
    export MLFLOW_FLASK_SERVER_SECRET_KEY=...  # signs the auth app's forms (CSRF)
    export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PW@db:5432/mlflow
    python -m digitcnn.team_server --artifacts /srv/mlflow-artifacts --host 0.0.0.0 --port 5000

This writes the auth app's settings (database, default permission READ, admin user name) to a
private temporary folder, removed when the server stops, and runs `mlflow server --app-name
digitcnn-team` (MLflow's basic-auth app with owned names and provenance: digitcnn.team.app)
with them in a process group of its own, which ends as a whole: on SIGTERM,
SIGINT or SIGHUP within STOP_SECONDS, and also when this process is killed. No secret is
on a command line. See docs/team.md for users, permissions and clients.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from digitcnn.core.errors import InputError
from digitcnn.core.extras import require

REQUIRED_ENV = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "the admin user's password (used when the user store is new)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "a long random string that signs the auth app's forms",
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m digitcnn.team_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        help="database URI for runs and users, without a password (PGPASSWORD or ~/.pgpass "
        "give it), e.g. postgresql://mlflow@db-host/mlflow; default: MLFLOW_BACKEND_STORE_URI",
    )
    parser.add_argument(
        "--artifacts",
        required=True,
        help="where the server keeps artifacts: a folder, s3://, gs://, ...",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument(
        "--allowed-hosts",
        default="",
        help="comma-separated names clients reach the server by (mlflow-host, "
        "mlflow.example.org); this machine's own names, localhost and private addresses are "
        "always allowed. MLflow refuses any other Host header (DNS rebinding).",
    )
    parser.add_argument(
        "--trusted-proxies",
        default="",
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For header names "
        "the client (for throttling wrong passwords per address); none by default: the "
        "connection's address counts, whatever a client sends",
    )
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--certfile",
        help="serve HTTPS with this certificate (PEM; a chain, or self-signed: clients then "
        "set MLFLOW_TRACKING_SERVER_CERT_PATH to it)",
    )
    parser.add_argument("--keyfile", help="the certificate's private key (PEM, mode 0600)")
    parser.add_argument(
        "--default-permission",
        default="READ",
        choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
        help="what every user may do on experiments they did not create",
    )
    return parser.parse_args(argv)


def auth_settings(store: str, default_permission: str, admin: str = "admin") -> str:
    """The basic-auth app's ini: its user tables in `store`, beside the runs. (MLflow reads it
    with configparser: a `%` in the URI, as in a percent-encoded password, is written `%%`.)"""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {store.replace('%', '%%')}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A password is checked by a slow hash (PBKDF2) on every request unless cached: a run
        # makes hundreds of requests. A changed password reaches other workers within 60 s.
        "auth_cache_ttl_seconds = 60\n"
    )


def command(args: argparse.Namespace) -> list[str]:
    """`mlflow server` with these settings; the store comes from MLFLOW_BACKEND_STORE_URI in
    its environment, never from its command line (which every local user sees in `ps`)."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proxies = ",".join(p.strip() for p in args.trusted_proxies.split(",") if p.strip())
    # uvicorn takes X-Forwarded-For from loopback unless told otherwise
    uvicorn = [f"--forwarded-allow-ips={proxies}" if proxies else "--no-proxy-headers"]
    if args.certfile:
        uvicorn += ["--ssl-certfile", args.certfile, "--ssl-keyfile", args.keyfile]
    return [
        mlflow, "server",
        "--artifacts-destination", args.artifacts,
        "--serve-artifacts",
        "--app-name", "digitcnn-team",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
        "--uvicorn-opts", shlex.join(uvicorn),
    ]  # fmt: skip


def _check_tls(args: argparse.Namespace) -> None:
    """HTTPS needs both files and a private key; plain HTTP beyond loopback is said aloud:
    basic auth sends the user's password with every request."""
    if bool(args.certfile) != bool(args.keyfile):
        _fail("--certfile and --keyfile go together")
    if args.keyfile:
        for name in (args.certfile, args.keyfile):
            if not Path(name).is_file():
                _fail(f"{name} does not exist")
        if Path(args.keyfile).stat().st_mode & 0o077:
            _fail(f"--keyfile {args.keyfile} is readable by other users: chmod 600 it")
    elif not _is_loopback(args.host):
        print(
            f"warning: serving plain HTTP on {args.host}: passwords cross the network in clear "
            "text; give --certfile and --keyfile, or put a TLS proxy in front",
            file=sys.stderr,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(names: str) -> list[str]:
    """The Host headers the server answers: MLflow's defaults (localhost, private addresses),
    this machine's names and `names`, each with any port."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    own = {socket.gethostname(), socket.getfqdn()}
    given = {n.strip() for n in names.split(",") if n.strip()}
    extra = sorted(own | given)
    return [*get_default_allowed_hosts(), *extra, *(f"{name}:*" for name in extra)]


CONNECT_SECONDS = 10  # how long the start waits for the database to answer, once


def _check_store(store: str) -> None:
    """Fail now, in one line, when the store's database does not answer within
    CONNECT_SECONDS: MLflow would retry for minutes, then print a traceback."""
    import sqlalchemy

    from digitcnn.tracking.describe import redact

    options = {"connect_timeout": CONNECT_SECONDS} if store.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(
            store, connect_args=options, poolclass=sqlalchemy.pool.NullPool
        )
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _fail(f"the store {redact(store)} does not answer ({redact(reason)}): start its database, "
              "or fix MLFLOW_BACKEND_STORE_URI / --store")  # fmt: skip


def _stale_admin_password(store: str, admin: str = "admin") -> None:
    """Say so when MLFLOW_AUTH_ADMIN_PASSWORD is not the admin's password in an existing user
    store: MLflow uses the variable only when it creates the store, and would ignore a new
    value in silence."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    users = SqlAlchemyStore()
    users.init_db(store)  # what the server does first: creates the user tables if missing
    password = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if users.has_user(admin) and not users.authenticate_user(admin, password):
        print(
            "warning: MLFLOW_AUTH_ADMIN_PASSWORD is not the admin's password in this store, "
            "and MLflow sets it only when it creates the store: the admin keeps the old one "
            "(change it as the admin with the auth client's update_user_password)",
            file=sys.stderr,
        )
    users.engine.dispose()


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _store(args: argparse.Namespace) -> str:
    """The store URI: `--store` without a password, or MLFLOW_BACKEND_STORE_URI (the
    environment of a process is readable by its user and root only)."""
    store = args.store or os.environ.get("MLFLOW_BACKEND_STORE_URI")
    if not store:
        _fail("give the store: --store postgresql://USER@HOST/DB, or MLFLOW_BACKEND_STORE_URI")
    if args.store and urllib.parse.urlsplit(args.store).password:
        _fail(
            "--store carries a password, which every local user sees in `ps`: export "
            "MLFLOW_BACKEND_STORE_URI=... instead, or give --store without it and the password "
            "in PGPASSWORD or ~/.pgpass (mode 0600)"
        )
    return store


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line and with a non-zero status, when the address is taken: MLflow's
    server would log the error and still exit 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            _fail(f"--host {host} --port {port} cannot be served: {exc.strerror}")


# Ends the server's process group once this process is gone, however it ended (SIGKILL
# too): its standard input is a pipe whose writing end only this process holds. In a session
# of its own, it ignores the signals meant for the server. Then it removes the server's
# private folder (the auth settings hold the store's URI), also after a SIGKILL of this one.
_WATCHDOG = """
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
group, wait, private = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]

def alive():  # a process of the group that is not a zombie (Linux: /proc; else any)
    try:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
        return False
    except OSError:
        try:
            os.killpg(group, 0)
            return True
        except ProcessLookupError:
            return False

sys.stdin.buffer.read()
try:
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
shutil.rmtree(private, ignore_errors=True)
"""
STOP_SECONDS = 3.0  # a stop waits this long for the server's workers, then kills them


def _serve(cmd: list[str], env: dict[str, str], private: str) -> int:
    """Run the server in a process group of its own, watched; a stop signal ends the whole
    group within STOP_SECONDS and removes the folder `private`; returns the server's exit
    status (0 after such a stop)."""
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    read_end, write_end = os.pipe()
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(server.pid), str(STOP_SECONDS), private],
        stdin=read_end,
        start_new_session=True,
    )
    os.close(read_end)
    stopping = []

    def stop(signum: int, frame) -> None:
        if not stopping:
            stopping.append(signum)
            os.close(write_end)  # the watchdog ends the group: SIGTERM, then SIGKILL

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    code = server.wait()
    stop(0, None)  # the server ended by itself: what it left running goes too
    watchdog.wait()
    if stopping[0]:  # ended by a stop signal: as asked
        return 0
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    try:
        require("team", "python -m digitcnn.team_server")
    except InputError as exc:
        _fail(str(exc))
    store = _store(args)
    missing = [f"{key} ({what})" for key, what in REQUIRED_ENV.items() if not os.environ.get(key)]
    if missing:
        _fail(f"set {'; '.join(missing)}")
    _check_tls(args)
    _check_port(args.host, args.port)
    _check_store(store)
    _stale_admin_password(store)
    os.umask(0o077)  # what the server writes (served artifacts, logs) is its user's alone
    if "://" not in args.artifacts:
        Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    # The auth app's settings hold the store's URI: in a private folder, removed at the end.
    with tempfile.TemporaryDirectory(prefix="digitcnn-auth-", ignore_cleanup_errors=True) as folder:
        settings = Path(folder) / "basic_auth.ini"
        settings.write_text(auth_settings(store, args.default_permission))
        env = os.environ | {
            "MLFLOW_AUTH_CONFIG_PATH": str(settings),
            "DIGITCNN_TEAM_THROTTLE": str(Path(folder) / "wrong-passwords.db"),
            "MLFLOW_BACKEND_STORE_URI": store,
            "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(allowed_hosts(args.allowed_hosts)),
            # MLflow's job runner (GenAI jobs: scorers, prompt optimisation, trace rollups)
            # is not used by a digits team: it would add 8 processes, each importing MLflow
            # and polling, and the /ajax-api/3.0/jobs routes.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        code = _serve(command(args), env, folder)
    sys.exit(code)


if __name__ == "__main__":
    main()
