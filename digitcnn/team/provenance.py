"""Who made a logged model, and whether to load it: said before MLflow loads it.

A logged model is code: loading it runs the Python file it was logged with. On a team server
(digitcnn.team.app) the server records who created each logged model (and run, experiment,
model version), in tags no client can set. `python -m digitcnn.predict` and `python -m
digitcnn.evaluate` resolve the model reference they are given, in any spelling
(`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME/STAGE`, `models:/m-ID`,
`runs:/ID/PATH`, `mlflow-artifacts:/...`, an artifact URL, schemes in any case), to **one**
logged model of the tracking server, read the server's record of who created it, say it in
one line, and load that logged model (`models:/m-ID`: what was checked is what loads) only
when its creator is the user or someone the user named in `trust` (`*`: anyone, also where
the server keeps no record). A reference that does not resolve to a logged model is refused
from a server with users. The user is who MLflow's client says it is: MLFLOW_TRACKING_USERNAME,
else ~/.mlflow/credentials. A model from a local store or a folder is the user's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from digitcnn.core.config import is_server, tracking_user
from digitcnn.core.errors import InputError
from digitcnn.team.rules import OWNER_TAG, REGISTERED_BY_TAG

ANYONE = "*"
MODEL_ID = re.compile(r"(?:^|/)(m-[0-9a-f]{32})(?:/|$)")


@dataclass(frozen=True)
class Provenance:
    uri: str  # as given
    load_uri: str  # what is loaded: the logged model it resolved to
    author: str | None  # the server's record of who created the logged model; None: none
    run_id: str | None
    version: str | None = None  # "alice.digitcnn version 3" for a registry reference
    registered_by: str | None = None

    def line(self) -> str:
        what = f"{self.uri} is {self.version}" if self.version else self.uri
        who = f"made by {self.author}" if self.author else "its author not recorded by the server"
        if self.version and self.registered_by and self.registered_by != self.author:
            who += f", registered by {self.registered_by}"
        return f"{what}, {who}, from run {self.run_id or '(none)'}"


def scheme_of(uri: str) -> str | None:
    """`models` for `Models:/...`; None for a path."""
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return found[1].lower() if found else None


def resolve(uri: str, client) -> Provenance:
    """The one logged model of the tracking server (`client`) that `uri` names."""
    scheme, _, rest = uri.partition(":")
    rest = rest.lstrip("/")
    scheme = scheme.lower()
    version = None
    if scheme == "models" and not MODEL_ID.fullmatch(rest):
        version = _version(client, uri, rest)
        source = MODEL_ID.search(version.source or "")  # models:/m-ID, as MLflow 3 registers
        model_id = version.model_id or (source[1] if source else None)
        if not model_id:
            raise InputError(
                f"model={uri!r} is {version.name} version {version.version}, which names no "
                "logged model (registered from a bare artifact folder): its author is unknown"
            )
    elif scheme == "runs":
        model_id = _run_model(client, uri, rest)
    else:  # models:/m-ID, mlflow-artifacts:/..., an artifact URL
        found = MODEL_ID.search(rest)
        if found is None:
            raise InputError(f"model={uri!r} names no logged model of {client.tracking_uri!r}")
        model_id = found[1]
    model = client.get_logged_model(model_id)
    return Provenance(
        uri=uri,
        load_uri=f"models:/{model.model_id}",
        author=model.tags.get(OWNER_TAG),
        run_id=model.source_run_id,
        version=f"{version.name} version {version.version}" if version else None,
        registered_by=version.tags.get(REGISTERED_BY_TAG) if version else None,
    )


def _version(client, uri: str, rest: str):
    """The model version `NAME/VERSION`, `NAME@ALIAS` or `NAME/STAGE` (`latest`) names."""
    name, _, selector = rest.partition("/")
    if not selector and "@" in name:
        name, alias = name.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if selector.isdigit():
        return client.get_model_version(name, selector)
    stages = None if selector.lower() in ("", "latest") else [selector]
    found = client.get_latest_versions(name, stages)
    if not found:
        raise InputError(f"model={uri!r}: {name!r} has no such version")
    return max(found, key=lambda v: int(v.version))


def _run_model(client, uri: str, rest: str) -> str:
    """The logged model that run ID logged as PATH (`runs:/ID/PATH`), in the run's own
    experiment; the newest whole one when it logged several."""
    run_id, _, path = rest.partition("/")
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    named = [m for m in models if m.name == path.strip("/") and str(m.status).endswith("READY")]
    if not named:
        raise InputError(f"model={uri!r}: run {run_id} logged no model named {path!r}")
    return max(named, key=lambda m: m.creation_timestamp).model_id


def check_trusted(found: Provenance, trust: list[str], override: str = "trust={}") -> None:
    """Refuse, in one line, a model whose author the user has not said they trust; `override`
    is how the command takes `trust` (predict: trust=bob, evaluate: trust=[bob])."""
    if ANYONE in trust or found.author in {tracking_user(), *trust} - {None}:
        return
    if found.author is None:
        advice = f"{override.format(repr(ANYONE))} loads it anyway"
    else:
        advice = f"load it only if you trust {found.author}: {override.format(found.author)}"
    raise InputError(f"{found.line()}; a logged model is code, {advice}")


def check(
    uri: str, tracking_uri: str, trust: list[str], override: str = "trust={}"
) -> Provenance | None:
    """What the server records of the model at `uri`, after refusing it if untrusted; None for
    a local model, whose author is the user. Load `found.load_uri`, not `uri`."""
    scheme = scheme_of(uri)
    if scheme in (None, "file"):  # a folder on this machine: the user's own files
        return None
    if not is_server(tracking_uri):
        if scheme in ("runs", "models"):  # the local store: the user's own
            return None
        raise InputError(
            f"model={uri!r} is not in the tracking store {tracking_uri!r}: give tracking.uri= "
            "the server that holds it, or a folder"
        )
    from mlflow.tracking import MlflowClient

    user = tracking_user()
    try:
        found = resolve(uri, MlflowClient(tracking_uri))
    except InputError:
        if user is None:  # a server without users: MLflow resolves it as it does
            return Provenance(uri, uri, None, None)
        raise
    except Exception as exc:  # MLflow's errors for unknown runs, names and aliases
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"model={uri!r} cannot be loaded: {first}") from None
    if user is not None:
        check_trusted(found, trust, override)
    return found


def mine(found: Provenance | None) -> bool:
    """Whether the model is the user's own (or from a server without users): results may then
    be written to it, such as metrics linked to its logged model."""
    user = tracking_user()
    return found is None or not user or found.author == user
