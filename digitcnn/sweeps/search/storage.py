"""Where a study lives: a database every job of the search reaches (SQLite beside the MLflow
store by default, PostgreSQL for a team)."""

from __future__ import annotations

from pathlib import Path

from digitcnn.core.errors import InputError

SQLITE_WAIT_SECONDS = 60  # jobs in parallel processes take turns writing one SQLite file


def open_storage(url: str):
    """Optuna's storage at `url`, its tables created when new."""
    import optuna

    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def checked_storage(url: str):
    """`open_storage`, or a one-line error naming the key when the database cannot be used."""
    from digitcnn.tracking.describe import redact

    if not url or "://" not in url:
        raise InputError(
            f"hydra.sweeper.storage={url!r} is not allowed: a database URL, "
            "sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    try:
        return open_storage(url)
    except Exception as exc:  # SQLAlchemy's and the driver's: unreachable, refused, unknown
        raise InputError(
            f"hydra.sweeper.storage={redact(url)!r} cannot be used: "
            f"{redact(str(exc).splitlines()[0])}"
        ) from None
