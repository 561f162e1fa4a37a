"""A team's MLflow server: runs in a database (PostgreSQL), artifacts served by the server
itself, users and permissions from MLflow's basic-auth app, its tables in the same database.

    export MLFLOW_AUTH_ADMIN_PASSWORD=...      # the admin's password, set on first start
    export MLFLOW_FLASK_SERVER_SECRET_KEY=...  # signs the auth app's forms (CSRF)
    python -m digitcnn.team_server --store postgresql://mlflow:PW@db:5432/mlflow \\
        --artifacts /srv/mlflow-artifacts --host 0.0.0.0 --port 5000

This writes the auth app's settings (database, default permission READ, admin user name) to a
private temporary file and runs `mlflow server --app-name basic-auth` with them; see
docs/team.md for users, permissions, TLS and clients.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

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
        required=True,
        help="database URI for runs and users, e.g. postgresql://user:pw@host/db",
    )
    parser.add_argument(
        "--artifacts",
        required=True,
        help="where the server keeps artifacts: a folder, s3://, gs://, ...",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
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
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow, "server",
        "--backend-store-uri", args.store,
        "--artifacts-destination", args.artifacts,
        "--serve-artifacts",
        "--app-name", "basic-auth",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    missing = [f"{key} ({what})" for key, what in REQUIRED_ENV.items() if not os.environ.get(key)]
    if missing:
        raise SystemExit(f"error: set {'; '.join(missing)}")
    if "://" not in args.artifacts:
        Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    settings = Path(tempfile.mkdtemp(prefix="digitcnn-auth-")) / "basic_auth.ini"
    settings.write_text(auth_settings(args.store, args.default_permission))  # folder is 0700
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(settings)
    cmd = command(args)
    os.execv(cmd[0], cmd)  # the server replaces this process: signals reach it directly


if __name__ == "__main__":
    main()
