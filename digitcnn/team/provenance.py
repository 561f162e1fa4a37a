"""Who made a logged model, and whether to load it: said before MLflow loads it.

A logged model is code: loading it runs the Python file it was logged with. On a team server
(digitcnn.team.app) the server records who created each run and who registered each model
version, in tags no client can set. `python -m digitcnn.predict` and `python -m
digitcnn.evaluate` read that record, say it in one line, and load a model from a server with
users only when its author is the user (MLFLOW_TRACKING_USERNAME) or someone the user named
in `trust` (`*`: anyone, also where the server keeps no record). A model from a local store
or folder is the user's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from digitcnn.core.config import is_server
from digitcnn.core.errors import InputError
from digitcnn.team.app import OWNER_TAG, REGISTERED_BY_TAG

ANYONE = "*"


@dataclass(frozen=True)
class Provenance:
    uri: str
    author: str | None  # the server's record of who registered or created it; None: no record
    run_id: str | None
    version: str | None = None  # "alice.digitcnn version 3" for a registry URI

    def line(self) -> str:
        what = f"{self.uri} is {self.version}" if self.version else self.uri
        who = f"registered by {self.author}" if self.version else f"made by {self.author}"
        if self.author is None:
            who = "its author not recorded by the server"
        return f"{what}, {who}, from run {self.run_id or '(none)'}"


def provenance(uri: str, client) -> Provenance:
    """What the store says about the model at `uri` (runs:/, models:/), before loading it."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/")[0]
        return Provenance(uri, _run_owner(client, run_id), run_id)
    name, _, selector = uri.removeprefix("models:/").partition("/")
    if not selector and name.startswith("m-"):  # a logged model's id
        run_id = client.get_logged_model(name).source_run_id
        return Provenance(uri, _run_owner(client, run_id), run_id)
    if not selector and "@" in name:
        name, alias = name.rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif selector.isdigit():
        version = client.get_model_version(name, selector)
    else:  # latest, or a stage
        stages = None if selector.lower() in ("", "latest") else [selector]
        found = client.get_latest_versions(name, stages)
        if not found:
            raise InputError(f"model={uri!r}: {name!r} has no such version")
        version = max(found, key=lambda v: int(v.version))
    return Provenance(
        uri,
        version.tags.get(REGISTERED_BY_TAG),
        version.run_id,
        f"{version.name} version {version.version}",
    )


def check_trusted(found: Provenance, trust: list[str], override: str = "trust={}") -> None:
    """Refuse, in one line, a model whose author the user has not said they trust; `override`
    is how the command takes `trust` (predict: trust=bob, evaluate: trust=[bob])."""
    me = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if ANYONE in trust or found.author in {me, *trust} - {None}:
        return
    if found.author is None:
        advice = f"{override.format(repr(ANYONE))} loads it anyway"
    else:
        advice = f"load it only if you trust {found.author}: {override.format(found.author)}"
    raise InputError(f"{found.line()}; a logged model is code, {advice}")


def check(
    uri: str, tracking_uri: str, trust: list[str], override: str = "trust={}"
) -> Provenance | None:
    """What the server records of the model at `uri`, after refusing it if untrusted (a
    server with users); None for a local model, whose author is the user."""
    if not uri.startswith(("runs:/", "models:/")) or not is_server(tracking_uri):
        return None
    from mlflow.tracking import MlflowClient

    try:
        found = provenance(uri, MlflowClient(tracking_uri))
    except InputError:
        raise
    except Exception as exc:  # MLflow's errors for unknown runs, names and aliases
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"model={uri!r} cannot be loaded: {first}") from None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        check_trusted(found, trust, override)
    return found


def mine(found: Provenance | None) -> bool:
    """Whether the model is the user's own (or from a server without users): results may then
    be written to it, such as metrics linked to its logged model."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    return found is None or not user or found.author == user


def _run_owner(client, run_id: str) -> str | None:
    return client.get_run(run_id).data.tags.get(OWNER_TAG)
