"""FDS with a hypergradient backend: sign-based outer steps until the budget, the incumbent after each.

Two optional changes to the outer loop (``SearchSettings``):

* ``short_steps = m`` (the authors' multi-fidelity budgets): the first ``m`` outer steps train
  for one epoch of the search data, at least one step per segment of the finest schedule
  (:math:`c` segments) and at most the horizon,
  :math:`T_s = \\min(\\max(\\lceil n_{train} / b \\rceil, c), T)`; the others train for the
  horizon :math:`T`.  The segments scale with the horizon, so a schedule learned over one epoch
  is the same piecewise-constant shape over ``T`` steps.  The steps budget buys :math:`m` short
  steps and :math:`\\lfloor (B - m T_s - r) / T \\rfloor` full ones, with :math:`r = T` kept for
  the scoring run of ``keep_best`` (else 0).
* ``keep_best``: FDS learns :math:`\\lambda_{k+1}` from the run at :math:`\\lambda_k`, so its last
  schedule is never trained with and may overshoot.  After the last step, one plain run scores it
  (:func:`hpo.validate_schedule.validation_accuracy`) and the search returns
  :math:`\\arg\\max_k \\operatorname{acc}_k(\\lambda_k)` over the schedules scored by a full,
  finished run (a short or diverged run's score does not count).  When the time budget stopped
  the search, the scoring run comes after it: one plain run, about a third of an outer step
  with reverse mode.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import final

from hpo.backend import HypergradientBackend
from hpo.callbacks import Callbacks, OuterRecord
from hpo.fds import FDSConfig, initial_state, run_fds
from hpo.optimizers.base import UpdateRule
from hpo.schedule import Schedule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.tasks.base import Task
from hpo.validate_schedule import validation_accuracy


@final
class _Recorder(Callbacks):
    """Stamps the schedule after every outer step and keeps the records."""

    def __init__(self, seconds: float | None = None) -> None:
        self.watch = Stopwatch()
        self.seconds = seconds
        self.steps = 0
        self.points: list[Incumbent] = []
        self.records: list[OuterRecord] = []

    def on_outer_step(self, record: OuterRecord) -> None:
        """Record the values after the step; past the time budget, stop the search."""
        self.steps += record.steps_run
        self.records.append(record)
        self.points.append(self.watch.stamp(self.steps, Schedule.from_dict(record.values), record.val_acc))
        if self.watch.out_of_time(self.seconds):
            raise TimeUp


@final
class TimeUp(Exception):
    """Raised by the recorder to end an FDS search at its time budget (caught by :class:`FDSSearch`)."""


def epoch_steps(task: Task, settings: SearchSettings) -> int:
    """Inner steps of one epoch over an outer step's train part: :math:`\\lceil (1 - f) n / b \\rceil`."""
    n_train = task.train_x.shape[0] - math.ceil(settings.val_frac * task.train_x.shape[0])
    return max(1, math.ceil(n_train / (settings.batch_size or task.batch_size)))


def fds_config(task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> FDSConfig:
    """The outer-loop settings: ``m = short_steps`` epochs first, then full steps until the budget.

    Short horizon :math:`T_s = \\min(\\max(\\lceil n_{train} / b \\rceil, c), T)` (``c`` the
    largest count); outer steps :math:`m + \\lfloor (B - m T_s - r) / T \\rfloor`, with ``r = T``
    under ``keep_best`` (the scoring run), else 0.  :meth:`FDSSearch.check` makes sure the budget
    holds at least one full step.
    """
    config = settings.fds(seed)
    m, reserve = settings.short_steps, settings.horizon if settings.keep_best else 0
    if m == 0 and reserve == 0:
        return config
    finest = max(config.resolved_counts(rule).values())
    short = min(max(epoch_steps(task, settings), finest), settings.horizon)
    full = (settings.budget - m * short - reserve) // settings.horizon
    return replace(config, outer_steps=m + full, inner_steps=(short,) * m + (settings.horizon,))


@final
class FDSSearch(SearchMethod):
    """The FDS outer loop driven by ``backend`` (a method named after the backend)."""

    name = "fds"

    def __init__(self, backend: HypergradientBackend) -> None:
        self.backend = backend

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """The backend must support the rule; the budget must hold the short steps, one full step and the scoring run."""
        self.backend.check_rule(rule)
        runs = settings.short_steps + 1 + int(settings.keep_best)
        if settings.budget < runs * settings.horizon:
            parts = [f"{settings.short_steps} short outer steps"] if settings.short_steps else []
            parts += ["one full outer step"] + (["the keep-best scoring run"] if settings.keep_best else [])
            text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            raise ValueError(f"a budget of {settings.budget} steps cannot hold {text} "
                             f"(at most {runs} x {settings.horizon} steps); raise it")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run the outer steps; with ``keep_best``, one more incumbent: the best full-horizon schedule."""
        rec = _Recorder(settings.seconds)
        config = fds_config(task, rule, settings, seed)
        try:
            run_fds(task, rule, self.backend, config, rec)
        except TimeUp:
            pass
        if not settings.keep_best or not rec.records:
            return rec.points
        return [*rec.points, best_seen(task, rule, config, rec)]


def best_seen(task: Task, rule: UpdateRule, config: FDSConfig, rec: _Recorder) -> Incumbent:
    """Score the last schedule with one plain run; the full-horizon schedule with the best accuracy.

    Record ``k`` holds the accuracy of the schedule it started from (the values after record
    ``k - 1``; for record 0, the initial values) and the values it moved to; the schedules of short
    or diverged runs are not candidates.  A warm start (``--init`` at the hand-picked setting) is
    thus never lost: if no step beats it on the validation split, it is returned.
    """
    last = rec.records[-1]
    horizon = config.horizon(last.k + 1)
    values = Schedule.from_dict(last.values)
    acc = validation_accuracy(task, rule, config, values.values, last.k + 1)
    start = Schedule(dict(initial_state(rule, config).values))
    candidates = [(acc, last.k + 1, values)]
    for prev, cur in zip([None, *rec.records], rec.records):
        if cur.horizon == horizon and not cur.diverged:
            candidates.append((cur.val_acc, cur.k, start if prev is None else Schedule.from_dict(prev.values)))
    best_acc, _, best = max(candidates, key=lambda c: (c[0], c[1]))
    return rec.watch.stamp(rec.steps + horizon, best, best_acc)
