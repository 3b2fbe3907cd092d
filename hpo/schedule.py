"""Hyperparameter schedules shared over contiguous segments of the inner horizon.

A type with ``n`` shared values over a horizon of ``T`` steps uses value ``seg(t)`` at step ``t``:

.. math::  \\mathrm{seg}(t) = \\lfloor n t / T \\rfloor, \\qquad t = 0, \\dots, T-1

Because segments are fractions of the horizon, a schedule learned on ``T`` steps is stretched to
any other horizon by evaluating it with that horizon.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import final

import torch
from torch import Tensor

from hpo.optimizers.base import UpdateRule


def segment_index(t: int, horizon: int, count: int) -> int:
    """``floor(count * t / horizon)``: the segment that step ``t`` of ``horizon`` falls in."""
    return (count * t) // horizon


def segment_indices(horizon: int, count: int) -> Tensor:
    """Segment of every step ``0..horizon-1`` as a LongTensor."""
    return (torch.arange(horizon, dtype=torch.long) * count) // horizon


def segment_starts(horizon: int, count: int) -> list[int]:
    """First step of each of the ``count`` segments: ``ceil(j * horizon / count)``."""
    return [-((-j * horizon) // count) for j in range(count)]


def check_counts(counts: Mapping[str, int], horizon: int) -> None:
    """Raise ``ValueError`` unless every count is in ``1..horizon``."""
    for name, n in counts.items():
        if n < 1:
            raise ValueError(f"the count of shared {name} values must be at least 1, got {n}")
        if n > horizon:
            raise ValueError(f"{n} shared {name} values need at least {n} inner steps, got {horizon}")


@final
@dataclass(frozen=True)
class Schedule:
    """Shared values of each hyperparameter type: ``values[name]`` is a 1-D tensor of length n."""

    values: dict[str, Tensor]

    @classmethod
    def constant(cls, hyper: Mapping[str, float], counts: Mapping[str, int] | None = None) -> Schedule:
        """A schedule holding each value constant (``counts`` copies of it, default 1)."""
        counts = counts or {}
        return cls({k: torch.full((counts.get(k, 1),), float(v), dtype=torch.float64) for k, v in hyper.items()})

    @classmethod
    def initial(
        cls,
        rule: UpdateRule,
        counts: Mapping[str, int] | None = None,
        init: Mapping[str, float] | None = None,
    ) -> Schedule:
        """The FDS starting point of ``rule``: each type's default count and init, overridable."""
        counts = counts or {}
        init = init or {}
        vals = {}
        for s in rule.hyperparameters:
            vals[s.name] = torch.full((int(counts.get(s.name, s.count)),), float(init.get(s.name, s.init)), dtype=torch.float64)
        return cls(vals)

    @property
    def counts(self) -> dict[str, int]:
        """Number of shared values per type."""
        return {k: int(v.numel()) for k, v in self.values.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Hyperparameter type names, in order."""
        return tuple(self.values)

    def at(self, t: int, horizon: int) -> dict[str, float]:
        """The value of every type at step ``t`` of ``horizon`` (as Python floats)."""
        return {k: float(v[segment_index(t, horizon, v.numel())]) for k, v in self.values.items()}

    def dense(self, horizon: int) -> dict[str, Tensor]:
        """Every type's value at each of the ``horizon`` steps (``values[seg(t)]``)."""
        return {k: v[segment_indices(horizon, v.numel())] for k, v in self.values.items()}

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Schedule:
        """A copy on ``device`` with ``dtype``."""
        return Schedule({k: v.to(dtype=dtype, device=device) for k, v in self.values.items()})

    def values_like(self, ref: Tensor) -> dict[str, Tensor]:
        """Every type's values in ``ref``'s dtype and on its device: the one cast every method uses."""
        return {k: v.to(dtype=ref.dtype, device=ref.device) for k, v in self.values.items()}

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists of floats, for JSON."""
        return {k: [float(x) for x in v.detach().cpu()] for k, v in self.values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, list[float]]) -> Schedule:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on malformed data."""
        if not isinstance(data, Mapping) or not data:
            raise ValueError("a schedule is a JSON object mapping hyperparameter names to lists of numbers")
        vals = {}
        for k, v in data.items():
            if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"schedule entry {k!r} must be a non-empty list of numbers")
            if not all(math.isfinite(x) for x in v):
                raise ValueError(f"schedule entry {k!r} has a non-finite value")
            vals[str(k)] = torch.tensor([float(x) for x in v], dtype=torch.float64)
        return cls(vals)

    def save(self, path: str | Path) -> None:
        """Write the schedule as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule written by :meth:`save`; ``ValueError`` if unreadable or malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read schedule {path}: {e}") from None
        if isinstance(data, dict) and "schedule" in data:
            data = data["schedule"]
        return cls.from_dict(data)

    def check(self, rule: UpdateRule) -> None:
        """Raise ``ValueError`` unless the types match ``rule`` and every value is in range."""
        if set(self.values) != set(rule.hyper_names):
            raise ValueError(
                f"schedule has {sorted(self.values)} but optimizer {rule.name!r} needs {sorted(rule.hyper_names)}"
            )
        for s in rule.hyperparameters:
            for x in self.values[s.name].tolist():
                if not s.contains(x):
                    raise ValueError(f"{s.name} = {x:g} is out of range ({s.range_text()})")
