"""An Optuna study kept in a database (`hydra.sweeper.storage=postgresql://...`), made ready
before the sweeper opens it, so that several sweep processes can share one study.

hydra-optuna-sweeper 1.3 requires Optuna 2.x, whose database storage was written for
SQLAlchemy 1.x: on SQLAlchemy 2 (which MLflow and psycopg 3 need) it stamps its schema version
on a connection that is never committed, and then fails its own check (`assert version is not
None`) on a new database. Here the tables are created and the version stamped in one committed
transaction (under an advisory lock on PostgreSQL: two sweeps starting together do it once);
Optuna then finds an initialised storage and uses it as it is.
"""

from __future__ import annotations

import os

import alembic.config
import alembic.migration
import alembic.script
import sqlalchemy
from optuna.storages._rdb import models
from optuna.storages._rdb import storage as rdb_storage

_LOCK_KEY = 0x0D161C  # pg_advisory_xact_lock key: "digitcnn's Optuna schema"


def _alembic_script() -> alembic.script.ScriptDirectory:
    folder = os.path.dirname(rdb_storage.__file__)
    config = alembic.config.Config(os.path.join(folder, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(folder, "alembic").replace("%", "%%"))
    return alembic.script.ScriptDirectory.from_config(config)


def prepare(url: str) -> None:
    """Create Optuna's tables in the database at `url` and stamp their version, if new."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))
            models.BaseModel.metadata.create_all(connection)
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                context.stamp(_alembic_script(), _alembic_script().get_current_head())
    finally:
        engine.dispose()
