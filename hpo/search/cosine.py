"""Cosine decay with linear warm-up: the schedule practitioners tune by random search or TPE.

A trial draws a peak learning rate and constant values of the other types; the learning rate then
follows, over the fraction :math:`u \\in [0, 1)` of training,

.. math::

    \\eta(u) = \\eta_{peak}\\, u / w \\quad (u < w), \\qquad
    \\eta(u) = \\tfrac12 \\eta_{peak} \\big(1 + \\cos(\\pi (u - w) / (1 - w))\\big) \\quad (u \\ge w)

with warm-up fraction :math:`w` (5%), sampled at the middle of each of ``segments`` equal
segments, so it is an ordinary shared schedule that retrains and stretches like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

import torch

from hpo.optimizers.base import UpdateRule
from hpo.schedule import Schedule


@final
@dataclass(frozen=True)
class CosineWarmup:
    """Turns a drawn constant setting into a cosine-with-warm-up learning-rate schedule.

    Example:
        >>> s = CosineWarmup(segments=4, warmup=0.25)(Schedule.constant({"lr": 1.0, "wd": 0.0}))
        >>> [round(x, 4) for x in s.values["lr"].tolist()]
        [0.5, 0.933, 0.5, 0.067]
    """

    segments: int = 50
    warmup: float = 0.05
    lr: str = "lr"

    def check(self, rule: UpdateRule) -> None:
        """The rule must have a learning rate called ``lr``."""
        if self.lr not in rule.hyper_names:
            raise ValueError(f"a cosine schedule needs a hyperparameter {self.lr!r}; optimizer {rule.name!r} has "
                             f"{', '.join(rule.hyper_names)}")

    def factor(self, u: float) -> float:
        """The multiple of the peak learning rate at fraction ``u`` of training."""
        if u < self.warmup:
            return u / self.warmup
        return 0.5 * (1.0 + math.cos(math.pi * (u - self.warmup) / (1.0 - self.warmup)))

    def __call__(self, schedule: Schedule) -> Schedule:
        """The cosine schedule whose peak is ``schedule``'s first learning rate; other types as drawn."""
        peak = float(schedule.values[self.lr][0])
        lr = [peak * self.factor((j + 0.5) / self.segments) for j in range(self.segments)]
        return Schedule({**schedule.values, self.lr: torch.tensor(lr, dtype=torch.float64)})
