"""Online hypergradient descent: ``budget // T`` runs, each starting from where the last one ended."""

from __future__ import annotations

from typing import final

from hpo.fds import initial_state, make_problem
from hpo.online_greedy import online_greedy
from hpo.optimizers.base import UpdateRule
from hpo.schedule import Schedule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.tasks.base import Task


@final
class OnlineGreedySearch(SearchMethod):
    """``online-greedy``: the incumbent is the last run's per-segment means (the last good one after a blow-up)."""

    name = "online-greedy"

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Hyper-learning rates must name the rule's hyperparameters."""
        for k in settings.hyper_lr:
            if k not in rule.hyper_names:
                raise ValueError(f"optimizer {rule.name!r} has no hyperparameter {k!r}")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Each run continues from the values the previous run ended with."""
        watch = Stopwatch()
        config = settings.fds(seed)
        counts = config.resolved_counts(rule)
        sched = Schedule(dict(initial_state(rule, config).values))
        points: list[Incumbent] = []
        steps = 0
        for k in range(settings.units):
            out = online_greedy(make_problem(task, rule, config, k), sched, settings.hyper_lr, counts)
            steps += out.steps
            if not out.diverged:
                sched = Schedule.constant({n: float(v[-1]) for n, v in out.trajectory.items()})
            best = points[-1].schedule if out.diverged and points else out.schedule
            points.append(watch.stamp(steps, best, out.val_acc))
            if watch.out_of_time(settings.seconds):
                break
        return points
