"""Teammates on one team server (the `team` fixture of tests/conftest.py): shared by
tests/test_team.py and tests/test_team_gate.py, each with a server of its own."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from tests.servers import TeamServer

ALICE, ALICE_PASSWORD = "alice", "alice-password-4711"
BOB, BOB_PASSWORD = "bob", "bob-password-0815"
SHORT = ["dataset=digits", "trainer.epochs=1", "trainer=fast"]


def as_user(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def client(team: TeamServer, user: str, password: str, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(team.url)
