"""Schedule-free SGD (Defazio et al., 2024; package ``schedulefree``): one training run, as a trial or a retrain.

``schedulefree.SGDScheduleFree`` takes gradients at :math:`y_t`, steps the base sequence
:math:`z_t` and averages it into the sequence :math:`x_t` that is evaluated:

.. math::

    y_t = (1 - \\beta) z_t + \\beta x_t, \\qquad
    z_{t+1} = z_t - \\gamma_t \\nabla f(y_t), \\qquad
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}

with :math:`\\gamma_t = \\gamma \\min(1, (t + 1) / w)` over :math:`w` warm-up steps and
:math:`c_{t+1} = \\gamma_t^2 / \\sum_{i \\le t} \\gamma_i^2`.  The optimizer is put in train mode
(``optimizer.train()``: the weights hold :math:`y`) before the training steps and in eval mode
(``optimizer.eval()``: the weights hold :math:`x`) before evaluation.  A model with BatchNorm
then recomputes its running statistics at :math:`x` on its last 50 training batches, as the
package's README prescribes.

A setting is a constant :class:`~hpo.core.schedule.Schedule` with the four types ``lr``,
``momentum`` (:math:`\\beta`), ``wd`` (L2 weight decay) and ``warmup`` (:math:`w` as a fraction of
the run), so it is tabulated, saved and stretched to another number of steps like any schedule.
The package is imported only here, only when a run starts.

``schedule-free``: schedule-free SGD, its learning rate, warm-up, momentum and weight decay tuned by random search.

Each of the ``budget // T`` trials trains a fresh network for the horizon ``T`` with
``schedulefree.SGDScheduleFree`` on the train part of a fresh validation split and is scored by
validation accuracy, like the other trial searches; it stops early at ``settings.seconds``.  The
incumbent is a constant schedule of ``lr``, ``momentum``, ``wd`` and ``warmup`` (see
:mod:`hpo.search.schedule_free`), and :meth:`ScheduleFreeSearch.retrain` trains it from scratch with
schedule-free SGD again, so ``hpo compare`` reports its test accuracy like every other method's.
Needs the ``baselines`` extra (``pip install -e '.[baselines]'``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, final

import torch
from torch import Tensor, nn

from hpo.core.data import Batch
from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule
from hpo.runtime.extras import require
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.search.retrain import RetrainResult, retrain_batches, tested
from hpo.search.space import Range, SearchSpace, sample_schedule
from hpo.search.trials import Stop, Trial, best_so_far
from hpo.tasks.base import ModelFn, Task, init_model, split_state, stateful_loss

#: The four types of a schedule-free setting.
NAMES = ("lr", "momentum", "wd", "warmup")


#: The default search space: the learning rate 10x SGD's default range (the README: "a learning rate
#: 10x-50x larger than classical rates"), the README's momentum 0.9 to 0.98 with some room, SGD's
#: weight decay, and up to 20% of the run as warm-up.
DEFAULT_SPACE: Mapping[str, Range] = {
    "lr": Range(1e-2, 10.0, log=True),
    "momentum": Range(0.8, 0.99),
    "wd": Range(1e-6, 1e-2, log=True),
    "warmup": Range(0.0, 0.2),
}


#: Training batches a BatchNorm model sees at the averaged weights before it is evaluated.
BATCHNORM_BATCHES = 50


def hyper_of(schedule: Schedule) -> dict[str, float]:
    """The constant setting a schedule-free schedule holds; ``ValueError`` if it lacks a type."""
    missing = [n for n in NAMES if n not in schedule.values]
    if missing:
        raise ValueError(f"a schedule-free setting needs {', '.join(NAMES)}; this one lacks {', '.join(missing)}")
    return {n: float(schedule.values[n][0]) for n in NAMES}


def constants(schedule: Schedule) -> dict[str, float]:
    """Every type's first value: what the loss's hyperparameters are held at (a trial draws constants)."""
    return {k: float(v.flatten()[0]) for k, v in schedule.values.items()}


def make_optimizer(params: Iterable[Tensor], hyper: Mapping[str, float], steps: int) -> Any:
    """``schedulefree.SGDScheduleFree`` with ``hyper``; the warm-up fraction becomes ``round(warmup * steps)`` steps."""
    import schedulefree

    return schedulefree.SGDScheduleFree(params, lr=hyper["lr"], momentum=hyper["momentum"],
                                        weight_decay=hyper["wd"], warmup_steps=round(hyper["warmup"] * steps))


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` keeps BatchNorm running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_schedule_free(model: nn.Module, loss_of: ModelFn, batches: Iterable[tuple[int, Batch]],
                        hyper: Mapping[str, float], steps: int, grad_clip: float | None = None) -> tuple[Tensor, bool]:
    """Train ``model`` in place on ``batches`` of ``loss_of(model, batch)`` with schedule-free SGD; ``(last loss, diverged)``.

    Ends with the optimizer in eval mode: the model holds the averaged weights :math:`x`.
    """
    opt = make_optimizer(model.parameters(), hyper, steps)
    recent: deque[Batch] = deque(maxlen=BATCHNORM_BATCHES)
    loss = torch.zeros(())
    diverged = False
    model.train()
    opt.train()
    for _, batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, batch)
        loss.backward()
        if grad_clip is not None:  # the clamp every other method trains under (hpo.core.step.tree_clamp)
            torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        opt.step()
        recent.append(batch)
        if not bool(torch.isfinite(loss)):
            diverged = True
            break
    opt.eval()
    if has_batchnorm(model):
        with torch.no_grad():
            for batch in recent:  # a train-mode pass refreshes the BatchNorm statistics
                loss_of(model, batch)
    model.eval()
    return loss.detach(), diverged


def trial(task: Task, rule: UpdateRule, config: FDSConfig, k: int, schedule: Schedule) -> Trial:
    """Trial ``k``: the inner problem of outer step ``k`` (its initialisation, batches and validation split), scored."""
    problem = make_problem(task, rule, config, k)
    model = init_model(task, problem.seed, config.dtype, config.device)
    _, diverged = train_schedule_free(model, stateful_loss(task, constants(schedule)), problem.batches(),
                                      hyper_of(schedule), problem.horizon,
                                      problem.grad_clip)
    params, buffers = split_state(model)
    with torch.no_grad():
        vloss, vacc = problem.evaluate(params, buffers)
    if diverged or not math.isfinite(float(vloss)):
        return Trial(k, schedule, math.inf, 0.0 if diverged else float(vacc), problem.horizon, True)
    return Trial(k, schedule, float(vloss), float(vacc), problem.horizon, False)


def random_search(task: Task, rule: UpdateRule, config: FDSConfig, space: SearchSpace, trials: int,
                  stop: Stop | None = None) -> list[Trial]:
    """``trials`` schedule-free settings drawn from ``space`` (seeded by ``config.seed``), each a :func:`trial`.

    ``stop()`` is asked after every trial; when it is true no further trial starts.
    """
    gen = torch.Generator().manual_seed(int(config.seed) * 7_919 + 29)
    out = []
    for k in range(trials):
        out.append(trial(task, rule, config, k, sample_schedule(space, {}, gen)))
        if stop is not None and stop():
            break
    return out


def retrain_schedule_free(task: Task, schedule: Schedule, steps: int, seed: int, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu", grad_clip: float | None = None) -> RetrainResult:
    """Train a fresh model on ``task``'s whole train set for ``steps`` steps with schedule-free SGD; test it.

    The same initialisation and batches as :func:`hpo.search.retrain.retrain` with ``seed``.
    """
    model = init_model(task, seed, dtype, device)
    loss, diverged = train_schedule_free(model, stateful_loss(task, constants(schedule)),
                                         retrain_batches(task, steps, seed, dtype, device), hyper_of(schedule),
                                         steps, grad_clip)
    return tested(task, model, *split_state(model), loss, steps, diverged)


@final
class ScheduleFreeSearch(SearchMethod):
    """Random search over schedule-free SGD settings (``space``: :data:`hpo.search.schedule_free.DEFAULT_SPACE`)."""

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
        """Schedule-free SGD with the incumbent setting (``rule`` is not used): :func:`~hpo.search.schedule_free.retrain_schedule_free`."""
        return retrain_schedule_free(task, schedule, steps, seed, dtype, device, grad_clip)
