"""Black-box baselines: random search and optuna's TPE over constants or shared-segment schedules."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import final

from hpo.baselines import Trial, best_so_far, random_search, tpe_search

#: A trial loop: ``(task, rule, config, space, trials, counts, stop=..., shape=...) -> trials``.
Sampler = Callable[..., list[Trial]]
from hpo.optimizers.base import UpdateRule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.cosine import CosineWarmup
from hpo.tasks.base import Task


class TrialSearch(SearchMethod):
    """``budget // T`` trials; the incumbent is the best validation accuracy so far.

    ``schedules`` False draws constants; True draws a value per shared segment.  ``shape``, if
    given, turns each draw into the schedule evaluated (e.g. :class:`~hpo.search.cosine.CosineWarmup`).
    """

    def __init__(self, schedules: bool = False, shape: CosineWarmup | None = None) -> None:
        self.schedules = schedules
        self.shape = shape

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Every hyperparameter of the rule needs a range (and the shape its hyperparameters)."""
        if self.shape is not None:
            self.shape.check(rule)
        missing = [n for n in rule.hyper_names if n not in settings.space]
        if missing:
            raise ValueError(f"give a search range for {', '.join(missing)} (optimizer {rule.name!r} has no default)")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run the trials, then stamp the best-so-far after each (time spread evenly over trials)."""
        watch = Stopwatch()
        config = settings.fds(seed)
        counts = config.resolved_counts(rule) if self.schedules else None
        trials = self.sampler()(task, rule, config, settings.space, settings.units, counts,
                                stop=lambda: watch.out_of_time(settings.seconds), shape=self.shape)
        points, steps = [], 0
        for trial, best in zip(trials, best_so_far(trials)):
            steps += trial.steps
            points.append(Incumbent(steps, 0.0, best.schedule, best.val_acc))
        return watch.spread(points)

    @abstractmethod
    def sampler(self) -> Sampler:
        """The trial loop: :func:`~hpo.baselines.random_search` or :func:`~hpo.baselines.tpe_search`."""


@final
class RandomSearch(TrialSearch):
    """``random-constant`` / ``random-schedule`` / ``cosine-random``: independent uniform (or log-uniform) draws."""

    name = "random"

    def sampler(self) -> Sampler:
        """Random candidates."""
        return random_search


@final
class TPESearch(TrialSearch):
    """``tpe`` / ``tpe-schedule`` / ``cosine-tpe``: optuna's TPE sampler, seeded."""

    name = "tpe"

    def sampler(self) -> Sampler:
        """TPE candidates."""
        return tpe_search
