"""The team server's app: MLflow's basic-auth app, plus names no teammate can take and a
record of who wrote what that no client can forge.

Names. A name of an experiment or a registered model that starts with a user's name and a
dot (`alice.digitcnn`) is that user's: only they (or an admin) may create it or rename
something to it, so a teammate who comes first cannot take it. User names may not contain a
dot. Other names are first come, first served, as in MLflow.

Provenance. The server tags every run it creates with the user who created it (OWNER_TAG) and
every model version with the user who registered it (REGISTERED_BY_TAG); no client may set or
delete these tags, admins included. MLflow's own `mlflow.user` tag is whatever the client
says. digitcnn's predict and evaluate read them (digitcnn.team.provenance).

Guessing. After THROTTLE_LIMIT wrong passwords for one user from one address within
THROTTLE_SECONDS, that user is refused from that address (429, Retry-After) for the rest of
the window, right password or not: the count is shared by the server's workers through a
SQLite file in the server's private folder (DIGITCNN_TEAM_THROTTLE, set by
digitcnn.team_server). Behind a proxy the address is the proxy's: rate-limit there too.

Health. `/health/ready` answers 200 once the database answers, else 503 (`/health` answers
200 whenever the process runs); neither needs a password. An answer of 500 and above says
what failed in words and keeps the database's host, port and driver message to the
server's log.

`python -m digitcnn.team_server` serves it (`mlflow server --app-name digitcnn-team`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import time

OWNER_TAG = "digitcnn.owner"
REGISTERED_BY_TAG = "digitcnn.registered_by"
SERVER_TAGS = (OWNER_TAG, REGISTERED_BY_TAG)

# The endpoint (the path after /mlflow/, in /api/2.0/... and /ajax-api/2.0/... alike) and
# the request's fields that name something, or carry tags.
NAMING = {
    "experiments/create": "name",
    "experiments/update": "new_name",
    "registered-models/create": "name",
    "registered-models/rename": "new_name",
}
TAG_KEY = {"runs/set-tag", "runs/delete-tag", "model-versions/set-tag", "model-versions/delete-tag"}
RUN_CREATION = {"runs/create", "runs/create-promptlab-run"}  # the second: the UI's prompt lab
TAG_LISTS = {*RUN_CREATION, "runs/log-batch", "model-versions/create"}
USER_CREATION = {"users/create", "users/create-ui"}
GUARDED = {*NAMING, *TAG_KEY, *TAG_LISTS, *USER_CREATION}
READY = "/health/ready"  # under /health: MLflow's auth lets it through without a password
log = logging.getLogger("digitcnn.team")
THROTTLE_LIMIT = 5
THROTTLE_SECONDS = 60


def owner_of(name: str) -> str | None:
    """The user a name belongs to: what comes before its first dot, if it has one."""
    owner, dot, rest = name.partition(".")
    return owner if dot and owner and rest else None


def refusal(endpoint: str, fields: dict, user: str, is_admin: bool) -> str | None:
    """Why the request `fields` to `endpoint` by `user` is refused here, or None."""
    if endpoint in USER_CREATION:
        name = str(fields.get("username") or "")
        if "." in name:
            return f"user name {name!r} contains a dot: a name that starts with 'USER.' is USER's"
        return None
    if endpoint in NAMING:
        name = str(fields.get(NAMING[endpoint]) or "")
        owner = owner_of(name)
        if owner is not None and owner != user and not is_admin:
            return (
                f"{name!r} belongs to user {owner!r}: a name that starts with 'USER.' is that "
                f"user's alone; yours start with '{user}.'"
            )
        return None
    keys = []
    if endpoint in TAG_KEY:
        keys = [fields.get("key")]
    elif endpoint in TAG_LISTS:
        keys = [tag.get("key") for tag in fields.get("tags") or [] if isinstance(tag, dict)]
    forged = sorted({key for key in keys if key in SERVER_TAGS})
    if forged:
        return f"tag {forged[0]!r} is set by the team server alone (who created or registered it)"
    return None


def endpoint_of(path: str) -> str | None:
    """`runs/set-tag` for /api/2.0/mlflow/runs/set-tag (and its /ajax-api/ twin)."""
    found = re.search(r"/mlflow/([a-z-]+/[a-z-]+)$", path)
    return found[1] if found else None


def create_app(app=None):
    """MLflow's basic-auth app on `app` (MLflow's Flask app), with the rules above."""
    from flask import Response, g, request
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_app
    from mlflow.server.auth import store as users

    app = app or mlflow_app
    served = basic_auth_app(app)  # authenticates first: its hook is registered before ours
    records = _Records()
    throttle = Throttle(os.environ.get("DIGITCNN_TEAM_THROTTLE"))

    def guesser():
        auth = request.authorization
        if auth is None or auth.type != "basic" or not auth.username:
            return None
        return auth.username, request.remote_addr or ""

    def refuse_guessers():
        who = guesser()
        wait = throttle.wait(*who) if who else 0
        if not wait:
            return None
        body = {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "too many wrong passwords"}
        headers = {"Retry-After": str(wait)}
        return Response(json.dumps(body), 429, headers, mimetype="application/json")

    app.before_request_funcs.setdefault(None, []).insert(0, refuse_guessers)  # before auth

    @app.after_request
    def count_wrong_passwords(response):
        who = guesser()
        if response.status_code == 401 and who:
            throttle.failed(*who)
        return response

    @app.before_request
    def refuse_what_is_not_theirs():
        endpoint = endpoint_of(request.path)
        user = getattr(g, "mlflow_authenticated_user", None)
        if endpoint not in GUARDED or user is None or request.method != "POST":
            return None
        fields = request.form if endpoint == "users/create-ui" else request.get_json(silent=True)
        is_admin = endpoint in NAMING and users.get_user(user).is_admin  # asked when it matters
        reason = refusal(endpoint, fields or {}, user, is_admin)
        if reason is None:
            return None
        body = {"error_code": "PERMISSION_DENIED", "message": reason}
        return Response(json.dumps(body), status=403, mimetype="application/json")

    @app.route(READY)
    def ready():
        try:
            with users.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as exc:
            log.error("not ready: %s", exc)
            return Response("database unavailable\n", status=503, mimetype="text/plain")
        return Response("ready\n", mimetype="text/plain")

    @app.after_request
    def keep_details_in_the_log(response):
        if response.status_code < 500 or response.mimetype != "application/json":
            return response
        body = response.get_json(silent=True)
        if isinstance(body, dict) and body.get("message"):
            log.error("%s %s: %s", request.method, request.path, body["message"])
            body["message"] = "the server failed this request (its store may be unavailable)"
            response.set_data(json.dumps(body))
        return response

    @app.after_request
    def record_who(response):
        endpoint = endpoint_of(request.path)
        user = getattr(g, "mlflow_authenticated_user", None)
        if response.status_code != 200 or not user:
            return response
        if endpoint in RUN_CREATION:
            run = response.get_json()["run"]
            records.client().set_tag(run["info"]["run_id"], OWNER_TAG, user)
        elif endpoint == "model-versions/create":
            version = response.get_json()["model_version"]
            records.client().set_model_version_tag(
                version["name"], version["version"], REGISTERED_BY_TAG, user
            )
        return response

    return served


class _Records:
    """A client on the server's own store (MLFLOW_BACKEND_STORE_URI), made once per worker."""

    def __init__(self) -> None:
        self._client = None

    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            store = os.environ["MLFLOW_BACKEND_STORE_URI"]
            self._client = MlflowClient(tracking_uri=store, registry_uri=store)
        return self._client


