"""Where a study lives: a database every job of the search reaches (SQLite beside the MLflow
store by default, PostgreSQL for a team)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from digitcnn.core.errors import InputError

SQLITE_WAIT_SECONDS = 60  # jobs in parallel processes take turns writing one SQLite file
SCHEMA_TRIES = 5  # a database server's processes creating one schema at once: all but one retry


def open_storage(url: str):
    """Optuna's storage at `url`, its tables created when new, also when several processes (two
    searches on one store, a search and a reader) open a new database at the same moment."""
    import optuna

    if not url.startswith("sqlite:///"):
        return _with_schema_retries(lambda: optuna.storages.RDBStorage(url))
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create_whole(path)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _create_whole(path: Path) -> None:
    """Make a new SQLite database's tables in a file of this process's own and link it into place
    in one step: the first process to link wins, the others' drafts are dropped, and no process
    ever sees (or adds to) half a schema."""
    import optuna

    draft = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        optuna.storages.RDBStorage(f"sqlite:///{draft}").engine.dispose()
        os.link(draft, path)
    except FileExistsError:
        pass  # another process linked its whole database first
    finally:
        draft.unlink(missing_ok=True)


def _with_schema_retries(open_it):
    """`open_it()`, again when it failed because another process was creating the same tables
    (PostgreSQL says a table or type already exists, or a unique key was taken): the next try
    finds them made."""
    import sqlalchemy.exc

    for attempt in range(1, SCHEMA_TRIES):
        try:
            return open_it()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            said = str(exc)
            if not any(sign in said for sign in ("already exists", "duplicate key", "UNIQUE")):
                raise
            time.sleep(0.2 * attempt)
    return open_it()


def checked_storage(url: str):
    """`open_storage`, or a one-line error naming the key when the database cannot be used."""
    from digitcnn.tracking.describe import redact

    if not url or "://" not in url:
        raise InputError(
            f"hydra.sweeper.storage={url!r} is not allowed: a database URL, "
            "sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    try:
        _check_whole(url)
        return open_storage(url)
    except Exception as exc:  # SQLAlchemy's and the driver's: unreachable, refused, unknown
        raise InputError(
            f"hydra.sweeper.storage={redact(url)!r} cannot be used: "
            f"{redact(str(exc).splitlines()[0])}"
        ) from None


def _check_whole(url: str) -> None:
    """A SQLite study whose pages are damaged (its header and schema may still read) fails
    here, before the sweep's parent run opens, not at its first trial: SQLite's own check of
    every page (`PRAGMA quick_check`; a fraction of a second for a study of thousands of
    trials)."""
    import sqlite3
    from contextlib import closing

    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if path is None or not path.is_file():
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check").fetchmany(3)]
    except sqlite3.DatabaseError as exc:  # too damaged to check
        found = [str(exc)]
    if found != ["ok"]:
        raise sqlite3.DatabaseError(
            f"the study's database {path} is damaged ({'; '.join(found)}): restore it from a "
            f"backup, or move it aside (mv {path} {path}.damaged) and a new study is made"
        )
