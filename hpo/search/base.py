"""The interface every search method of ``hpo compare`` implements.

A method spends a budget of inner training steps on a task and returns its incumbent schedule
after each unit of work (one FDS outer step, one trial, one online run), with the steps and
seconds spent so far, so every method is scored at the same budget points::

    incumbents = method.search(task, rule, settings, seed)
    result = method.retrain(task, rule, incumbents[-1].schedule, steps, seed)

A method whose incumbent is a schedule of the rule's hyperparameters retrains with the rule
(:func:`hpo.search.retrain.retrain`, the default); a method that trains with another optimizer (schedule-free
SGD) overrides :meth:`SearchMethod.retrain`, so ``hpo compare`` retrains every incumbent the
way its search trained it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, final

import torch

from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule
from hpo.outer.base import OuterOptimizer
from hpo.outer.sign import SignDescent
from hpo.search.inner_runs import FDSConfig
from hpo.search.retrain import RetrainResult, retrain
from hpo.search.space import SearchSpace
from hpo.tasks.base import Task


@final
@dataclass(frozen=True)
class SearchSettings:
    """What every method of one comparison shares: horizon, budget, sharing, spaces, data settings.

    ``budget`` is in inner steps; ``seconds`` (None: no limit) also stops a method once its search
    has run that long: it starts no further unit of work (outer step, trial, online run) after it.
    ``short_steps``, ``keep_best``, ``outer`` (the outer optimizer, :mod:`hpo.outer`), ``divergence``
    (:func:`hpo.search.fds.after_divergence`), ``outer_space`` (:mod:`hpo.outer.coordinates`), ``steps`` (initial
    outer step sizes) and ``init`` (starting values) change the FDS outer loop only (:class:`~hpo.search.fds.FDSSearch`).
    """

    horizon: int
    budget: int
    space: SearchSpace
    counts: Mapping[str, int] = field(default_factory=dict)
    hyper_lr: Mapping[str, float] = field(default_factory=dict)
    val_frac: float = 0.05
    batch_size: int | None = None
    grad_clip: float | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    seconds: float | None = None
    short_steps: int = 0
    keep_best: bool = False
    outer: OuterOptimizer = field(default_factory=SignDescent)
    divergence: str = "lower"
    outer_space: str = "linear"
    steps: Mapping[str, float] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)

    @property
    def units(self) -> int:
        """Units of work the budget buys: ``budget // horizon`` inner runs."""
        return self.budget // self.horizon

    def fds(self, seed: int) -> FDSConfig:
        """The outer-loop settings of a method run with ``seed``."""
        return FDSConfig(outer_steps=max(1, self.units), inner_steps=(self.horizon,), counts=dict(self.counts),
                         val_frac=self.val_frac, batch_size=self.batch_size, seed=seed, grad_clip=self.grad_clip,
                         dtype=self.dtype, device=self.device, outer=self.outer,
                         divergence=self.divergence,
                         outer_space=self.outer_space, steps=dict(self.steps), init=dict(self.init))


@final
@dataclass(frozen=True)
class Incumbent:
    """The best schedule after some search work: its steps, seconds and validation accuracy so far."""

    steps: int
    seconds: float
    schedule: Schedule
    search_val_acc: float
    cpu_seconds: float = 0.0


@final
@dataclass(frozen=True)
class Stopwatch:
    """Wall-clock and CPU time since the search started."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def out_of_time(self, seconds: float | None) -> bool:
        """Whether ``seconds`` of wall-clock time have passed (never, when None)."""
        return seconds is not None and time.perf_counter() - self.wall0 >= seconds

    def stamp(self, steps: int, schedule: Schedule, val_acc: float) -> Incumbent:
        """An incumbent stamped with the time spent so far."""
        return Incumbent(steps, time.perf_counter() - self.wall0, schedule, val_acc, time.process_time() - self.cpu0)

    def spread(self, points: list[Incumbent]) -> list[Incumbent]:
        """``points`` with the total time so far spread evenly over them (for methods timed as a whole)."""
        wall, cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
        n = len(points)
        return [replace(p, seconds=wall * (i + 1) / n, cpu_seconds=cpu * (i + 1) / n) for i, p in enumerate(points)]


class SearchMethod(ABC):
    """A way to spend a budget of inner steps on finding a schedule."""

    name: ClassVar[str]

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Raise ``ValueError`` (one line) if this method cannot run ``rule`` with ``settings``."""

    def check_task(self, task: Task) -> None:
        """Raise ``ValueError`` (one line) if this method cannot search on ``task`` (e.g. its model); called
        once the task is loaded, before the comparison starts."""

    @abstractmethod
    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Spend ``settings.budget`` inner steps; the incumbent after each unit of work."""

    def retrain(self, task: Task, rule: UpdateRule, schedule: Schedule, steps: int, seed: int,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                grad_clip: float | None = None) -> RetrainResult:
        """Train a fresh model on ``task`` for ``steps`` steps with an incumbent ``schedule`` and test it.

        By default the schedule drives ``rule`` (:func:`hpo.search.retrain.retrain`, through its
        ``torch.optim`` counterpart); a method whose incumbent sets another optimizer overrides this.
        """
        return retrain(task, rule, schedule, steps, seed, dtype, device, grad_clip=grad_clip)
