"""Where runs are recorded: the store, its creation under a lock, its checks and refusals."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import ssl
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import NamedTuple

import mlflow
from filelock import FileLock
from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

from digitcnn.core import paths
from digitcnn.core.config import is_server, tracking_user
from digitcnn.core.config_groups import TrackingConfig
from digitcnn.core.errors import InputError
from digitcnn.core.runtime import mlflow_defaults
from digitcnn.tracking.describe import local_folder, redact, sqlite_path

mlflow_defaults()  # before MLflow reads its settings: no bars, no URL, short retries

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _experiment(client: MlflowClient, cfg: TrackingConfig) -> Experiment:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment
    location = cfg.artifact_location
    if location and "://" not in location and not location.startswith("mlflow-artifacts:"):
        location = Path(location).expanduser().resolve().as_uri()
    try:  # no location: the server's default (mlflow-artifacts:/ when it serves artifacts)
        experiment_id = client.create_experiment(cfg.experiment, location)
    except mlflow.exceptions.MlflowException:
        # A parallel job created it between our look-up and our create.
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        return experiment
    return client.get_experiment(experiment_id)


def import_store_modules(uri: str) -> None:
    """Import what MLflow needs for `uri` now: a database store pulls in SQLAlchemy and Alembic
    and maps its tables on first use (~0.5 s), import time better counted as such."""
    if urllib.parse.urlsplit(uri).scheme.split("+")[0] in DATABASE_SCHEMES:
        import_module("mlflow.store.tracking.sqlalchemy_store")


class Store(NamedTuple):
    """An open tracking store and the experiment a job records into."""

    client: MlflowClient
    experiment: str
    experiment_id: str
    artifact_location: str  # the experiment's, fixed when it was created
    system_metrics_seconds: float = 0  # tracking.system_metrics_seconds (0: none)


def refusal(exc: Exception, experiment: str) -> str | None:
    """What a tracking server's refusal means for the user, in one line; None when `exc` is
    not a refusal (401: who you are; 403: what you may do, or a name the server does not
    answer to)."""
    code = getattr(exc, "error_code", None)
    user = tracking_user()
    if "Invalid Host header" in str(exc):  # MLflow's server: not a name it was told it has
        return (
            "the server does not answer to this name (403 Invalid Host header); start it "
            "with --allowed-hosts NAME (MLFLOW_SERVER_ALLOWED_HOSTS), or use a name it has"
        )
    if code == "UNAUTHENTICATED":
        if not user:
            return "the server wants a user: set MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD"
        return (
            f"the server refused user {user!r}: check MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD"
        )
    if code == "PERMISSION_DENIED":
        return (
            f"tracking.experiment={experiment!r}: user {user!r} may not write to it (an "
            "experiment's owner grants EDIT); name another experiment"
        )
    return None


@contextmanager
def _store_creation(uri: str) -> Iterator[None]:
    """One process at a time for what may create a SQLite store: MLflow creates and migrates
    its tables when the first client on a new file is made, and runs started side by side on
    a new store would otherwise each try ("table ... already exists")."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


_DAMAGED = ("malformed", "not a database", "file is encrypted", "database corrupt")
_READ_ONLY = ("readonly database", "read-only", "unable to open database file", "permission")


def damage(exc: BaseException, uri: str) -> str | None:
    """What is wrong with a SQLite store's file, in one line with what to do; None when
    `exc` says nothing of the file (a refusal, a server's error)."""
    db = sqlite_path(uri)
    message = str(exc).lower()
    if db is None:
        return None
    if any(words in message for words in _DAMAGED):
        return (
            f"the store's database {db} is damaged ({str(exc).splitlines()[0].split(') ')[-1]}):"
            f" restore it from a backup, or move it aside (mv {db} {db}.damaged) and a new, "
            "empty store is made"
        )
    if any(words in message for words in _READ_ONLY):
        return (
            f"the store's database {db} cannot be written: give this user write access to "
            "the file and its folder, and check that neither is immutable (lsattr)"
        )
    if "database is locked" in message:
        return (
            f"the store's database {db} stayed locked by another process; retry once it is "
            "done, or give parallel jobs a server (see docs/team.md)"
        )
    return None


