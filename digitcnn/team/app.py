"""The team server's app: MLflow's basic-auth app behind one gate (digitcnn.team.gate) that
every request passes, whatever framework MLflow serves its route with.

- Routes: only those of digitcnn.team.routes, each with its rule; every other is refused.
- Who: basic-auth credentials checked on every request, wrong passwords throttled
  (digitcnn.team.passwords); MLflow's basic-auth app then applies its permissions.
- Names and the server's tags: digitcnn.team.rules.
- Provenance: the server records who created each run, experiment, logged model, registered
  model and model version (digitcnn.team.creators); digitcnn's predict and evaluate read it
  (digitcnn.team.provenance).

Health. `/health/ready` answers 200 once the database answers, else 503 (`/health` answers
200 whenever the process runs); neither needs a password.

`python -m digitcnn.team_server` serves it (`mlflow server --app-name digitcnn-team`).
"""

from __future__ import annotations

import logging
import os

from digitcnn.team.rules import OWNER_TAG, REGISTERED_BY_TAG, SERVER_TAGS  # noqa: F401

READY = "/health/ready"  # under /health: public
log = logging.getLogger("digitcnn.team")


def create_app(app=None):
    """MLflow's basic-auth app on `app` (MLflow's Flask app), behind the gate."""
    from flask import Response
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_app
    from mlflow.server.auth import store as users

    from digitcnn.team.gate import Gate

    app = app or mlflow_app

    @app.route(READY)
    def ready():
        try:
            with users.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as exc:
            log.error("not ready: %s", exc)
            return Response("database unavailable\n", status=503, mimetype="text/plain")
        return Response("ready\n", mimetype="text/plain")

    served = basic_auth_app(app)  # FastAPI around Flask, under uvicorn (MLflow's default)
    if served is app:
        raise RuntimeError("the team server runs under uvicorn (mlflow server's default)")
    return Gate(served, users, os.environ.get("DIGITCNN_TEAM_THROTTLE"))
