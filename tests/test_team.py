"""A team's store: MLflow's server with basic auth on a real PostgreSQL (Debian's), artifacts
served by the server. Users, permissions and the server are real; nothing is mocked."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import Hold, cli_env, failure_report, run_cli, start_cli, wait_for_epoch
from tests.servers import ADMIN, ADMIN_PASSWORD, TeamServer, postgres, postgres_bin
from tests.teammates import ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, SHORT, as_user, client

# Skipped where PostgreSQL is missing, except in CI (.ci/run installs it): there it must run.
pytestmark = pytest.mark.skipif(
    postgres_bin() is None and os.environ.get("CI") != "true", reason="apt-get install postgresql"
)


def alice_runs(root: Path, url: str, *args: str, env: dict[str, str] | None = None):
    """A short run by alice, from a machine whose project root is `root`, into `url`."""
    return run_cli(
        root, *SHORT, f"tracking.uri={url}", *args, env=as_user(ALICE, ALICE_PASSWORD) | (env or {})
    )


def runs_in(team: TeamServer, experiment: str, monkeypatch) -> list:
    admin = client(team, ADMIN, ADMIN_PASSWORD, monkeypatch)
    found = admin.get_experiment_by_name(experiment)
    return admin.search_runs([found.experiment_id]) if found else []


def test_a_run_on_the_team_server_keeps_its_artifacts_there(team, tmp_path, monkeypatch):
    proc = alice_runs(tmp_path / "alice-laptop", team.url, "tracking.experiment=alice-digits")
    assert proc.returncode == 0, failure_report(proc)
    assert not list((tmp_path / "alice-laptop").glob("mlflow-artifacts*"))  # the server's
    shutil.rmtree(tmp_path / "alice-laptop")  # the launching machine's folder is gone

    (run,) = runs_in(team, "alice-digits", monkeypatch)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    bob = client(team, BOB, BOB_PASSWORD, monkeypatch)  # READ: may open a teammate's run
    names = {a.path for a in bob.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "config", "logs"} <= names
    downloaded = Path(bob.download_artifacts(run.info.run_id, "", str(tmp_path / "bob")))
    assert (downloaded / "confusion_matrix.png").stat().st_size > 1000
    mlflow.set_tracking_uri(team.url)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.signature is not None

    # The password is nowhere in the record: params, tags, any text artifact.
    record = [*run.data.params.values(), *run.data.tags.values()]
    record += [p.read_text(errors="ignore") for p in downloaded.rglob("*") if p.is_file()]
    assert not [text for text in record if ALICE_PASSWORD in text]
    assert ALICE_PASSWORD not in proc.stdout + proc.stderr


def test_a_wrong_password_is_one_line_before_any_data_or_run(team, tmp_path, monkeypatch):
    proc = run_cli(
        tmp_path,
        *SHORT,
        f"tracking.uri={team.url}",
        "tracking.experiment=wrong-password",
        env=as_user(ALICE, "not-alices-password"),
    )
    assert proc.returncode == 2, failure_report(proc)
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "MLFLOW_TRACKING_PASSWORD" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "data      " not in proc.stderr  # none loaded
    assert "not-alices-password" not in proc.stdout + proc.stderr
    assert runs_in(team, "wrong-password", monkeypatch) == []


def test_read_permission_cannot_write_into_a_teammates_experiment(team, tmp_path, monkeypatch):
    alice = client(team, ALICE, ALICE_PASSWORD, monkeypatch)
    alice.create_experiment("alice-only")  # alice MANAGEs it; bob has the default READ
    proc = run_cli(
        tmp_path,
        *SHORT,
        f"tracking.uri={team.url}",
        "tracking.experiment=alice-only",
        env=as_user(BOB, BOB_PASSWORD),
    )
    assert proc.returncode == 2, failure_report(proc)
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "tracking.experiment='alice-only'" in errors[0] and BOB in errors[0], errors[0]
    assert runs_in(team, "alice-only", monkeypatch) == []


def _start_training(team: TeamServer, root: Path, experiment: str, epochs: int, *extra: str):
    """A run by alice into the team server, held once its first epoch is recorded there
    (`hold.wait`), to go on when the test has stopped the server (`hold.release`)."""
    hold = Hold(root, "epoch-1")
    job = start_cli(
        root, "dataset=digits", "trainer=fast", f"trainer.epochs={epochs}",
        f"tracking.uri={team.url}", f"tracking.experiment={experiment}", *extra,
        env=as_user(ALICE, ALICE_PASSWORD) | hold.env,
    )  # fmt: skip
    hold.wait(job)
    return job, hold


def _epochs(team: TeamServer, run_id: str, monkeypatch) -> list[int]:
    admin = client(team, ADMIN, ADMIN_PASSWORD, monkeypatch)
    return sorted(m.step for m in admin.get_metric_history(run_id, "val_accuracy"))


def test_a_server_restart_mid_run_costs_nothing(team, tmp_path, monkeypatch):
    """The server stops after the first epoch and restarts once the run found it away:
    training goes on, the waiting records are written when it returns, the run finishes
    with every epoch."""
    job, hold = _start_training(team, tmp_path, "restart", 3)
    team.stop()
    hold.release()
    wait_for_epoch(tmp_path, 3, job)  # trained on; epochs 2 and 3 were handed over meanwhile
    team.start()
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output[-3000:]
    assert "tracking server unreachable" in output and "tracking server back" in output
    (run,) = runs_in(team, "restart", monkeypatch)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert _epochs(team, run.info.run_id, monkeypatch) == [1, 2, 3]


def test_a_server_away_past_the_bound_ends_the_run_for_resume(team, tmp_path, monkeypatch):
    """Away longer than tracking.outage_limit_seconds: training still finishes and checkpoints,
    the command ends with one line naming the bound and the resume command; resume= then
    writes what was waiting and closes the run FINISHED."""
    job, hold = _start_training(team, tmp_path, "outage", 4, "tracking.outage_limit_seconds=5")
    (run,) = runs_in(team, "outage", monkeypatch)
    team.stop()
    hold.release()
    try:
        output, _ = job.communicate(timeout=300)
    finally:
        team.start()
    assert job.returncode == 2, output[-3000:]
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tracking.outage_limit_seconds" in errors[0], output[-3000:]
    assert "Traceback" not in output
    folder = Path(run.data.tags["hydra.output_dir"])
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 4  # training did not wait for the server
    assert f"resume={folder}" in errors[0]

    proc = run_cli(
        tmp_path,
        f"resume={folder}",
        f"tracking.uri={team.url}",
        "tracking.experiment=outage",
        env=as_user(ALICE, ALICE_PASSWORD),
    )
    assert proc.returncode == 0, failure_report(proc)
    (run,) = runs_in(team, "outage", monkeypatch)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert _epochs(team, run.info.run_id, monkeypatch) == list(range(1, 5))


def test_eight_jobs_four_at_a_time_lose_nothing(team, tmp_path, monkeypatch):
    """Load: a sweep of 8 jobs, 4 at a time (each worker opens a second run while the others
    still write), all recording into the server at once: every run, param, epoch, artifact and
    model arrives (bench/load.py measures the latencies with 16)."""
    proc = run_cli(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "dataset=digits",
        "trainer.epochs=1",
        "seed=range(0,8)",
        f"tracking.uri={team.url}",
        "tracking.experiment=load",
        env=as_user(ALICE, ALICE_PASSWORD),
        timeout=600,
    )
    assert proc.returncode == 0, failure_report(proc)
    runs = runs_in(team, "load", monkeypatch)
    (parent,) = [r for r in runs if "sweep.dir" in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 8
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    assert len({len(c.data.params) for c in children}) == 1  # the same params in each
    admin = client(team, ADMIN, ADMIN_PASSWORD, monkeypatch)
    expected = {"confusion_matrix.png", "classification_report.json", "config", "logs"}
    for run in children:
        assert "test_accuracy" in run.data.metrics
        assert [m.step for m in admin.get_metric_history(run.info.run_id, "loss")] == [1]
        assert expected <= {a.path for a in admin.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(team.url)
    models = mlflow.search_logged_models([parent.info.experiment_id], output_format="list")
    assert {m.source_run_id for m in models} == {c.info.run_id for c in children}


def _processes_showing(text: str) -> list[str]:
    """Command lines of this machine's processes that contain `text`: what `ps -eo args`
    shows every local user."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def _port_free(port: int) -> bool:
    """Whether nothing listens on `port` (connections closed lately may linger: a server
    binds past them, as this probe does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_team_server_keeps_its_store_off_command_lines_and_stops_as_one(team, tmp_path):
    """The store's URI (with its password, in a team's set-up) is in no process's command
    line; the auth settings live in a private folder removed at the stop; SIGTERM ends the
    server and every worker within seconds, exit 0; a SIGKILL of its main process ends them
    too and removes the settings; a second server on the same port fails at once with exit 2;
    a new admin password that MLflow would ignore is said so."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = TeamServer(
        team.store_uri, tmp_path / "artifacts", tmp_path / "server.log", {"TMPDIR": str(temporary)}
    )
    server.start()
    try:
        assert not _processes_showing(team.store_uri)
        (settings,) = temporary.glob("digitcnn-auth-*/basic_auth.ini")
        assert settings.parent.stat().st_mode & 0o077 == 0  # the folder is the server's alone
        assert settings.stat().st_mode & 0o077 == 0
        assert (tmp_path / "artifacts").stat().st_mode & 0o077 == 0

        busy = subprocess.run(
            server.arguments(), env=server.env(), capture_output=True, text=True, timeout=60
        )
        assert busy.returncode == 2, busy.stderr
        assert busy.stderr.strip() == (
            f"error: --host 127.0.0.1 --port {server.port} cannot be served: Address already in use"
        )

        assert _processes_showing(f"--port {server.port}")
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - sent < 10
        assert _port_free(server.port)  # no worker left serving it
        assert not list(temporary.glob("digitcnn-auth-*"))  # the settings folder is gone

        assert "warning: MLFLOW_AUTH" not in (tmp_path / "server.log").read_text()
        # A new admin password on a later start is ignored by MLflow: said in one line.
        server.extra_env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "a-new-admin-password"
        server.start()  # the port is free again
        warnings = [
            line
            for line in (tmp_path / "server.log").read_text().splitlines()
            if line.startswith("warning:")
        ]
        assert warnings == [
            "warning: MLFLOW_AUTH_ADMIN_PASSWORD is not the admin's password in this store, "
            "and MLflow sets it only when it creates the store: the admin keeps the old one "
            "(change it as the admin with the auth client's update_user_password)"
        ]
        os.kill(server.process.pid, signal.SIGKILL)  # its main process alone
        server.process.wait()
        deadline = time.monotonic() + 15
        while not _port_free(server.port) or list(temporary.glob("digitcnn-auth-*")):
            assert time.monotonic() < deadline, "the server's workers or its settings outlived it"
            time.sleep(0.2)
    finally:
        server.stop()