@contextmanager
def _usable(uri: str) -> Iterator[None]:
    """A store whose file is damaged, read-only or locked: one line (an `InputError`) naming
    the file and what to do, instead of the database driver's traceback."""
    try:
        yield
    except Exception as exc:
        reason = damage(exc, uri)
        if reason is None:
            raise
        raise InputError(f"tracking.uri={redact(uri)!r}: {reason}") from None


def _check_writable(uri: str) -> None:
    """Write to a SQLite store's file once, changing nothing (its `user_version` set to what
    it is): a file that can be read but not written (immutable, on a read-only mount, or
    denied to this user) fails here, before any run exists, not when the run opens."""
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return
    with _usable(uri), contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        connection.execute(f"PRAGMA user_version = {int(version)}")
        connection.commit()


def tracking_client(uri: str) -> MlflowClient:
    """A client on `uri`, the store created (once, under the lock) if it is new."""
    with _usable(uri), _store_creation(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # reads the file: damage shows here
        return client


def client_for(cfg: TrackingConfig) -> Store:
    """A client on `cfg.uri` and `cfg.experiment`, both created if missing; the fluent API
    (`mlflow.start_run`) is pointed at the same store."""
    mlflow.set_tracking_uri(cfg.uri)
    with _usable(cfg.uri), _store_creation(cfg.uri):
        client = MlflowClient(cfg.uri)
        experiment = _experiment(client, cfg)
    return Store(
        client,
        cfg.experiment,
        experiment.experiment_id,
        experiment.artifact_location,
        cfg.system_metrics_seconds,
    )


def _tls() -> ssl.SSLContext:
    """The TLS settings MLflow's client uses: a server's own certificate (self-signed, or a
    private CA's) from MLFLOW_TRACKING_SERVER_CERT_PATH, no check with
    MLFLOW_TRACKING_INSECURE_TLS=true."""
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def preflight(cfg: TrackingConfig) -> Store:
    """Open the store, failing early with the key named when it cannot be reached or its
    artifact folder cannot be written: before data is loaded and before any run exists."""
    shown = redact(cfg.uri)
    if is_server(cfg.uri):
        try:
            parts = urllib.parse.urlsplit(cfg.uri)  # /health needs no credentials
            health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path="/health")
            urllib.request.urlopen(health.geturl(), timeout=5, context=_tls()).close()
        except (OSError, ValueError) as exc:
            if isinstance(getattr(exc, "reason", exc), ssl.SSLCertVerificationError):
                raise InputError(
                    f"tracking.uri={shown!r}: the server's certificate is not trusted "
                    f"({exc.reason.verify_message}): set MLFLOW_TRACKING_SERVER_CERT_PATH to "
                    "its certificate, or its CA's"
                ) from None
            raise InputError(
                f"tracking.uri={shown!r} is not reachable ({redact(str(exc))}); start the "
                "MLflow server or fix the address"
            ) from None
    try:
        store = client_for(cfg)
        _check_writable(cfg.uri)
        location = store.artifact_location
    except (OSError, mlflow.exceptions.MlflowException) as exc:
        reason = refusal(exc, cfg.experiment) or f"cannot be used: {redact(str(exc))}"
        raise InputError(f"tracking.uri={shown!r}: {reason}") from None
    folder = local_folder(location)
    if folder is not None:  # a server's (mlflow-artifacts:/2) is the server's business
        try:
            paths.ensure_writable(folder)
        except OSError as exc:
            raise InputError(
                f"tracking.artifact_location={str(folder)!r} (experiment {cfg.experiment!r}) "
                f"cannot be written: {exc.strerror}"
            ) from None
    return store