class Throttle:
    """Wrong passwords per (user, address) in the last THROTTLE_SECONDS, in a SQLite file
    that the server's workers share; without one (a server not started by
    digitcnn.team_server), nothing is counted."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path is None:
            log.warning("DIGITCNN_TEAM_THROTTLE is not set: wrong passwords are not throttled")
            return
        with contextlib.closing(self._db()) as db:  # once per worker, not per request
            db.execute("CREATE TABLE IF NOT EXISTS failures (user TEXT, address TEXT, at REAL)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def wait(self, user: str, address: str) -> int:
        """Seconds until `user` may try again from `address` (0: now)."""
        if self.path is None:
            return 0
        since = time.time() - THROTTLE_SECONDS
        with contextlib.closing(self._db()) as db:
            times = db.execute(
                "SELECT at FROM failures WHERE user = ? AND address = ? AND at > ? ORDER BY at",
                (user, address, since),
            ).fetchall()
        if len(times) < THROTTLE_LIMIT:
            return 0
        return max(1, round(times[-THROTTLE_LIMIT][0] - since))

    def failed(self, user: str, address: str) -> None:
        if self.path is None:
            return
        now = time.time()
        with contextlib.closing(self._db()) as db:
            db.execute("DELETE FROM failures WHERE at < ?", (now - THROTTLE_SECONDS,))
            db.execute("INSERT INTO failures VALUES (?, ?, ?)", (user, address, now))
