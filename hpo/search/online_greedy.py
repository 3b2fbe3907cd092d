"""Online hypergradient descent: adapt the hyperparameters during a single training run.

At every inner step the greedy one-step hypergradient :math:`h_t` (see :mod:`hpo.backends.greedy`)
moves the values used from the next step on (Baydin et al. 2018, additive form):

.. math::  \\lambda_{t+1} = \\operatorname{clamp}(\\lambda_t - \\beta\\, h_t)

with one hyper-learning rate :math:`\\beta` per type (the rule's ``HyperSpec.online_rate`` unless given).  The trajectory is summarised as a shared
schedule (the mean value over each segment), so it can be retrained from scratch or compared
with other methods like any schedule.

Online hypergradient descent: ``budget // T`` runs, each starting from where the last one ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from hpo.backends.greedy import one_step_hypergrad, validation_batches
from hpo.core.backend import InnerState, is_finite
from hpo.core.data import EVAL_SEED
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule, segment_indices
from hpo.core.step import plain_train_step
from hpo.optimizers.base import UpdateRule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.fds import initial_state
from hpo.search.inner_runs import make_problem
from hpo.tasks.base import Task


@final
@dataclass(frozen=True)
class OnlineResult:
    """The values used at every step, their per-segment means, and the final validation metrics."""

    trajectory: dict[str, Tensor]
    schedule: Schedule
    val_loss: float
    val_acc: float
    steps: int
    diverged: bool


def summarise(trajectory: Mapping[str, Tensor], counts: Mapping[str, int]) -> Schedule:
    """The mean of each type's per-step values over each of its ``counts[name]`` segments."""
    out = {}
    for name, traj in trajectory.items():
        n = int(counts.get(name, 1))
        seg = segment_indices(traj.numel(), n)
        sums = torch.zeros(n, dtype=torch.float64).index_add(0, seg, traj.double().cpu())
        out[name] = sums / torch.bincount(seg, minlength=n).double()
    return Schedule(out)


def online_greedy(
    problem: InnerProblem,
    start: Schedule,
    hyper_lr: Mapping[str, float] | None = None,
    counts: Mapping[str, int] | None = None,
    on_step: Callable[[int, InnerState], None] | None = None,
) -> OnlineResult:
    """Train once for ``problem.horizon`` steps, adapting every hyperparameter online.

    ``start`` gives the values at step 0 (a shared schedule is followed until the first update
    overrides it, i.e. only its first value per type is used); ``hyper_lr[name]`` is β of that
    type (0 freezes it); ``counts`` the segments of the returned summary schedule (default: the
    rule's defaults).
    """
    rule = problem.rule
    specs = {s.name: s for s in rule.hyperparameters}
    betas = {s.name: s.online_rate for s in rule.hyperparameters} | dict(hyper_lr or {})
    counts = dict(counts or {s.name: s.count for s in rule.hyperparameters})
    for k in hyper_lr or {}:
        if k not in specs:
            raise ValueError(f"optimizer {rule.name!r} has no hyperparameter {k!r}")
    ref = next(iter(problem.params.values()))
    hyper = {k: v[0] for k, v in start.values_like(ref).items()}
    val_batches = validation_batches(problem)
    inner = InnerState(problem.params, problem.buffers, rule.init(problem.params), 0, ref.new_zeros(()))
    used: dict[str, list[Tensor]] = {k: [] for k in hyper}
    diverged = False
    for t, batch in problem.batches():
        for k, v in hyper.items():
            used[k].append(v)
        params, opt, buffers, loss, g = plain_train_step(rule, problem.loss_fn, inner.params, inner.buffers,
                                                         inner.opt_state, hyper, t, batch, problem.grad_clip,
                                                         seed=problem.seed)
        idx = val_batches[t]
        h = one_step_hypergrad(problem, inner, g, hyper, t, problem.val.fetch(idx, EVAL_SEED, t), buffers, batch)
        hyper = {k: specs[k].clamp(v - betas.get(k, 0.0) * torch.nan_to_num(h[k])) for k, v in hyper.items()}
        inner = InnerState(params, buffers, opt, t + 1, loss)
        if on_step is not None:
            on_step(t, inner)
        if not is_finite(loss):
            diverged = True
            break
    trajectory = {k: torch.stack(v).detach().double().cpu() for k, v in used.items()}
    vloss, vacc = problem.evaluate(inner.params, inner.buffers)
    return OnlineResult(trajectory, summarise(trajectory, counts), float(vloss), float(vacc), inner.t, diverged)


@final
class OnlineGreedySearch(SearchMethod):
    """``online-greedy``: the incumbent is the last run's per-segment means (the last good one after a blow-up)."""

    name = "online-greedy"

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Hyper-learning rates must name the rule's hyperparameters; curvature rules are refused."""
        if rule.curvature is not None:
            raise ValueError(f"optimizer {rule.name!r} uses a curvature estimate, which online-greedy's one-step "
                             "hypergradient does not include; use an FDS method")
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
