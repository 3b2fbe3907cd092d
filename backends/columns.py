"""Tangent columns of forward mode: one per shared hyperparameter value, ordered by start step.

Column ``j`` is the derivative with respect to value ``seg`` of type ``name``.  It is all zero
until its segment starts, so at step ``t`` only the first ``started(t)`` columns (those whose
segment starts at or before ``t``) need work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from hpo.schedule import segment_index, segment_starts


@final
@dataclass(frozen=True)
class ColumnLayout:
    """The order of tangent columns and, per step, which are started and which is active."""

    names: tuple[str, ...]
    columns: tuple[tuple[str, int], ...]
    starts: tuple[int, ...]
    horizon: int
    counts: tuple[int, ...]

    @classmethod
    def build(cls, counts: dict[str, int], horizon: int) -> ColumnLayout:
        """Columns of every type and segment, stably sorted by the step their segment starts."""
        cols = []
        for i, (name, n) in enumerate(counts.items()):
            for j, s in enumerate(segment_starts(horizon, n)):
                cols.append((s, i, j, name))
        cols.sort(key=lambda c: (c[0], c[1], c[2]))
        return cls(
            names=tuple(counts),
            columns=tuple((c[3], c[2]) for c in cols),
            starts=tuple(c[0] for c in cols),
            horizon=horizon,
            counts=tuple(counts.values()),
        )

    @property
    def size(self) -> int:
        """Total number of columns."""
        return len(self.columns)

    def segments(self, t: int) -> dict[str, int]:
        """Active segment of every type at step ``t``."""
        return {k: segment_index(t, self.horizon, n) for k, n in zip(self.names, self.counts)}

    def started(self, t: int) -> int:
        """Number of columns whose segment starts at or before step ``t``."""
        return sum(1 for s in self.starts if s <= t)

    def direct(self, t: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The one-hot hyperparameter tangents ``[d x_t]`` of the started columns at step ``t``.

        ``direct(t)[name][j]`` is 1 where column ``j`` is type ``name``'s active segment, else 0.
        """
        k = self.started(t)
        seg = self.segments(t)
        out = {}
        for name in self.names:
            row = [1.0 if (c == name and s == seg[name]) else 0.0 for c, s in self.columns[:k]]
            out[name] = torch.tensor(row, dtype=dtype, device=device)
        return out

    def phase_starts(self) -> tuple[int, ...]:
        """Steps at which the started columns or an active segment change: the distinct segment starts.

        Between two consecutive phase starts, ``started(t)``, ``segments(t)`` and ``direct(t)`` are
        constant, so they can be computed once per phase instead of once per step.
        """
        return tuple(sorted(set(self.starts)))

    def to_types(self, per_column: Tensor) -> dict[str, Tensor]:
        """Scatter a per-column vector (length ``size``) into a per-type dict of per-segment vectors."""
        out = {name: per_column.new_zeros(n) for name, n in zip(self.names, self.counts)}
        idx: dict[str, list[int]] = {name: [0] * n for name, n in zip(self.names, self.counts)}
        for j, (name, s) in enumerate(self.columns):
            idx[name][s] = j
        return {name: per_column[torch.tensor(idx[name], device=per_column.device)] for name in out}
