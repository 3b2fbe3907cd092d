"""Checks of single configuration values, each raising :class:`~hpo.errors.ConfigError` with its field.

Used where a configuration is built (:mod:`hpo.app.config`, :mod:`hpo.app.compare_config`), so a value
loaded from a checkpoint or a JSON file is held to the same rules as one typed on the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hpo.errors import ConfigError

#: Seeds are combined as ``seed * 100003 + k``; keeping them below 2**31 keeps that in 64 bits.
MAX_SEED = 2**31 - 1
#: MNIST-1D's generator needs a handful of samples to split train/test.
MIN_SAMPLES = 10
#: Larger horizons, counts and sample counts are typos (1e12 steps would run for centuries).
MAX_STEPS = 10**8
MAX_COUNT = 10**5
MAX_SAMPLES = 10**8


def is_int(x: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def integer(field: str, x: Any, low: int = 1, high: int = MAX_STEPS) -> int:
    """``x`` as an int in ``low..high``."""
    if not is_int(x):
        raise ConfigError(field, f"must be an integer, got {x!r}")
    if not low <= x <= high:
        at_least = x < low and low == 1 and high == MAX_STEPS  # the usual bound; a too-large value names the range
        raise ConfigError(field, f"must be at least {low}, got {x}" if at_least else f"must be in {low}..{high}, got {x}")
    return int(x)


def optional_integer(field: str, x: Any, low: int = 1, high: int = MAX_STEPS) -> int | None:
    """None, or ``x`` as an int in ``low..high``."""
    return None if x is None else integer(field, x, low, high)


def number(field: str, x: Any) -> float:
    """``x`` as a finite float."""
    if not is_number(x):
        raise ConfigError(field, f"must be a number, got {x!r}")
    if not math.isfinite(x):
        raise ConfigError(field, f"must be a finite number, got {x}")
    return float(x)


def open_interval(field: str, x: Any, low: float, high: float) -> float:
    """``x`` as a float in ``(low, high)``."""
    v = number(field, x)
    if not low < v < high:
        raise ConfigError(field, f"must be in ({low:g}, {high:g}), got {v:g}")
    return v


def positive(field: str, x: Any) -> float:
    """``x`` as a finite float > 0."""
    v = number(field, x)
    if not v > 0:
        raise ConfigError(field, f"must be positive, got {v:g}")
    return v


def at_least(field: str, x: Any, low: float) -> float:
    """``x`` as a finite float, at least ``low``."""
    v = number(field, x)
    if v < low:
        raise ConfigError(field, f"must be at least {low:g}, got {v:g}")
    return v


def off_or_at_least(field: str, x: Any, low: float) -> float:
    """``x`` as a finite float: 0 (off) or at least ``low``."""
    v = number(field, x)
    if v != 0 and v < low:
        raise ConfigError(field, f"must be 0 (off) or at least {low:g}, got {v:g}")
    return v


def optional_positive(field: str, x: Any) -> float | None:
    """None, or a finite float > 0."""
    return None if x is None else positive(field, x)


def int_tuple(field: str, x: Any, high: int = MAX_STEPS) -> tuple[int, ...]:
    """A non-empty list or tuple of integers in ``1..high``."""
    if not isinstance(x, (list, tuple)) or not x or not all(is_int(v) for v in x):
        raise ConfigError(field, f"must be positive integers, got {x!r}")
    for v in x:
        integer(field, v, 1, high)
    return tuple(int(v) for v in x)


def name_map(field: str, x: Any, kind: str) -> dict[str, Any]:
    """A mapping of hyperparameter names to ints (``kind == "int"``) or finite numbers."""
    if not isinstance(x, Mapping):
        raise ConfigError(field, f"must map hyperparameter names to values, got {x!r}")
    out: dict[str, Any] = {}
    for k, v in x.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(field, f"names must be non-empty strings, got {k!r}")
        if kind == "int":
            if not is_int(v):
                raise ConfigError(field, f"{k}={v!r} is not an integer")
            if not 1 <= v <= MAX_COUNT:
                raise ConfigError(field, f"the count of shared {k} values must be in 1..{MAX_COUNT}, got {v}")
            out[k] = int(v)
        else:
            if not is_number(v):
                raise ConfigError(field, f"{k}={v!r} is not a number")
            if not math.isfinite(v):
                raise ConfigError(field, f"{k} must be finite, got {v}")
            out[k] = float(v)
    return out


def text(field: str, x: Any, optional: bool = False) -> str | None:
    """A non-empty string (or None when ``optional``)."""
    if x is None and optional:
        return None
    if not isinstance(x, str) or not x:
        raise ConfigError(field, f"must be a non-empty string, got {x!r}")
    return x


def flag(field: str, x: Any) -> bool:
    """A bool (not an int posing as one)."""
    if not isinstance(x, bool):
        raise ConfigError(field, f"must be true or false, got {x!r}")
    return x


def choice(field: str, x: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if x not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}, got {x!r}")
    return str(x)


def names_of(field: str, given: Mapping[str, Any], allowed: tuple[str, ...], owner: str) -> None:
    """Every key of ``given`` is in ``allowed`` (the hyperparameters of optimizer ``owner``)."""
    for name in given:
        if name not in allowed:
            raise ConfigError(field, f"optimizer {owner!r} has no hyperparameter {name!r} (it has {', '.join(allowed)})")


def seed(field: str, x: Any) -> int:
    """A seed in ``0..MAX_SEED``."""
    if not is_int(x) or not 0 <= x <= MAX_SEED:
        raise ConfigError(field, f"must be in 0..{MAX_SEED}, got {x!r}")
    return int(x)
