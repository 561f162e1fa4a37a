"""The routes the team server serves, each with its rule; every other route is refused.

The list holds the calls that digitcnn's commands, MLflow's client (tracking, registry, logged
models, artifacts, the basic-auth admin client) and the UI's pages for experiments, runs and
models make. MLflow serves far more (traces, prompts, the AI gateway, scorers, webhooks,
jobs, roles, workspaces, ...), through Flask and through FastAPI alike: the gate
(digitcnn.team.gate) answers those 404 before MLflow sees them. tests/test_team.py reads the
app's real routes and fails when one is neither listed here nor refused, so an MLflow upgrade
that adds a route fails CI instead of opening it.

A route's template is written as MLflow's Flask app writes it (`<model_id>`, `<path:...>`);
FastAPI's (`{artifact_path:path}`) are written the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC = "public"  # no password: health, the UI's static files
READ = "read"  # authenticated; MLflow's permissions apply
WRITE = "write"  # authenticated; a JSON body checked by digitcnn.team.rules
UPLOAD = "upload"  # authenticated; a body of bytes, streamed through unread


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    rule: str
    names: str | None = None  # the body's field that names something (digitcnn.team.rules)
    records: str | None = None  # what the server records the creator of (digitcnn.team.gate)

    @property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"(<[^>]+>)", self.template)
        regex = "".join(
            ("(.+)" if part.startswith("<path:") else "([^/]+)")
            if part.startswith("<")
            else re.escape(part)
            for part in parts
        )
        return re.compile(f"{regex}$")


# One route a line: METHOD PATH RULE [names=FIELD] [records=KIND]. A PATH without a leading
# `/` is served under /api/2.0/ (clients) and /ajax-api/2.0/ (the UI); one that starts with
# `3.0/` under both with version 3.0; one with `ajax:` under /ajax-api/2.0/ only.
TABLE = """
GET    /                                                  read
GET    /static-files/<path:path>                          public
GET    /health                                            public
GET    /health/ready                                      public
GET    /version                                           read
GET    /get-artifact                                      read
GET    /model-versions/get-artifact                       read
GET    /graphql                                           read
POST   /graphql                                           read
GET    3.0/mlflow/server-info                             read

GET    mlflow/experiments/get                             read
GET    mlflow/experiments/get-by-name                     read
GET    mlflow/experiments/search                          read
POST   mlflow/experiments/search                          read
POST   mlflow/experiments/create                          write  names=name records=experiment
POST   mlflow/experiments/update                          write  names=new_name
POST   mlflow/experiments/delete                          write
POST   mlflow/experiments/restore                         write
POST   mlflow/experiments/set-experiment-tag              write
POST   mlflow/experiments/delete-experiment-tag           write

POST   mlflow/runs/create                                 write  records=run
GET    mlflow/runs/get                                    read
POST   mlflow/runs/search                                 read
GET    mlflow/metrics/get-history                         read
GET    mlflow/metrics/get-history-bulk-interval           read
GET    ajax:mlflow/metrics/get-history-bulk               read
GET    mlflow/artifacts/list                              read
POST   mlflow/runs/update                                 write
POST   mlflow/runs/delete                                 write
POST   mlflow/runs/restore                                write
POST   mlflow/runs/log-batch                              write
POST   mlflow/runs/log-metric                             write
POST   mlflow/runs/log-parameter                          write
POST   mlflow/runs/set-tag                                write
POST   mlflow/runs/delete-tag                             write
POST   mlflow/runs/log-inputs                             write
POST   mlflow/runs/outputs                                write
POST   mlflow/runs/log-model                              write

POST   mlflow/logged-models                               write  records=logged_model
GET    mlflow/logged-models/<model_id>                    read
POST   mlflow/logged-models/search                        read
GET    mlflow/logged-models/<model_id>/artifacts/directories  read
GET    ajax:mlflow/logged-models/<model_id>/artifacts/files   read
PATCH  mlflow/logged-models/<model_id>                    write
DELETE mlflow/logged-models/<model_id>                    write
POST   mlflow/logged-models/<model_id>/params             write
PATCH  mlflow/logged-models/<model_id>/tags               write
DELETE mlflow/logged-models/<model_id>/tags/<tag_key>     write

