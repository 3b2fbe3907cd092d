"""Hyperparameter schedules shared over contiguous segments of the inner horizon.

A type with ``n`` shared values over a horizon of ``T`` steps uses value ``seg(t)`` at step ``t``:

.. math::  \\mathrm{seg}(t) = \\lfloor n t / T \\rfloor, \\qquad t = 0, \\dots, T-1

Because segments are fractions of the horizon, a schedule learned on ``T`` steps is stretched to
any other horizon by evaluating it with that horizon.

A type can also be shared over parameter *groups* (:mod:`hpo.core.grouping`): its values are then a
``(groups, segments)`` table, and parameter ``p`` at step ``t`` uses
``values[name][group(p), seg(t)]``.  The segment is always the last dimension: a shared type is a
1-D ``(segments,)`` tensor, a grouped type a 2-D ``(groups, segments)`` one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

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
    """Shared values of each hyperparameter type.

    ``values[name]`` is a 1-D ``(segments,)`` tensor for a type shared over all parameters and a
    2-D ``(groups, segments)`` tensor for a grouped type.  ``groups[name]`` optionally names the
    groups of a grouped type (for files, the console and pictures; the arithmetic never needs it).
    """

    values: dict[str, Tensor]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
        groups: Mapping[str, int] | None = None,
    ) -> Schedule:
        """The FDS starting point of ``rule``: each type's default count and init, overridable.

        ``groups[name]`` makes type ``name`` grouped: a ``(groups, count)`` table of the init value.
        """
        counts = counts or {}
        init = init or {}
        groups = groups or {}
        vals = {}
        for s in rule.hyperparameters:
            shape = (int(counts.get(s.name, s.count)),)
            if s.name in groups:
                shape = (int(groups[s.name]), *shape)
            vals[s.name] = torch.full(shape, float(init.get(s.name, s.init)), dtype=torch.float64)
        return cls(vals)

    @property
    def counts(self) -> dict[str, int]:
        """Number of shared values over time (segments) per type."""
        return {k: int(v.shape[-1]) for k, v in self.values.items()}

    @property
    def group_counts(self) -> dict[str, int]:
        """Number of groups of every grouped (2-D) type."""
        return {k: int(v.shape[0]) for k, v in self.values.items() if v.dim() == 2}

    @property
    def size(self) -> int:
        """Total number of values (groups x segments summed over the types)."""
        return sum(int(v.numel()) for v in self.values.values())

    @property
    def names(self) -> tuple[str, ...]:
        """Hyperparameter type names, in order."""
        return tuple(self.values)

    def group_names(self, name: str) -> tuple[str, ...]:
        """The group names of grouped type ``name`` (``0, 1, ...`` when none were given)."""
        n = int(self.values[name].shape[0])
        given = tuple(self.groups.get(name, ()))
        return given if len(given) == n else tuple(str(g) for g in range(n))

    def at(self, t: int, horizon: int) -> dict[str, float | list[float]]:
        """The value of every type at step ``t`` of ``horizon``: a float, or one float per group."""
        out: dict[str, float | list[float]] = {}
        for k, v in self.values.items():
            x = v[..., segment_index(t, horizon, v.shape[-1])]
            out[k] = [float(e) for e in x] if x.dim() else float(x)
        return out

    def dense(self, horizon: int) -> dict[str, Tensor]:
        """Every type's value at each of the ``horizon`` steps (``values[..., seg(t)]``, time last)."""
        return {k: v[..., segment_indices(horizon, v.shape[-1])] for k, v in self.values.items()}

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Schedule:
        """A copy on ``device`` with ``dtype``."""
        return Schedule({k: v.to(dtype=dtype, device=device) for k, v in self.values.items()}, self.groups)

    def values_like(self, ref: Tensor) -> dict[str, Tensor]:
        """Every type's values in ``ref``'s dtype and on its device: the one cast every method uses."""
        return {k: v.to(dtype=ref.dtype, device=ref.device) for k, v in self.values.items()}

    def with_groups(self, groups: Mapping[str, Sequence[str]]) -> Schedule:
        """The same values with the group names ``groups`` (type -> names) attached."""
        return Schedule(dict(self.values), {k: tuple(v) for k, v in groups.items() if k in self.values})

    def broadcast_groups(self, group_counts: Mapping[str, int]) -> Schedule:
        """Each type shaped for ``group_counts`` (type -> groups; absent = shared); ``ValueError`` if it cannot be.

        A shared (1-D) type that is to be grouped is copied to every group, so a schedule learned
        shared can start a grouped search; a grouped type must have the same number of groups.
        """
        vals = {}
        for k, v in self.values.items():
            want = group_counts.get(k)
            if want is None:
                if v.dim() != 1:
                    raise ValueError(f"{k} has {v.shape[0]} groups but is not grouped (give its grouping rule)")
                vals[k] = v
            elif v.dim() == 1:
                vals[k] = v.unsqueeze(0).repeat(int(want), 1)
            elif v.shape[0] != want:
                raise ValueError(f"{k} has {v.shape[0]} groups but its grouping rule gives {want}")
            else:
                vals[k] = v
        return Schedule(vals, self.groups)

    def check_groups(self, group_counts: Mapping[str, int]) -> None:
        """``ValueError`` unless exactly the types in ``group_counts`` are grouped, with those counts."""
        if self.group_counts != dict(group_counts):
            have = ", ".join(f"{k}: {n}" for k, n in self.group_counts.items()) or "none"
            want = ", ".join(f"{k}: {n}" for k, n in group_counts.items()) or "none"
            raise ValueError(f"the schedule's groups ({have}) do not match the grouping ({want})")

    def to_dict(self) -> dict[str, list[float] | list[list[float]]]:
        """Plain lists of floats (a list of lists, one per group, for a grouped type), for JSON."""
        return {k: v.detach().cpu().to(torch.float64).tolist() for k, v in self.values.items()}

    def groups_dict(self) -> dict[str, list[str]]:
        """The group names of every grouped type, for JSON (``{"lr": ["conv1", "fc"]}``)."""
        return {k: list(self.group_names(k)) for k, v in self.values.items() if v.dim() == 2}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], groups: Mapping[str, Any] | None = None) -> Schedule:
        """Inverse of :meth:`to_dict` (and :meth:`groups_dict`); raises ``ValueError`` on malformed data."""
        if not isinstance(data, Mapping) or not data:
            raise ValueError("a schedule is a JSON object mapping hyperparameter names to lists of numbers")
        vals = {}
        for k, v in data.items():
            rows = v if isinstance(v, list) and v and all(isinstance(r, list) for r in v) else None
            if rows is not None:
                if len({len(r) for r in rows}) != 1:
                    raise ValueError(f"schedule entry {k!r} has groups of different lengths")
                vals[str(k)] = torch.stack([_numbers(k, r) for r in rows])
            else:
                vals[str(k)] = _numbers(k, v)
        names: dict[str, tuple[str, ...]] = {}
        if groups is not None:
            if not isinstance(groups, Mapping):
                raise ValueError("the schedule's groups must map hyperparameter names to lists of group names")
            for k, g in groups.items():
                if k not in vals or vals[k].dim() != 2 or not isinstance(g, list) or len(g) != vals[k].shape[0] \
                        or not all(isinstance(x, str) for x in g):
                    raise ValueError(f"the groups of {k!r} do not match its schedule entry")
                names[str(k)] = tuple(g)
        return cls(vals, names)

    def save(self, path: str | Path) -> None:
        """Write the schedule as JSON to ``path`` (with its group names when a type is grouped)."""
        data: dict[str, Any] = self.to_dict()
        if self.group_counts:
            data = {"schedule": data, "groups": self.groups_dict()}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule written by :meth:`save`; ``ValueError`` if unreadable or malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read schedule {path}: {e}") from None
        if isinstance(data, dict) and "schedule" in data:
            return cls.from_dict(data["schedule"], data.get("groups"))
        return cls.from_dict(data)

    def check(self, rule: UpdateRule) -> None:
        """Raise ``ValueError`` unless the types match ``rule`` and every value is in range."""
        if set(self.values) != set(rule.hyper_names):
            raise ValueError(
                f"schedule has {sorted(self.values)} but optimizer {rule.name!r} needs {sorted(rule.hyper_names)}"
            )
        for s in rule.hyperparameters:
            for x in self.values[s.name].flatten().tolist():
                if not s.contains(x):
                    raise ValueError(f"{s.name} = {x:g} is out of range ({s.range_text()})")


def _numbers(name: Any, v: Any) -> Tensor:
    """A non-empty list of finite numbers as a float64 tensor; ``ValueError`` naming the entry otherwise."""
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"schedule entry {name!r} must be a non-empty list of numbers (or of lists of numbers)")
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"schedule entry {name!r} has a non-finite value")
    return torch.tensor([float(x) for x in v], dtype=torch.float64)
