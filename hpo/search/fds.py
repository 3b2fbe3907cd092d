"""FDS: the outer loop over whole-horizon hypergradients, and its search method for ``hpo compare``.

Each outer step ``k`` re-initialises the network, splits a fresh validation set off the training
set, runs ``inner_steps[k]`` inner steps with the backend (:mod:`hpo.search.inner_runs`), and
applies the outer optimizer (:mod:`hpo.outer`) to the hypergradient, or the divergence policy
after a diverged run (:func:`run_fds`).

FDS learns :math:`\\lambda_{k+1}` from the run at :math:`\\lambda_k`, so the last schedule it
returns has never been trained with.  :func:`validation_accuracy` scores a schedule the way the
outer steps score theirs: train a fresh network for the horizon on the train part of split ``k``
and measure accuracy on its validation part,

.. math::

    \\operatorname{acc}_k(\\lambda) = \\operatorname{acc}\\big(w_T(\\lambda); D^{val}_k\\big),
    \\qquad w_{t+1} = \\Phi(w_t, \\lambda_{s(t)}, B_t).

:class:`FDSSearch` spends a budget on outer steps with a hypergradient backend; its incumbent is the
schedule after each.

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
  (:func:`hpo.search.fds.validation_accuracy`) and the search returns
  :math:`\\arg\\max_k \\operatorname{acc}_k(\\lambda_k)` over the schedules scored by a full,
  finished run (a short or diverged run's score does not count).  When the time budget stopped
  the search, the scoring run comes after it: one plain run, about a third of an outer step
  with reverse mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import final

import torch
from torch import Tensor

from hpo.core.backend import HypergradientBackend, run_inner
from hpo.core.callbacks import CallbackList, Callbacks, OuterRecord
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, plain_train_step
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import group_counts, group_names
from hpo.outer.base import OuterState, converged
from hpo.outer.coordinates import kinds_of
from hpo.outer.divergence import after_divergence
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.inner_runs import FDSConfig, make_problem, rule_with_groups, seeded_rng
from hpo.tasks.base import Task


@final
@dataclass(frozen=True)
class FDSResult:
    """The learned schedule and the record of every outer step."""

    schedule: Schedule
    state: OuterState
    history: tuple[OuterRecord, ...]


def initial_state(rule: UpdateRule, config: FDSConfig) -> OuterState:
    """Outer state before the first step: the rule's (or overridden) counts, initial values and steps.

    A grouped type (``rule`` a :class:`~hpo.optimizers.grouped.GroupedRule`) starts as a
    ``(groups, segments)`` table of its initial value.
    """
    sched = Schedule.initial(rule, config.resolved_counts(rule), config.resolved_init(rule), group_counts(rule))
    return start_at(sched.values, rule, config)


def start_at(values: Mapping[str, torch.Tensor], rule: UpdateRule, config: FDSConfig) -> OuterState:
    """Outer state before the first step from the starting ``values``: each type's coordinate
    (:func:`hpo.outer.coordinates.kinds_of`, from ``config.outer_space`` and the values) and initial step."""
    kinds = kinds_of({s.name: s for s in rule.hyperparameters}, config.outer_space, values)
    return config.outer.start(values, config.resolved_steps(rule, kinds), kinds)


def outer_step(
    task: Task,
    rule: UpdateRule,
    backend: HypergradientBackend,
    config: FDSConfig,
    state: OuterState,
    callbacks: Callbacks,
) -> tuple[OuterState, OuterRecord]:
    """Run one outer step from ``state``; returns the new state and its record (not yet reported)."""
    k = state.k
    problem = make_problem(task, rule, config, k)
    schedule = Schedule({n: v.clone() for n, v in state.values.items()})
    callbacks.on_outer_start(k, problem.horizon)
    start = time.perf_counter()
    rank = config.comm.rank if config.comm is not None else 0  # each rank's shard gets its own dropout masks
    with seeded_rng(config.seed * 1000 + k + 500_009 + 7919 * rank, config.device):  # the same draws on resume
        result = run_inner(backend, problem, schedule,
                           on_step=lambda t, inner: callbacks.on_inner_step(k, t, inner.loss))
    hg = result.hypergrad
    specs = {s.name: s for s in rule.hyperparameters}
    extra: dict[str, object] = {}
    diverged = result.diverged or not all(bool(torch.isfinite(h).all()) for h in hg.values())
    if diverged:
        new, extra = after_divergence(state, result, problem.horizon, specs, config.outer, config.divergence)
    else:
        new = replace(config.outer.update(state, hg, specs), good=dict(state.values))
    if result.info and "auto" in result.info:
        extra = {**extra, "backend": result.info["auto"]}
    record = OuterRecord(
        k=k,
        horizon=problem.horizon,
        steps_run=result.steps,
        val_loss=result.val_loss,
        val_acc=result.val_acc,
        hypergrad={n: plain_list(h) for n, h in result.hypergrad.items()},
        values={n: plain_list(v) for n, v in new.values.items()},
        step_sizes={n: plain_list(v) for n, v in new.steps.items()},
        diverged=diverged,
        seconds=time.perf_counter() - start,
        converged=converged(new, config.converged_frac),
        extra=extra,
        groups={n: list(g) for n, g in group_names(rule).items()},
        metric=task.label.name,
        higher=task.label.higher,
    )
    return new, record


def plain_list(x: torch.Tensor) -> list:
    """A ``(segments,)`` tensor as a list of floats, a ``(groups, segments)`` one as a list of lists."""
    return x.detach().cpu().to(torch.float64).tolist()


def run_fds(
    task: Task,
    rule: UpdateRule,
    backend: HypergradientBackend,
    config: FDSConfig,
    callbacks: Callbacks | None = None,
    state: OuterState | None = None,
    history: tuple[OuterRecord, ...] = (),
    after_step: Callable[[OuterState, tuple[OuterRecord, ...]], None] | None = None,
) -> FDSResult:
    """Run outer steps until ``config.outer_steps`` are done or every value has converged.

    With ``config.groups`` set, ``rule`` is wrapped for the groups of ``task``'s parameters
    (:func:`rule_with_groups`) and every grouped type is a ``(groups, segments)`` table.

    Pass ``state`` and ``history`` to continue an earlier run (e.g. from a checkpoint); a run whose
    last record has converged does not continue.  ``after_step(state, history)`` is called after
    every outer step (e.g. to write a checkpoint).  Outer step ``k`` depends only on ``state``,
    ``config.seed`` and ``k`` (network init, validation split, batch order and any other random
    draws are seeded from them), so a resumed run repeats an uninterrupted one exactly.
    """
    config.validate(rule)
    rule = rule_with_groups(task, rule, config)
    callbacks = callbacks or CallbackList()
    state = state or initial_state(rule, config)
    records = list(history)
    while state.k < config.outer_steps and not (records and records[-1].converged):
        state, record = outer_step(task, rule, backend, config, state, callbacks)
        records.append(record)
        if after_step is not None:  # checkpoint first: a logging failure then loses no finished step
            after_step(state, tuple(records))
        callbacks.on_outer_step(record)
    return FDSResult(Schedule(dict(state.values), group_names(rule)), state, tuple(records))


def validation_accuracy(task: Task, rule: UpdateRule, config: FDSConfig, values: Mapping[str, Tensor],
                        k: int) -> float:
    """Accuracy on split ``k``'s validation part after a plain run of ``values`` (0 when it diverges)."""
    problem = make_problem(task, rule, config, k)
    ref = next(iter(problem.params.values()))
    vals = {n: v.to(device=ref.device, dtype=ref.dtype) for n, v in values.items()}
    params, buffers, state = problem.params, problem.buffers, rule.init(problem.params)
    with torch.no_grad(), seeded_rng(config.seed * 1000 + k + 500_009, config.device):
        for t, batch in problem.batches():
            problem.seed_step(t)  # the dropout masks the search's run of split k drew
            out = plain_train_step(rule, problem.loss_fn, params, buffers, state,
                                   hyper_at_step(vals, t, problem.horizon), t, batch, problem.grad_clip,
                                   seed=problem.seed)
            params, state, buffers = out.params, out.opt_state, out.buffers
        loss, acc = problem.evaluate(params, buffers)
    return float(acc) if math.isfinite(float(loss)) else 0.0


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
    n = len(task.train_rows)
    n_train = n - math.ceil(settings.val_frac * n)
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
