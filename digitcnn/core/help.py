"""`--help`: the groups a user chooses and their options, read from conf/ and experiments/ when
the help is printed (conf/hydra/help/*.yaml lay it out; the `digitcnn_help` resolver fills it).

Hydra's own help lists every group it knows, the schemas too (`schema=evaluate` would break a
run) and `local: example` (a file to copy), but not the launchers or the searches."""

from __future__ import annotations

from pathlib import Path

import yaml

from digitcnn.core import paths

# Groups a user chooses, in the order of the command line's habits; what each picks.
GROUPS = {
    "dataset": "the data",
    "model": "the network",
    "optimizer": "the optimizer and its schedule",
    "trainer": "epochs, batches, threads",
    "experiment": "recipes in experiments/",
    "hparams_search": "a search space (with -m)",
    "debug": "checks, not results",
    "hydra/launcher": "where a sweep's jobs run (with -m)",
    "hydra/sweeper/sampler": "the search's sampler",
    "hydra/sweeper/pruner": "the search's pruner",
}
EVALUATE_GROUPS = ("dataset",)
LAUNCHERS = ("basic", "joblib")  # Hydra's own and the joblib plugin's; others from conf/


def _options(group: str) -> list[str]:
    folder = paths.experiments_dir() if group == "experiment" else paths.config_dir() / group
    found = sorted(p.stem for p in Path(folder).glob("*.yaml"))
    if group == "hydra/launcher":
        found = sorted({*LAUNCHERS, *found})
    return found


def _defaults(config_name: str) -> dict[str, str]:
    """The option each group takes when the command line names none."""
    text = (paths.config_dir() / f"{config_name}.yaml").read_text()
    chosen = {}
    for entry in yaml.safe_load(text).get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                chosen[group.removeprefix("optional ").removeprefix("override ")] = option
    chosen.setdefault("hydra/launcher", "basic")
    return chosen


def groups_text(config_name: str = "config") -> str:
    """`  dataset           mnist*, digits, images   the data`, a line per group (`*`: the
    default; `null`: none by default)."""
    defaults = _defaults(config_name)
    names = EVALUATE_GROUPS if config_name == "evaluate" else GROUPS
    lines = []
    for group in names:
        options = [f"{o}*" if defaults.get(group) == o else o for o in _options(group)]
        listed = ", ".join(options)
        if len(listed) <= 40:
            lines.append(f"  {group:<22} {listed:<40}  {GROUPS[group]}")
        else:  # the description on a line of its own
            lines += [f"  {group:<22} {listed}", f"  {'':<22} ({GROUPS[group]})"]
    return "\n".join(lines)
