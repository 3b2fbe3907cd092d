"""``schedule-free``: schedule-free SGD, its learning rate, warm-up, momentum and weight decay tuned by random search.

Each of the ``budget // T`` trials trains a fresh network for the horizon ``T`` with
``schedulefree.SGDScheduleFree`` on the train part of a fresh validation split and is scored by
validation accuracy, like the other trial searches; it stops early at ``settings.seconds``.  The
incumbent is a constant schedule of ``lr``, ``momentum``, ``wd`` and ``warmup`` (see
:mod:`hpo.schedule_free`), and :meth:`ScheduleFreeSearch.retrain` trains it from scratch with
schedule-free SGD again, so ``hpo compare`` reports its test accuracy like every other method's.
Needs the ``baselines`` extra (``pip install -e '.[baselines]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

import torch

from hpo.baselines import Range, best_so_far
from hpo.extras import require
from hpo.optimizers.base import UpdateRule
from hpo.retrain import RetrainResult
from hpo.schedule import Schedule
from hpo.schedule_free import DEFAULT_SPACE, NAMES, random_search, retrain_schedule_free
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.tasks.base import Task


@final
class ScheduleFreeSearch(SearchMethod):
    """Random search over schedule-free SGD settings (``space``: :data:`hpo.schedule_free.DEFAULT_SPACE`)."""

    name = "schedule-free"

    def __init__(self, space: Mapping[str, Range] | None = None) -> None:
        self.space = dict(space if space is not None else DEFAULT_SPACE)
        if set(self.space) != set(NAMES):
            raise ValueError(f"a schedule-free space has the ranges {', '.join(NAMES)}, got {', '.join(self.space)}")

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """The ``schedulefree`` package must be installed."""
        require("schedulefree", "schedulefree")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """``budget // T`` trials (fewer if ``settings.seconds`` runs out); the best so far after each."""
        watch = Stopwatch()
        config = settings.fds(seed)
        points, steps = [], 0
        trials = random_search(task, rule, config, self.space, settings.units,
                               stop=lambda: watch.out_of_time(settings.seconds))
        for trial, best in zip(trials, best_so_far(trials)):
            steps += trial.steps
            points.append(Incumbent(steps, 0.0, best.schedule, best.val_acc))
        return watch.spread(points)

    def retrain(self, task: Task, rule: UpdateRule, schedule: Schedule, steps: int, seed: int,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                grad_clip: float | None = None) -> RetrainResult:
        """Schedule-free SGD with the incumbent setting (``rule`` is not used): :func:`~hpo.schedule_free.retrain_schedule_free`."""
        return retrain_schedule_free(task, schedule, steps, seed, dtype, device, grad_clip)
