"""The team server's one gate (digitcnn.team.gate), tried as a teammate with bad intent would,
against a real server on PostgreSQL: every route the app serves is listed with a rule or
refused; throttling, provenance and the server's tags hold on every route and method."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import failure_report, run_cli
from tests.servers import ADMIN, ADMIN_PASSWORD, postgres_bin
from tests.teammates import ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, SHORT, as_user, client

pytestmark = pytest.mark.skipif(
    postgres_bin() is None and os.environ.get("CI") != "true", reason="apt-get install postgresql"
)

# The app as digitcnn.team_server builds it (the same settings, on SQLite), its routes listed.
ROUTES_OF_THE_APP = """
import json, os, sys, tempfile
from digitcnn.team_server import auth_settings
folder = tempfile.mkdtemp()
settings = os.path.join(folder, "basic_auth.ini")
with open(settings, "w") as f:
    f.write(auth_settings(f"sqlite:///{folder}/users.db", "READ"))
os.environ.update(
    MLFLOW_AUTH_CONFIG_PATH=settings, MLFLOW_BACKEND_STORE_URI=f"sqlite:///{folder}/runs.db",
    MLFLOW_AUTH_ADMIN_PASSWORD="an-admin-password", MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32,
    _MLFLOW_SGI_NAME="uvicorn", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
)
from digitcnn.team.app import create_app
from digitcnn.team.routes import served_routes
app = create_app()
print(json.dumps(served_routes(getattr(app, "app", app))))  # inside the gate
"""


def call(team, method: str, path: str, user=BOB, password=BOB_PASSWORD, body=None, source=None,
         headers=None) -> tuple[int, dict]:  # fmt: skip
    """One request, no retries: (status, JSON body or {})."""
    url = urllib.parse.urlsplit(team.url)
    bound = (source, 0) if source else None
    connection = http.client.HTTPConnection(url.hostname, url.port, 30, source_address=bound)
    sent = dict(headers or {})
    if user:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body else None
    if data is not None:
        sent["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=sent)
    answer = connection.getresponse()
    text = answer.read()
    connection.close()
    try:
        found = json.loads(text)
    except ValueError:
        found = {"text": text.decode(errors="replace")}
    return answer.status, {**found, "retry_after": answer.getheader("Retry-After")}


def _concrete(template: str) -> str:
    """A path of `template` (`<path:x>`: two segments, `<x>`: one)."""
    return re.sub(r"<[^>]+>", "x1", template.replace("<path:", "<path/").replace("<path/", "y0/<"))


def test_every_route_the_app_serves_is_listed_with_a_rule_or_refused(team):
    """MLflow 3.17 serves hundreds of routes, through Flask and FastAPI: each is either in
    digitcnn.team.routes with its rule, or the gate answers it 404 before MLflow sees it (a
    new route in an MLflow upgrade fails here until it is listed). Every listed route is one
    the app serves."""
    from digitcnn.team.routes import RouteTable

    proc = subprocess.run([sys.executable, "-c", ROUTES_OF_THE_APP], capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = {tuple(route) for route in json.loads(proc.stdout.splitlines()[-1])}
    table = RouteTable()
    listed = {(route.method, route.template) for route in table.routes}
    assert not listed - served, f"listed but not served: {sorted(listed - served)}"
    refused = sorted(served - listed)
    assert len(refused) > 300, len(refused)  # traces, gateway, prompts, jobs, roles, ...
    opened = []
    for method, template in refused:
        status, body = call(team, method, _concrete(template), body={})
        if (status, body.get("error_code")) != (404, "ENDPOINT_NOT_FOUND"):
            opened.append(f"{method} {template}: {status} {body}")
    assert not opened, "\n".join(opened)
    # ... also without a password, and through FastAPI's own routers
    for path in ("/v1/traces", "/ajax-api/3.0/jobs/search", "/gateway/mlflow/v1/models"):
        assert call(team, "POST", path, user=None)[0] == 404


def _forged_model(team, tmp_path: Path, monkeypatch, alices_run: str, marker: Path) -> str:
    """Bob's logged model in his own experiment, whose code writes `marker` when it is loaded,
    claiming to come from alice's run (refused), then from none: its id."""
    import mlflow

    script = tmp_path / "forged_model.py"
    script.write_text(
        "from pathlib import Path\nimport mlflow\n"
        f"Path({str(marker)!r}).write_text('bob was here')\n"
        "class Forged(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input):\n        return model_input\n"
        "mlflow.models.set_model(Forged())\n"
    )
    folder = tmp_path / "forged"
    mlflow.pyfunc.save_model(path=str(folder), python_model=str(script))
    marker.unlink(missing_ok=True)  # saving ran it once, here
    bob = client(team, BOB, BOB_PASSWORD, monkeypatch)
    experiment = bob.create_experiment("bob.forgeries")
    with pytest.raises(Exception, match=f"run {alices_run} is alice's"):
        bob.create_logged_model(experiment, source_run_id=alices_run, name="model")
    model = bob.create_logged_model(experiment, name="model")
    assert bob.get_logged_model(model.model_id).tags["digitcnn.owner"] == BOB  # by the server
    bob.log_model_artifacts(model.model_id, str(folder))
    bob.finalize_logged_model(model.model_id, "READY")
    for forge in (
        lambda: bob.set_logged_model_tags(model.model_id, {"digitcnn.owner": ALICE}),
        lambda: bob.delete_logged_model_tag(model.model_id, "digitcnn.owner"),
        lambda: bob.set_experiment_tag(experiment, "digitcnn.owner", ALICE),
    ):
        with pytest.raises(Exception, match="set by the team server alone"):
            forge()
    return model.model_id


