"""Hydra's and OmegaConf's refusals of a command line, in digitcnn's one line: the key, what
was given, what is allowed, and a close match for a misspelt key or option.

Hydra prints these itself in 5 to 10 lines; the commands run Hydra with HYDRA_FULL_ERROR set
(`hydra_errors_raised`) so that the exception reaches them, and say it here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
from collections.abc import Iterator

EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}


@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra raises what it would print (unless the user set HYDRA_FULL_ERROR themselves)."""
    given = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if given is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = given


def one_line(exc: BaseException) -> str | None:
    """The line for a refused command line; None for any other error."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    if isinstance(exc, MissingConfigException):
        return _missing_option(exc)
    if isinstance(exc, OverrideParseException):
        first = str(exc).strip().splitlines()[0]
        return f"the command line cannot be parsed ({first}); quote a value with spaces: key='a b'"
    if isinstance(exc, ConfigCompositionException):
        return _refused_override(exc)
    return None


def _missing_option(exc) -> str:
    group, _, name = (exc.missing_cfg_file or "").rpartition("/")
    options = list(exc.options or [])
    if not group or not options:
        return str(exc).strip().splitlines()[0]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    return f"{group}={name} is not an option{hint}; choose one of {', '.join(options)}"


def _refused_override(exc) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = exc.__cause__
    text = str(exc).strip().splitlines()[0]
    reason = str(getattr(cause, "msg", "") or "").strip().splitlines()
    reason = reason[0] if reason else ""
    unknown = re.match(r"Key '([^']+)' not in '", reason)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and unknown:
        given = re.search(r"override '([^']+)'", text)
        key = given[1] if given else str(getattr(cause, "full_key", unknown[1]))
        return f"{key} is not a key of the config{_close_key(key, unknown[1], cause)}"
    merging = re.match(r"Error merging override (.+)$", text)
    if isinstance(cause, ValidationError) and merging:
        key, _, value = merging[1].partition("=")
        converted = re.search(r"converted to (\w+)", reason)
        allowed = EXPECTED.get(converted[1], converted[1]) if converted else reason
        expected = f"{allowed} is expected" if converted else allowed
        return f"{key.lstrip('+~')}={value!r} is not allowed: {expected}"
    return f"{text}: {reason}" if reason else text


def _close_key(key: str, wrong: str, cause) -> str:
    """` (did you mean model.dropout?)` for `modle.dropout`, from the fields of the node the
    wrong part was looked up in."""
    node = getattr(cause, "object_type", None)
    if node is None or not dataclasses.is_dataclass(node):
        return ""
    close = difflib.get_close_matches(wrong, [f.name for f in dataclasses.fields(node)], n=1)
    if not close:
        return ""
    parts = key.split(".")
    fixed = ".".join(close[0] if part == wrong else part for part in parts)
    return f" (did you mean {fixed}?)"