def test_a_password_on_the_team_servers_command_line_is_refused(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.team_server",
            "--store",
            "postgresql://mlflow:db-secret@127.0.0.1:9/mlflow",
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --store carries a password, which every local user")
    assert "MLFLOW_BACKEND_STORE_URI" in proc.stderr and "db-secret" not in proc.stderr
    assert not (tmp_path / "artifacts").exists()

    # A database that does not answer: one line at once (MLflow retried for 105 s, then a
    # traceback), its password not in it.
    env = cli_env(tmp_path) | {
        "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:db-secret@127.0.0.1:9/mlflow",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "an-admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-secret-key-for-tests",
    }
    away = subprocess.run(
        [sys.executable, "-m", "digitcnn.team_server", "--artifacts", str(tmp_path / "a")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert away.returncode == 2 and "Traceback" not in away.stderr, away.stderr
    (line,) = away.stderr.strip().splitlines()
    assert line.startswith("error: the store postgresql://***@127.0.0.1:9/mlflow does not answer")
    assert "db-secret" not in line


def test_the_team_server_answers_to_its_names_and_says_when_it_does_not(team, tmp_path):
    """MLflow refuses a Host header it was not told about (DNS rebinding): the team server
    answers to this machine's names, and a client that reaches it by another name is told so
    in one line, not that its user may not write."""
    name = socket.gethostname()
    if not socket.gethostbyname(name).startswith("127."):
        pytest.skip(f"{name} does not resolve to this machine's loopback")
    by_name = f"http://{name}:{team.port}"
    proc = alice_runs(tmp_path / "by-name", by_name, "tracking.experiment=by-name")
    assert proc.returncode == 0, failure_report(proc)

    other = urllib.request.Request(f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1")
    other.add_header("Host", f"not-its-name.example:{team.port}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(other, timeout=30)
    assert refused.value.code == 403  # the protection stays for names nobody gave it

    server = TeamServer(
        team.store_uri, tmp_path / "artifacts", tmp_path / "server.log", host="127.0.0.2"
    )
    server.start()
    try:
        proc = alice_runs(tmp_path / "unknown-name", server.url)
    finally:
        server.stop()
    assert proc.returncode == 2, failure_report(proc)
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "the server does not answer to this name (403 Invalid Host header)" in line, line
    assert "may not write" not in line


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by itself, and its key (mode 0600)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digitcnn test server")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, private = folder / "server.pem", folder / "server.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    return cert, private


def test_the_team_server_serves_https_to_a_client_that_trusts_its_certificate(team, tmp_path):
    """HTTPS with a self-signed certificate: a run whose client is given the certificate
    (MLFLOW_TRACKING_SERVER_CERT_PATH) is recorded; one without it is told in one line that
    the certificate is not trusted; a key readable by others is refused."""
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "digitcnn.team_server", "--artifacts", str(tmp_path / "a"),
         "--certfile", str(cert), "--keyfile", str(key)],
        env=TeamServer(team.store_uri, tmp_path / "a", tmp_path / "log").env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "is readable by other users: chmod 600" in refused.stderr
    key.chmod(0o600)
    # Plain HTTP beyond loopback is said aloud (here on a port in use: nothing starts).
    plain = subprocess.run(
        [sys.executable, "-m", "digitcnn.team_server", "--artifacts", str(tmp_path / "a"),
         "--host", "0.0.0.0", "--port", str(team.port)],
        env=TeamServer(team.store_uri, tmp_path / "a", tmp_path / "log").env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plain.stderr.startswith(
        "warning: serving plain HTTP on 0.0.0.0: passwords cross the network in clear text"
    ), plain.stderr
    assert plain.returncode == 2

    server = TeamServer(
        team.store_uri, tmp_path / "artifacts", tmp_path / "server.log", tls=(cert, key)
    )
    server.start()
    try:
        untrusted = alice_runs(tmp_path / "untrusted", server.url)
        trusted = alice_runs(
            tmp_path / "trusted",
            server.url,
            "tracking.experiment=over-https",
            env={"MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert)},
        )
    finally:
        server.stop()
    assert untrusted.returncode == 2, failure_report(untrusted)
    (line,) = [ln for ln in untrusted.stderr.splitlines() if ln.startswith("error:")]
    assert "the server's certificate is not trusted" in line, line
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in line
    assert trusted.returncode == 0, failure_report(trusted)
    assert "over-https" in trusted.stderr + trusted.stdout


def _predict(root: Path, url: str, user: str, password: str, *args: str):
    return run_cli(
        root, *args, env=as_user(user, password) | {"MLFLOW_TRACKING_URI": url},
        module="digitcnn.predict",
    )  # fmt: skip


def test_a_teammate_can_neither_take_a_users_names_nor_slip_them_a_model(
    team, tmp_path, monkeypatch
):
    """Bob comes first: he creates the experiment `digitcnn`, tries alice's own names, and
    points `champion` of a model `digitcnn` at a model of his. Alice's default run still
    works, in `alice.digitcnn`; her predict says who made what it would load and loads
    bob's model only once she says she trusts him; the server's record cannot be forged."""
    from PIL import Image

    bob = client(team, BOB, BOB_PASSWORD, monkeypatch)
    bobs_experiment = bob.create_experiment("digitcnn")
    for take in (bob.create_experiment, bob.create_registered_model):
        with pytest.raises(Exception, match=r"'alice\.digitcnn' belongs to user 'alice'"):
            take("alice.digitcnn")
    bobs = run_cli(
        tmp_path / "bob", *SHORT, f"tracking.uri={team.url}", "tracking.register_as=digitcnn",
        env=as_user(BOB, BOB_PASSWORD),
    )  # fmt: skip
    assert bobs.returncode == 0, failure_report(bobs)
    bob.set_registered_model_alias("digitcnn", "champion", "1")
    bob_version = bob.get_model_version("digitcnn", "1")
    assert bob_version.tags["digitcnn.registered_by"] == BOB
    with pytest.raises(Exception, match="set by the team server alone"):
        bob.set_model_version_tag("digitcnn", "1", "digitcnn.registered_by", ALICE)
    with pytest.raises(Exception, match="set by the team server alone"):
        bob.set_tag(bob_version.run_id, "digitcnn.owner", ALICE)
    from mlflow.entities import RunTag

    forged = RunTag("digitcnn.owner", ALICE)
    for forge in (
        lambda: bob.log_batch(bob_version.run_id, tags=[forged]),
        lambda: bob.create_run(bobs_experiment, tags={forged.key: ALICE}),
    ):
        with pytest.raises(Exception, match="set by the team server alone"):
            forge()
    with pytest.raises(Exception, match="belongs to user 'alice'"):
        bob.rename_experiment(bobs_experiment, "alice.renamed")

    alices = alice_runs(tmp_path / "alice", team.url, "tracking.register_as=alice.digitcnn")
    assert alices.returncode == 0, failure_report(alices)
    (run,) = runs_in(team, "alice.digitcnn", monkeypatch)
    assert run.data.tags["digitcnn.owner"] == ALICE and run.info.status == "FINISHED"

    one = Image.new("L", (28, 28), 0)
    one.paste(255, (12, 4, 16, 24))
    one.save(tmp_path / "one.png")
    inputs = f"inputs={tmp_path / 'one.png'}"
    slipped = _predict(
        tmp_path, team.url, ALICE, ALICE_PASSWORD, "model=models:/digitcnn@champion", inputs
    )
    assert slipped.returncode != 0, failure_report(slipped)
    (line,) = [ln for ln in slipped.stderr.splitlines() if "error" in ln.lower()]
    assert line == (
        f"error: models:/digitcnn@champion is digitcnn version 1, made by bob, from run "
        f"{bob_version.run_id}; a logged model is code, load it only if you trust bob: trust=bob"
    ), line
    # What she trusts loads: evaluate (this test's models take the 8x8 digits) says whose.
    evaluated = {}
    for model, trust in (
        ("models:/digitcnn@champion", "[bob]"),
        ("models:/alice.digitcnn/1", "[]"),
    ):
        proc = run_cli(
            tmp_path, f"model={model}", "dataset=digits", f"tracking.uri={team.url}",
            f"trust={trust}", module="digitcnn.evaluate", env=as_user(ALICE, ALICE_PASSWORD),
        )  # fmt: skip
        assert proc.returncode == 0, failure_report(proc)
        evaluated[model] = proc.stderr
    assert f"made by bob, from run {bob_version.run_id}" in evaluated["models:/digitcnn@champion"]
    assert f"made by alice, from run {run.info.run_id}" in evaluated["models:/alice.digitcnn/1"]


def test_readiness_asks_the_database_and_clients_never_see_its_details(tmp_path):
    """PostgreSQL stops: /health still answers 200 (the process runs), /health/ready 503
    without a password; a request gets an error without the database's host, port or driver
    message, which go to the server's log; back once the database is."""
    with postgres() as store:
        server = TeamServer(store, tmp_path / "artifacts", tmp_path / "server.log")
        server.start()
        try:
            ready = f"{server.url}/health/ready"
            assert urllib.request.urlopen(ready, timeout=30).status == 200
            store.stop()
            assert urllib.request.urlopen(f"{server.url}/health", timeout=30).status == 200
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(ready, timeout=30)
            assert refused.value.code == 503
            with pytest.raises(AssertionError) as failed:  # the API helper's error: code, body
                server.api("experiments/create", {"name": "during-the-outage"})
            answer = str(failed.value)
            assert ": 5" in answer and "store may be unavailable" in answer, answer
            port = store.rsplit(":", 1)[1].split("/")[0]
            for detail in (port, "127.0.0.1", "psycopg", "connection"):
                assert detail not in answer.lower(), answer
            assert port in server.log_file.read_text()  # the operator's log has the details
            store.start()
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert urllib.request.urlopen(ready, timeout=30).status == 200
                    break
                except urllib.error.HTTPError:
                    assert time.monotonic() < deadline
                    time.sleep(1)
        finally:
            server.stop()
