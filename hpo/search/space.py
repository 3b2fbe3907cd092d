"""Search spaces of the black-box methods: one range per hyperparameter type.

A range is ``low:high`` or ``low:high:log``, e.g. ``lr=1e-3:1:log,momentum=0:0.99,wd=1e-6:1e-2:log``.
"Constant" search samples one value per type; "schedule" search samples every shared value of
every type independently (same segment form as the learned schedules: ``counts[name]`` values,
value ``floor(n t / T)`` at step t, :func:`sample_schedule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

import torch

from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule


@final
@dataclass(frozen=True)
class Range:
    """Sampling range of one type: uniform on ``[low, high]``, or log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    def from_unit(self, u: float) -> float:
        """Map ``u`` in [0, 1] into the range (geometrically when ``log``)."""
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


SearchSpace = dict[str, Range]


def parse_space(text: str) -> SearchSpace:
    """Parse ``name=low:high[:log],...``; ``ValueError`` (one line) on malformed input."""
    space: SearchSpace = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name, eq, rng = piece.partition("=")
        parts = rng.split(":")
        if (
            not eq
            or not name.strip()
            or len(parts) not in (2, 3)
            or (len(parts) == 3 and parts[2] not in ("log", "lin"))
        ):
            raise ValueError(f"search space entry {piece!r} is not NAME=LOW:HIGH or NAME=LOW:HIGH:log")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"search space entry {piece!r} has a bound that is not a number") from None
        log = len(parts) == 3 and parts[2] == "log"
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"search space entry {piece!r} needs finite LOW <= HIGH")
        if log and low <= 0:
            raise ValueError(f"search space entry {piece!r}: a log range needs LOW > 0")
        space[name.strip()] = Range(low, high, log)
    if not space:
        raise ValueError("the search space is empty")
    return space


def default_space(rule: UpdateRule) -> SearchSpace:
    """Each type's default range from its spec (:attr:`HyperSpec.search_range`), where it has one."""
    return {s.name: Range(*s.search_range) for s in rule.hyperparameters if s.search_range is not None}


def resolve_space(rule: UpdateRule, text: str | None) -> SearchSpace:
    """The user's space (missing types take the rule's default range) checked against ``rule``."""
    space = {**default_space(rule), **(parse_space(text) if text else {})}
    for name in space:
        if name not in rule.hyper_names:
            raise ValueError(f"optimizer {rule.name!r} has no hyperparameter {name!r} (it has {', '.join(rule.hyper_names)})")
    for s in rule.hyperparameters:
        if s.name not in space:
            raise ValueError(f"give a range for {s.name} (optimizer {rule.name!r} has no default for it)")
        r = space[s.name]
        for x in (r.low, r.high):
            if not s.contains(x):
                raise ValueError(f"{s.name} bound {x:g} is out of range ({s.range_text()})")
    return space


def sample_schedule(space: SearchSpace, counts: Mapping[str, int], gen: torch.Generator) -> Schedule:
    """Every shared value drawn independently from its type's range."""
    out = {}
    for name, r in space.items():
        u = torch.rand(int(counts.get(name, 1)), generator=gen, dtype=torch.float64)
        out[name] = torch.tensor([r.from_unit(float(x)) for x in u], dtype=torch.float64)
    return Schedule(out)
