"""Tangent columns of forward mode: one per shared hyperparameter value, ordered by start step.

Column ``j`` is the derivative with respect to value ``(group, seg)`` of type ``name`` (group 0
for a type shared over all parameters).  It is all zero until its segment starts, so at step
``t`` only the first ``started(t)`` columns (those whose segment starts at or before ``t``) need
work.  A grouped type with ``G`` groups and ``n`` segments has ``G n`` columns; the ``G`` columns
of one segment start together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import final

import torch
from torch import Tensor

from hpo.core.schedule import segment_index, segment_starts


@final
@dataclass(frozen=True)
class ColumnLayout:
    """The order of tangent columns and, per step, which are started and which are active.

    ``columns[j] = (name, seg)`` and ``column_groups[j]`` its group; ``groups[i]`` is the number of
    groups of type ``names[i]``, or 0 for a type shared over all parameters (a 1-D table).
    """

    names: tuple[str, ...]
    columns: tuple[tuple[str, int], ...]
    starts: tuple[int, ...]
    horizon: int
    counts: tuple[int, ...]
    groups: tuple[int, ...] = ()
    column_groups: tuple[int, ...] = field(default=())

    @classmethod
    def build(cls, counts: Mapping[str, int], horizon: int, groups: Mapping[str, int] | None = None) -> ColumnLayout:
        """Columns of every type, group and segment, stably sorted by the step their segment starts.

        ``groups[name]`` is the number of groups of a grouped type; absent types are shared.
        """
        groups = groups or {}
        cols = []
        for i, (name, n) in enumerate(counts.items()):
            for j, s in enumerate(segment_starts(horizon, n)):
                for g in range(max(1, groups.get(name, 0))):
                    cols.append((s, i, j, g, name))
        cols.sort(key=lambda c: (c[0], c[1], c[2], c[3]))
        return cls(
            names=tuple(counts),
            columns=tuple((c[4], c[2]) for c in cols),
            starts=tuple(c[0] for c in cols),
            horizon=horizon,
            counts=tuple(counts.values()),
            groups=tuple(int(groups.get(name, 0)) for name in counts),
            column_groups=tuple(c[3] for c in cols),
        )

    @property
    def size(self) -> int:
        """Total number of columns."""
        return len(self.columns)

    def group_count(self, name: str) -> int:
        """Groups of type ``name`` (0: shared over all parameters)."""
        return self.groups[self.names.index(name)] if self.groups else 0

    def segments(self, t: int) -> dict[str, int]:
        """Active segment of every type at step ``t``."""
        return {k: segment_index(t, self.horizon, n) for k, n in zip(self.names, self.counts)}

    def started(self, t: int) -> int:
        """Number of columns whose segment starts at or before step ``t``."""
        return sum(1 for s in self.starts if s <= t)

    def direct(self, t: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The one-hot hyperparameter tangents ``[d x_t]`` of the started columns at step ``t``.

        For a shared type ``direct(t)[name]`` is a ``(k,)`` vector, 1 where column ``j`` is the
        type's active segment, else 0.  For a grouped type it is ``(k, groups)``: row ``j`` is the
        unit vector of group ``g`` where column ``j`` is ``(name, g, active segment)``, else 0 (the
        tangent of the type's ``(groups,)`` value at step ``t``).
        """
        k = self.started(t)
        seg = self.segments(t)
        cgroups = self.column_groups or (0,) * self.size
        out = {}
        for name in self.names:
            n_groups = self.group_count(name)
            if n_groups == 0:
                row = [1.0 if (c == name and s == seg[name]) else 0.0 for c, s in self.columns[:k]]
                out[name] = torch.tensor(row, dtype=dtype, device=device)
            else:
                rows = [[1.0 if (c == name and s == seg[name] and g == h) else 0.0 for h in range(n_groups)]
                        for (c, s), g in zip(self.columns[:k], cgroups[:k])]
                out[name] = torch.tensor(rows, dtype=dtype, device=device).reshape(k, n_groups)
        return out

    def phase_starts(self) -> tuple[int, ...]:
        """Steps at which the started columns or an active segment change: the distinct segment starts.

        Between two consecutive phase starts, ``started(t)``, ``segments(t)`` and ``direct(t)`` are
        constant, so they can be computed once per phase instead of once per step.
        """
        return tuple(sorted(set(self.starts)))

    def to_types(self, per_column: Tensor) -> dict[str, Tensor]:
        """Scatter a per-column vector (length ``size``) into per-type ``(segments,)`` or ``(groups, segments)`` tables."""
        cgroups = self.column_groups or (0,) * self.size
        idx: dict[str, list[list[int]]] = {name: [[0] * n for _ in range(max(1, g))]
                                           for name, n, g in zip(self.names, self.counts, self.groups or (0,) * len(self.names))}
        for j, ((name, s), g) in enumerate(zip(self.columns, cgroups)):
            idx[name][g][s] = j
        out = {}
        for name in self.names:
            table = per_column[torch.tensor(idx[name], device=per_column.device)]
            out[name] = table if self.group_count(name) else table[0]
        return out