def test_a_model_a_teammate_forged_is_refused_in_every_spelling(team, tmp_path, monkeypatch):
    """Bob logs a model whose code runs when it is loaded. Alice's predict refuses it in one
    line naming bob, however the reference is spelled and wherever her credentials come from
    (the environment, ~/.mlflow/credentials); his code never runs. Her own model, by any
    spelling, loads and says it is hers."""
    alices = run_cli(tmp_path / "alice", *SHORT, f"tracking.uri={team.url}",
                     env=as_user(ALICE, ALICE_PASSWORD))  # fmt: skip
    assert alices.returncode == 0, failure_report(alices)
    admin = client(team, ADMIN, ADMIN_PASSWORD, monkeypatch)
    (run,) = admin.search_runs([admin.get_experiment_by_name("alice.digitcnn").experiment_id])
    marker = tmp_path / "bob-was-here"
    forged = _forged_model(team, tmp_path, monkeypatch, run.info.run_id, marker)
    experiment = admin.get_logged_model(forged).experiment_id
    home = tmp_path / "alice-home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {ALICE}\n"
        f"mlflow_tracking_password = {ALICE_PASSWORD}\n"
    )
    (home / ".mlflow" / "credentials").chmod(0o600)
    from PIL import Image

    Image.new("L", (28, 28), 0).save(tmp_path / "blank.png")
    inputs = f"inputs={tmp_path / 'blank.png'}"
    alice = as_user(ALICE, ALICE_PASSWORD)
    for spelling, env in (
        (f"models:/{forged}", alice),
        (f"MODELS:/{forged}", alice),
        (f"mlflow-artifacts:/{experiment}/models/{forged}/artifacts", alice),
        (f"{team.url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/models/{forged}/artifacts",
         as_user(ALICE, ALICE_PASSWORD)),
        (f"models:/{forged}", {"HOME": str(home)}),  # MLflow's own credentials file
    ):  # fmt: skip
        proc = run_cli(tmp_path, f"model={spelling}", inputs, module="digitcnn.predict",
                       env={"MLFLOW_TRACKING_URI": team.url, **env})  # fmt: skip
        assert proc.returncode != 0, failure_report(proc)
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert f"{spelling}, made by bob" in line and "trust=bob" in line, line
        assert not marker.exists(), f"{spelling}: bob's code ran"
    for spelling in (f"runs:/{run.info.run_id}/model", f"Runs:/{run.info.run_id}/model"):
        proc = run_cli(tmp_path, f"model={spelling}", inputs, module="digitcnn.predict",
                       env={"MLFLOW_TRACKING_URI": team.url, **alice})  # fmt: skip
        assert f"{spelling}, made by alice, from run {run.info.run_id}" in proc.stderr, (
            failure_report(proc)
        )
    bare = run_cli(tmp_path, f"model={team.url}/some/file", inputs, module="digitcnn.predict",
                   env={"MLFLOW_TRACKING_URI": team.url, **alice})  # fmt: skip
    assert bare.returncode != 0 and "names no logged model" in bare.stderr, failure_report(bare)


