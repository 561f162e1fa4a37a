"""A search space in Hydra's override syntax, as Optuna distributions.

`hydra.sweeper.params` says it as hydra-optuna-sweeper users know it: `choice(a, b)`,
`range(1, 9, step=2)`, `interval(0.0, 0.5)` and `tag(log, interval(1e-4, 0.03))`; a plain
value is fixed for every trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from digitcnn.core.errors import InputError


def _distribution(override: Override) -> BaseDistribution:
    key = override.get_key_element()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if override.is_range_sweep():
        numbers = (value.start, value.stop, value.step)
        if any(
            isinstance(n, float) for n in numbers
        ):  # Hydra's stop is exclusive, Optuna's high not
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise InputError(
        f"hydra.sweeper.params.{key}: a search dimension is choice(...), range(...) or "
        "interval(...), optionally tag(log, ...)"
    )


def parse(params: Mapping[str, Any], arguments: list[str]) -> tuple[dict, dict]:
    """`hydra.sweeper.params` and the command line's sweep overrides (which win) as
    (name -> distribution, name -> fixed value as Hydra spells it)."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as exc:  # Hydra's OverrideParseException: the message names the line
        raise InputError(f"hydra.sweeper.params: {str(exc).splitlines()[0]}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            try:
                space[key] = _distribution(override)
            except ValueError as exc:  # Optuna's: low > high, a log range reaching 0
                raise InputError(f"hydra.sweeper.params.{key}: {exc}") from None
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """A trial's overrides: its sampled values, then the fixed ones."""
    return [f"{key}={_spelled(value)}" for key, value in params.items()] + [
        f"{key}={value}" for key, value in fixed.items()
    ]


def _spelled(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # every digit: the trial's run records exactly what Optuna chose
    if value is None:
        return "null"
    return str(value)
