"""The server's record of who created what: written by the gate (digitcnn.team.gate) once
MLflow answered a creation, with the server's own client on its store, in tags no client may
set, change or delete (digitcnn.team.rules).

- a run, an experiment, a logged model, a registered model: OWNER_TAG, its creator;
- a model version: REGISTERED_BY_TAG, who registered it.
"""

from __future__ import annotations

import logging
import os

from digitcnn.team.rules import OWNER_TAG, REGISTERED_BY_TAG

log = logging.getLogger("digitcnn.team")


class Creators:
    """A client on the server's own store (MLFLOW_BACKEND_STORE_URI), made once per worker."""

    def __init__(self) -> None:
        self._client = None

    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            store = os.environ["MLFLOW_BACKEND_STORE_URI"]
            self._client = MlflowClient(tracking_uri=store, registry_uri=store)
        return self._client

    def run_owner(self, run_id: str) -> str | None:
        """Who created run `run_id` (None: not recorded, or no such run: MLflow answers)."""
        try:
            return self.client().get_run(run_id).data.tags.get(OWNER_TAG)
        except Exception:
            return None

    def record(self, kind: str, answer: dict, user: str) -> None:
        """Tag what MLflow's `answer` to a creation of `kind` names with `user`."""
        client = self.client()
        if kind == "run":
            client.set_tag(answer["run"]["info"]["run_id"], OWNER_TAG, user)
        elif kind == "experiment":
            client.set_experiment_tag(answer["experiment_id"], OWNER_TAG, user)
        elif kind == "logged_model":
            client.set_logged_model_tags(answer["model"]["info"]["model_id"], {OWNER_TAG: user})
        elif kind == "registered_model":
            client.set_registered_model_tag(answer["registered_model"]["name"], OWNER_TAG, user)
        elif kind == "model_version":
            version = answer["model_version"]
            client.set_model_version_tag(
                version["name"], version["version"], REGISTERED_BY_TAG, user
            )
        else:
            raise ValueError(f"unknown kind of record: {kind}")