def test_guessing_is_throttled_on_every_route_and_forwarded_addresses_count_only_from_proxies(team):
    """Five wrong passwords for carol within a minute, on the artifacts route (served by
    FastAPI): from this address she is refused (429, Retry-After) there and on the REST API,
    the right password too, whichever worker answers; bob is not affected. An
    X-Forwarded-For header from a client that is not a trusted proxy counts for nothing: it
    neither escapes the throttle nor locks another address out."""
    from digitcnn.team.passwords import THROTTLE_LIMIT, THROTTLE_SECONDS

    team.add_user("carol", "carol-password-2718")
    artifacts = "/api/2.0/mlflow-artifacts/artifacts"
    wrong = [call(team, "GET", artifacts, "carol", f"guess-{i}")[0] for i in range(THROTTLE_LIMIT)]
    assert wrong == [401] * THROTTLE_LIMIT
    for password in ("guess-again", "carol-password-2718"):
        status, answer = call(team, "GET", artifacts, "carol", password)
        assert status == 429 and 0 < int(answer["retry_after"]) <= THROTTLE_SECONDS
        assert call(team, "GET", "/api/2.0/mlflow/experiments/search", "carol", password)[0] == 429
    # bob, from this machine, claims other addresses for alice's name
    spoofed = [
        call(
            team, "GET", artifacts, ALICE, f"guess-{i}", headers={"X-Forwarded-For": f"10.0.0.{i}"}
        )
        for i in range(THROTTLE_LIMIT + 1)
    ]
    spoofed = [status for status, _ in spoofed]
    assert spoofed == [401] * THROTTLE_LIMIT + [429]
    # alice, from another address (a real one), is not locked out by what bob claimed
    assert call(team, "GET", artifacts, ALICE, ALICE_PASSWORD, source="127.0.0.3")[0] == 200
    assert call(team, "GET", artifacts)[0] == 200  # bob


def test_a_changed_password_is_refused_at_once_by_every_worker(team):
    team.add_user("erin", "erin-password-1123")
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert {call(team, "GET", path, "erin", "erin-password-1123")[0] for _ in range(8)} == {200}
    team.api("users/update-password", {"username": "erin", "password": "erin-password-5813"},
             method="PATCH")  # fmt: skip
    old = [call(team, "GET", path, "erin", "erin-password-1123")[0] for _ in range(4)]
    assert old == [401] * 4  # both workers had it cached
    assert call(team, "GET", path, "erin", "erin-password-5813")[0] == 200


