"""Drive a plain ``torch.optim`` optimizer with a learned schedule, in your own training loop.

Example:
    >>> import torch
    >>> from hpo.core.schedule import Schedule
    >>> from hpo.optimizers import SGDMomentum
    >>> model = torch.nn.Linear(2, 1)
    >>> sched = Schedule.constant({"lr": 0.1, "momentum": 0.9, "wd": 5e-4}, {"lr": 2})
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.0)
    >>> driver = ScheduleDriver(opt, SGDMomentum(), sched, horizon=100)
    >>> for t in range(100):
    ...     _ = driver.apply()      # sets lr, momentum and weight decay for step t
    ...     opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()
    ...     driver.advance()
    >>> driver.t, opt.param_groups[0]["lr"]
    (100, 0.1)

A grouped schedule (a ``(groups, segments)`` table per grouped type, see :mod:`hpo.core.grouping`)
plays through one param group per *cell* of the grouping: build the optimizer from
:meth:`ParamGrouping.param_groups <hpo.optimizers.grouped.ParamGrouping.param_groups>`, which
tags every param group with its group index per grouped type (``"hpo_groups"``):

    >>> from hpo.core.grouping import resolve_grouping
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    >>> grouping = resolve_grouping({"lr": "layer"}, dict(model.named_parameters()))
    >>> sched = Schedule({"lr": torch.tensor([[0.1, 0.01], [0.2, 0.02]]), "momentum": torch.tensor([0.9]),
    ...                   "wd": torch.tensor([0.0])})
    >>> opt = torch.optim.SGD(grouping.param_groups(model.named_parameters()), lr=0.0)
    >>> driver = ScheduleDriver(opt, SGDMomentum(), sched, horizon=100)
    >>> _ = driver.apply()
    >>> [round(g["lr"], 6) for g in opt.param_groups]
    [0.1, 0.2]
"""

from __future__ import annotations

from typing import final

import torch

from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule


@final
class ScheduleDriver:
    """Sets each param group's hyperparameters to the schedule's values at the current step.

    ``apply()`` writes the values of step ``t`` (``floor(n t / T)``-th shared value of each type)
    into every param group, through ``rule.torch_group``; ``advance()`` moves to step ``t + 1``.
    For a grouped type, param group ``i`` gets the value of its group ``param_groups[i]["hpo_groups"][name]``
    (a param group without that entry is a ``ValueError``).
    ``step()`` does both after an optimizer step, like an LR scheduler.  Steps past the horizon
    keep the last values.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rule: UpdateRule, schedule: Schedule, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        self.optimizer = optimizer
        self.rule = rule
        self.schedule = schedule
        self.horizon = horizon
        self.t = 0

    def current(self) -> dict[str, float | list[float]]:
        """The hyperparameter values of the current step (one per group for a grouped type)."""
        return self.schedule.at(min(self.t, self.horizon - 1), self.horizon)

    def apply(self) -> dict[str, float | list[float]]:
        """Write the current step's values into every param group and return them."""
        hyper = self.current()
        if not any(isinstance(v, list) for v in hyper.values()):
            group_values = self.rule.torch_group(hyper)  # type: ignore[arg-type]
            for group in self.optimizer.param_groups:
                group.update(group_values)
            return hyper
        for i, group in enumerate(self.optimizer.param_groups):
            group.update(self.rule.torch_group(pick_for_group(hyper, group.get("hpo_groups") or {}, i)))
        return hyper

    def advance(self) -> None:
        """Move to the next step."""
        self.t += 1

    def step(self) -> None:
        """Advance, then apply the new step's values (call after ``optimizer.step()``)."""
        self.advance()
        self.apply()

    def state_dict(self) -> dict[str, int]:
        """The current step, for checkpoints."""
        return {"t": self.t}

    def load_state_dict(self, d: dict[str, int]) -> None:
        """Restore the current step."""
        self.t = int(d["t"])


def pick_for_group(hyper: dict[str, float | list[float]], index: dict[str, int], i: int) -> dict[str, float]:
    """The scalar values of param group ``i`` whose group index per grouped type is ``index``."""
    out = {}
    for name, v in hyper.items():
        if isinstance(v, list):
            if name not in index:
                raise ValueError(f"param group {i} has no group index for {name} (build the param groups with "
                                 f"ParamGrouping.param_groups, see hpo.core.grouping)")
            out[name] = v[int(index[name])]
        else:
            out[name] = v
    return out
