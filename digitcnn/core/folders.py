"""A Hydra callback that checks what Hydra is about to write, before it writes it.

Hydra creates a run's (or a sweep's) folder itself and answers a folder it cannot create with a
traceback; this check runs first and answers with one line naming the key, like any other bad
input; so is a command that needs an extra that is not installed (digitcnn.core.extras). Hydra
also writes the command's overrides and the config into that folder
(`.hydra/`), readable by every local user: a tracking URI that carries a password is refused
here, before any of it is written.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from digitcnn.core.paths import ensure_writable


def check_writable(folder: Path, key: str, config: DictConfig) -> None:
    """Create `folder` and write a file in it, or exit 2 with one line naming `key` (and
    `paths.root_dir` when the folder was derived from an overridden root)."""
    try:
        ensure_writable(folder)
    except OSError as exc:
        root = str(config.paths.root_dir)
        origin = f" (from paths.root_dir={root!r})" if str(folder).startswith(root) else ""
        reason = exc.strerror or type(exc).__name__
        print(f"error: {key}={str(folder)!r}{origin} cannot be written: {reason}", file=sys.stderr)
        sys.exit(2)  # Hydra would turn an exception here into a warning


def _password_in(value: str) -> urllib.parse.SplitResult | None:
    """The URL `value`, if it carries a password (`scheme://user:password@host`)."""
    try:
        parts = urllib.parse.urlsplit(value)
        return parts if "://" in value and parts.password else None
    except ValueError:  # not a URL: nothing to hide in it
        return None


def _strings(node: DictConfig | ListConfig, key: str = ""):
    """(key, value) for every string of a config, resolved where it resolves (an
    interpolation such as `${oc.env:...}` gives its value; one that cannot be resolved yet, such
    as `${hydra:...}` before a job, gives its text)."""
    raw = OmegaConf.to_container(node, resolve=False)
    names = raw.keys() if isinstance(node, DictConfig) else range(len(raw))
    for name in names:
        child = f"{key}.{name}" if isinstance(node, DictConfig) else f"{key}[{name}]"
        try:
            value = node[name]
        except Exception:  # not resolvable here, or missing: its text is what there is
            value = raw[name]
        if isinstance(value, DictConfig | ListConfig):
            yield from _strings(value, child.lstrip("."))
        elif isinstance(value, dict | list):
            yield from _strings(OmegaConf.create(value), child.lstrip("."))
        elif isinstance(value, str):
            yield child.lstrip("."), value


def _override_values(overrides: list[str]):
    """(key, value) for every value the command line gives, sweeps' values one by one, as
    Hydra parses them (quoted or not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra refuses it itself, before writing anything; check the text
        yield from ((o.partition("=")[0].lstrip("+~"), o.partition("=")[2]) for o in overrides)
        return
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():  # its elements as given, a quoted one's text
            values = [getattr(v, "text", v) for v in override.sweep_iterator()]
        else:
            values = [override.value()]
        for value in values:
            if isinstance(value, str):
                yield key, value
            elif isinstance(value, dict | list):  # a dict or list given on the command line
                yield from ((f"{key}.{k}", v) for k, v in _strings(OmegaConf.create(value)))


def check_no_password(config: DictConfig) -> None:
    """Exit 2 with one line if any value of the command (the command line, quoted or not, a
    recipe, conf/local/, the environment through `${oc.env:...}`) is a URL that carries a
    password (`scheme://user:password@host`): Hydra writes the overrides and the config into
    the run's folder, readable by every local user, and a command line shows in process lists
    and shell histories. Passwords belong in the environment: MLFLOW_TRACKING_PASSWORD (or
    ~/.mlflow/credentials) for MLflow, PGPASSWORD or ~/.pgpass for a database."""
    overrides = [*config.hydra.overrides.task, *config.hydra.overrides.hydra]
    for key, value in [*_override_values(overrides), *_strings(config)]:
        parts = _password_in(value)
        if parts is None:
            continue
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        origin = (
            " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == value else ""
        )
        where = (
            "the user and password in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            if key == "tracking.uri"
            else "the password in the environment (PGPASSWORD or ~/.pgpass for PostgreSQL)"
        )
        print(
            f"error: {key}{origin} carries a password, which would be written to the run's "
            f"files: give {key}={bare} and {where}",
            file=sys.stderr,
        )
        sys.exit(2)


def check_extras(config: DictConfig) -> None:
    """Exit 2 with one line if the command needs an extra that is not installed."""
    from digitcnn.core.errors import InputError
    from digitcnn.core.extras import check_config

    try:
        check_config(config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def check_sweeper_groups(config: DictConfig) -> None:
    """Exit 2 with one line if a key of the sweeper that is a config group of its own
    (`hydra.sweeper.pruner`, `hydra.sweeper.sampler`: conf/hydra/sweeper/<key>/) was given a
    bare value: `hydra.sweeper.pruner=none` means the group option hydra/sweeper/pruner=none,
    and as a value every trial would fail later."""
    from digitcnn.core.paths import config_dir

    sweeper = OmegaConf.select(config, "hydra.sweeper")
    for group in sorted((config_dir() / "hydra" / "sweeper").glob("*/")):
        value = OmegaConf.select(sweeper, group.name) if sweeper is not None else None
        if value is None or isinstance(value, DictConfig):
            continue
        options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        print(
            f"error: hydra.sweeper.{group.name}={value!r} is not allowed: the {group.name} is "
            f"chosen as a group, hydra/sweeper/{group.name}=NAME, one of {options}",
            file=sys.stderr,
        )
        sys.exit(2)


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_extras(config)
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_no_password(config)
        check_extras(config)
        check_sweeper_groups(config)
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir", config)