def test_the_servers_records_cannot_be_touched_by_any_route_or_method(team):
    """Creations are recorded by the server; no route or method lets a client set or delete
    those tags (admins included); a body that is not a JSON object is a 400."""
    status, made = call(team, "POST", "/api/2.0/mlflow/experiments/create", body={"name": "bob.x"})
    assert status == 200, made
    experiment = made["experiment_id"]
    status, got = call(team, "GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}")
    assert {"key": "digitcnn.owner", "value": BOB} in got["experiment"]["tags"]
    status, _ = call(
        team, "POST", "/api/2.0/mlflow/registered-models/create", body={"name": "bob.m"}
    )
    status, got = call(team, "GET", "/api/2.0/mlflow/registered-models/get?name=bob.m")
    assert {"key": "digitcnn.owner", "value": BOB} in got["registered_model"]["tags"], got
    tries = [
        ("POST", "/api/2.0/mlflow/experiments/set-experiment-tag",
         {"experiment_id": experiment, "key": "digitcnn.owner", "value": ALICE}),
        ("POST", "/api/2.0/mlflow/experiments/delete-experiment-tag",
         {"experiment_id": experiment, "key": "digitcnn.owner"}),
        ("POST", "/ajax-api/2.0/mlflow/registered-models/set-tag",
         {"name": "bob.m", "key": "digitcnn.owner", "value": ALICE}),
        ("DELETE", "/api/2.0/mlflow/registered-models/delete-tag",
         {"name": "bob.m", "key": "digitcnn.owner"}),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete-tag?name=bob.m&version=1"
         "&key=digitcnn.registered_by", None),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete-tag",
         {"name": "bob.m", "version": "1", "key": "digitcnn.registered_by"}),
        ("POST", "/api/2.0/mlflow/experiments/create",
         {"name": "bob.y", "tags": [{"key": "digitcnn.owner", "value": ALICE}]}),
    ]  # fmt: skip
    for user, password in ((BOB, BOB_PASSWORD), (ADMIN, ADMIN_PASSWORD)):
        for method, path, body in tries:
            status, answer = call(team, method, path, user, password, body=body)
            assert status == 403 and "team server alone" in answer["message"], (path, answer)
    for names in ("alice\u2024digitcnn", "alice\uff0edigitcnn", "alice\u00b7digitcnn", "alice."):
        status, answer = call(
            team, "POST", "/api/2.0/mlflow/experiments/create", body={"name": names}
        )
        assert status == 403, (names, answer)
    double = json.dumps(json.dumps({"experiment_id": experiment})).encode()
    status, answer = call(team, "POST", "/api/2.0/mlflow/runs/create", body=double)
    assert (status, answer["error_code"]) == (400, "MALFORMED_REQUEST"), answer


def test_a_dataset_a_parallel_job_inserts_first_is_linked_through_the_gate(team, monkeypatch):
    """Jobs of a sweep log the same dataset: MLflow looks it up, then inserts it, and on
    PostgreSQL the second insert meets the unique key. The gate keeps the driver's words to
    the server's log but still names a duplicate key, so the job links to the first record
    (before: `BAD_REQUEST: the store refused this request`, the job FAILED, in one of eight
    load-test jobs). Placed exactly: this test holds the first INSERT open until ours waits
    on it in PostgreSQL, then commits."""
    import mlflow
    import numpy as np
    import sqlalchemy

    from digitcnn import tracking

    # A user of its own: the throttle test leaves alice locked out of this address for a
    # minute, which MLflow's client would sit out retrying (57 s of this test in CI)
    team.add_user("grace", "grace-password-1618")
    grace = client(team, "grace", "grace-password-1618", monkeypatch)
    mlflow.set_tracking_uri(team.url)  # process-wide: an earlier test may have set another
    experiment = grace.create_experiment("grace.race")
    run_id = grace.create_run(experiment).info.run_id
    digest = "d" * 64
    failures: list[BaseException] = []

    def our_job_logs() -> None:
        try:
            with mlflow.start_run(run_id=run_id):
                recorder = tracking.Recorder(grace, run_id, "")
                recorder.log_dataset(np.zeros((4, 8, 8, 1)), np.arange(4), "digits", digest, "s")
        except BaseException as exc:  # reported below, with its message
            failures.append(exc)

    engine = sqlalchemy.create_engine(team.store_uri)
    waiting = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE 'INSERT INTO datasets%'"
    )
    with engine.connect() as first, engine.connect() as watcher:
        first.execute(
            sqlalchemy.text(
                "INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, "
                "dataset_source_type, dataset_source) VALUES ('u1', :e, 'digits', :d, 'code', 's')"
            ),
            {"e": int(experiment), "d": digest[:36]},
        )  # not committed: ours does not see it, and its INSERT waits on the key
        ours = threading.Thread(target=our_job_logs)
        ours.start()
        deadline = time.monotonic() + 60
        while not watcher.execute(waiting).scalar():
            watcher.rollback()  # a fresh snapshot of pg_stat_activity
            assert ours.is_alive() and time.monotonic() < deadline, failures
            time.sleep(0.05)
        first.commit()
        ours.join(60)
    engine.dispose()

    assert not failures, failures
    (linked,) = grace.get_run(run_id).inputs.dataset_inputs
    assert linked.dataset.digest == digest[:36]
    assert "UniqueViolation" in Path(team.log_file).read_text()  # the details stay there
