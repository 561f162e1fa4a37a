"""Loading a logged model for `predict` and `evaluate`: the same refusal, in one line, with
the way forward when the reference names nothing yet (a registered model or alias that does
not exist: how a model becomes the champion)."""

from __future__ import annotations

import re

from digitcnn.core.errors import InputError


def load_logged_model(uri: str, load_uri: str | None = None):
    """The pyfunc model at `load_uri` (what the reference `uri` resolved to; `uri` itself by
    default), or an InputError naming `uri`."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(load_uri or uri)
    except Exception as exc:  # MLflow's errors for unknown runs, names, aliases and paths
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model={uri!r} cannot be loaded: {first}{_way_forward(uri, first)}"
        ) from None


def _way_forward(uri: str, reason: str) -> str:
    """For `models:/NAME@ALIAS` or `models:/NAME/...` whose name or alias does not exist: how
    one comes to exist."""
    named = re.match(r"(?i)models:/+([^/@]+)(?:@([^/]+))?", uri)
    if not named or named[1].startswith("m-") or "not found" not in reason.lower():
        return ""
    name, alias = named[1], named[2]
    champion = " and points @champion at its best job's" if alias == "champion" else ""
    return (
        f"; a sweep with tracking.register_as={name} registers its jobs' models{champion} "
        f"(python -m digitcnn.run -m seed=0,1,2 tracking.register_as={name})"
    )