POST   mlflow/registered-models/create                    write  names=name records=registered_model
POST   mlflow/registered-models/rename                    write  names=new_name
GET    mlflow/registered-models/get                       read
GET    mlflow/registered-models/search                    read
GET    mlflow/registered-models/get-latest-versions       read
POST   mlflow/registered-models/get-latest-versions       read
GET    mlflow/registered-models/alias                     read
PATCH  mlflow/registered-models/update                    write
DELETE mlflow/registered-models/delete                    write
POST   mlflow/registered-models/set-tag                   write
DELETE mlflow/registered-models/delete-tag                write
POST   mlflow/registered-models/alias                     write
DELETE mlflow/registered-models/alias                     write
POST   mlflow/model-versions/create                       write  records=model_version
GET    mlflow/model-versions/get                          read
GET    mlflow/model-versions/search                       read
GET    mlflow/model-versions/get-download-uri             read
PATCH  mlflow/model-versions/update                       write
DELETE mlflow/model-versions/delete                       write
POST   mlflow/model-versions/set-tag                      write
DELETE mlflow/model-versions/delete-tag                   write
POST   mlflow/model-versions/transition-stage             write

GET    mlflow-artifacts/artifacts                         read
GET    mlflow-artifacts/artifacts/<path:artifact_path>    read
PUT    mlflow-artifacts/artifacts/<path:artifact_path>    upload
DELETE mlflow-artifacts/artifacts/<path:artifact_path>    write

POST   mlflow/users/create                                write  names=username
GET    mlflow/users/get                                   read
GET    mlflow/users/current                               read
GET    mlflow/users/list                                  read
PATCH  mlflow/users/update-password                       write
PATCH  mlflow/users/update-admin                          write
DELETE mlflow/users/delete                                write
GET    3.0/mlflow/users/current/permissions               read
GET    3.0/mlflow/users/permissions/list                  read
GET    3.0/mlflow/users/permissions/get                   read
POST   3.0/mlflow/users/permissions/grant                 write
POST   3.0/mlflow/users/permissions/revoke                write
"""


def _routes(table: str) -> list[Route]:
    found = []
    for line in table.strip().splitlines():
        if not line.strip():
            continue
        method, path, rule, *options = line.split()
        extra = dict(option.split("=", 1) for option in options)
        if path.startswith("/"):
            paths = [path]
        elif path.startswith("ajax:"):
            paths = [f"/ajax-api/2.0/{path.removeprefix('ajax:')}"]
        else:
            version, rest = (
                ("3.0", path.removeprefix("3.0/")) if path.startswith("3.0/") else ("2.0", path)
            )
            paths = [f"/{prefix}/{version}/{rest}" for prefix in ("api", "ajax-api")]
        found += [Route(method, full, rule, **extra) for full in paths]
    return found


ROUTES = _routes(TABLE)


class RouteTable:
    """ROUTES by method, matched against a request's path."""

    def __init__(self, routes: list[Route] = ROUTES) -> None:
        self.routes = routes
        self._compiled = [(route, route.pattern) for route in routes]

    def match(self, method: str, path: str) -> Route | None:
        method = "GET" if method == "HEAD" else method
        for route, pattern in self._compiled:
            if route.method == method and pattern.match(path):
                return route
        return None


def flask_template(path: str) -> str:
    """A FastAPI route's template in Flask's spelling: `{name:path}` -> `<path:name>`."""
    return re.sub(
        r"\{(\w+)(?::(\w+))?\}",
        lambda m: f"<path:{m[1]}>" if m[2] == "path" else f"<{m[1]}>",
        path,
    )


def served_routes(app) -> list[tuple[str, str]]:
    """(method, template) for every route the ASGI app `app` serves: its FastAPI routes and
    those of the Flask app mounted in it; HEAD and OPTIONS aside."""
    from starlette.routing import Mount

    found: set[tuple[str, str]] = set()

    def walk(routes) -> None:
        for route in routes:
            if isinstance(route, Mount):
                flask = getattr(route.app, "app", route.app)
                for rule in flask.url_map.iter_rules():
                    found.update((m, rule.rule) for m in rule.methods - {"HEAD", "OPTIONS"})
            elif hasattr(route, "effective_candidates"):  # a router FastAPI included
                walk(route.effective_candidates())
                walk(route.effective_low_priority_routes())
            else:
                methods = getattr(route, "methods", None) or {"GET"}
                found.update((m, flask_template(route.path)) for m in methods - {"HEAD", "OPTIONS"})

    walk(getattr(app, "routes", []))
    return sorted(found, key=lambda item: (item[1], item[0]))
