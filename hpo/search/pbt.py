"""``pbt``: Ray Tune's Population Based Training over the rule's hyperparameters; its best member's schedule replayed.

The budget of ``B`` inner steps buys a population of ``B // T`` members (or ``population``, at
most that), each training once over the horizon ``T``, so the population spends at most ``B``
steps; ``settings.seconds`` stops it early.  The members' values are perturbed every ``T /
intervals`` steps (:mod:`hpo.pbt`).  After each interval the incumbent is the best member's
hyperparameter trajectory so far (its last values held to the end) as a piecewise-constant
schedule with ``intervals`` values per type, which ``hpo compare`` retrains from scratch with the
ordinary retrain, like any learned schedule.  Needs the ``baselines`` extra
(``pip install -e '.[baselines]'``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import final

from hpo.extras import require
from hpo.optimizers.base import UpdateRule
from hpo.pbt import Report, interval_bounds, replay_schedule, run_pbt
from hpo.search.base import Incumbent, SearchMethod, SearchSettings
from hpo.tasks.base import Task


@final
class PBTSearch(SearchMethod):
    """Synchronous PBT with ``population`` members (default: as many as the budget buys) and ``intervals`` perturbation intervals."""

    name = "pbt"

    def __init__(self, population: int | None = None, intervals: int = 10) -> None:
        if population is not None and population < 2:
            raise ValueError(f"a PBT population needs at least 2 members, got {population}")
        if intervals < 1:
            raise ValueError(f"PBT needs at least one perturbation interval, got {intervals}")
        self.population = population
        self.intervals = intervals

    def size(self, settings: SearchSettings) -> int:
        """Members of the population: ``population`` (:meth:`check`: at most ``budget // T``), else ``budget // T``."""
        return min(self.population or settings.units, settings.units)

    def segments(self, settings: SearchSettings) -> int:
        """Perturbation intervals over the horizon: ``intervals``, at most one per step."""
        return min(self.intervals, settings.horizon)

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Ray Tune installed, a budget of two members, a ``torch.optim`` counterpart and a range per type."""
        require("ray", "Ray Tune")
        if self.population is not None and self.population > settings.units:
            raise ValueError(f"a population of {self.population} needs a budget of {self.population * settings.horizon} "
                             f"steps (one inner run each), got {settings.budget}")
        if settings.units < 2:
            raise ValueError(f"a population of 2 needs a budget of at least 2 inner runs ({2 * settings.horizon} "
                             f"steps), got {settings.budget}")
        if type(rule).torch_optimizer is UpdateRule.torch_optimizer:
            raise ValueError(f"optimizer {rule.name!r} has no torch.optim counterpart for the members to train with")
        missing = [n for n in rule.hyper_names if n not in settings.space]
        if missing:
            raise ValueError(f"give a search range for {', '.join(missing)} (optimizer {rule.name!r} has no default)")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run the population; the incumbent after each perturbation interval, stamped when its last member reported.

        Its CPU seconds are this process's (starting Ray, the scheduler) and the members' (training).
        """
        self.check(rule, settings)
        wall0, cpu0 = time.time(), time.process_time()
        population, n = self.size(settings), self.segments(settings)
        reports = run_pbt(task, rule, settings.fds(seed), settings.space, population, n, settings.seconds)
        driver_cpu = time.process_time() - cpu0
        return [replace(p, seconds=p.seconds - wall0, cpu_seconds=p.cpu_seconds + driver_cpu)
                for p in incumbents(reports, rule.hyper_names, population, settings.horizon, n)]


def incumbents(reports: list[Report], names: tuple[str, ...], population: int, horizon: int,
               intervals: int) -> list[Incumbent]:
    """After each interval ``j`` reached: the best report's trajectory as a schedule, and the steps spent.

    Steps after interval ``j``: each member that reported ``j`` trained ``s_j`` steps, the others
    ``s_{j-1}`` (the members take turns between the synchronised perturbations).  ``seconds`` is
    the time of the last report of interval ``j`` (``time.time()``) and ``cpu_seconds`` the
    members' CPU seconds up to it.
    """
    bounds = interval_bounds(horizon, intervals)
    points = []
    for j in range(1, intervals + 1):
        at = [r for r in reports if r.interval == j]
        if not at:
            break
        best = max(at, key=Report.score)
        steps = len(at) * bounds[j] + (population - len(at)) * bounds[j - 1]
        cpu = sum(r.cpu for r in reports if r.interval <= j)
        points.append(Incumbent(steps, max(r.wall for r in at), replay_schedule(best.values(), names, intervals),
                                best.val_acc, cpu))
    return points
