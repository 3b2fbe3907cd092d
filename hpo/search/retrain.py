"""Train a fresh model with a schedule, through ``torch.optim`` and :class:`ScheduleDriver`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import final

import torch

from hpo.core.data import Batch, Indexed
from hpo.core.problem import Buffers, batch_order, evaluate
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, plain_train_step
from hpo.core.torch_scheduler import ScheduleDriver
from hpo.optimizers.base import Params, UpdateRule
from hpo.optimizers.grouped import GroupedRule, group_counts
from hpo.optimizers.loss_hypers import example_names
from hpo.tasks.base import Task, init_model, model_functions, split_state

#: ``hpo run --seed S`` retrains with seed ``S + RETRAIN_SEED_OFFSET``; ``hpo retrain`` does the same.
RETRAIN_SEED_OFFSET = 7919


@final
@dataclass(frozen=True)
class RetrainResult:
    """Test metrics of a model trained from scratch with a schedule.

    ``test_acc`` is the test score, the problem's ranking metric oriented so larger is better (the
    accuracy of a classifier; minus the RMSE of a regression); ``metrics`` holds every reported
    test metric by name, with ``loss``.
    """

    test_acc: float
    test_loss: float
    train_loss: float
    steps: int
    diverged: bool
    metrics: dict[str, float] = field(default_factory=dict)


def retrain(
    task: Task,
    rule: UpdateRule,
    schedule: Schedule,
    steps: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    grad_clip: float | None = None,
) -> RetrainResult:
    """Train ``task``'s model from scratch on its whole train set for ``steps`` steps.

    The schedule is stretched to ``steps`` (segment of step t is ``floor(n t / steps)``).  Rules
    with a ``torch.optim`` counterpart train through it and :class:`ScheduleDriver` (a
    :class:`~hpo.optimizers.grouped.GroupedRule` through one param group per cell); others fall
    back to the rule's own ``step``, as does a rule with loss hyperparameters (the loss receives
    their values at every step, per-example ones at the batch's rows).  A schedule whose groups do not fit ``rule`` is a ``ValueError``.  ``grad_clip`` clamps every gradient to ``[-c, c]``, as the
    search did (:func:`hpo.core.step.tree_clamp`).
    """
    model = init_model(task, seed, dtype, device)
    batches = retrain_batches(task, steps, seed, dtype, device)
    schedule.check_groups(group_counts(rule))
    if isinstance(rule, GroupedRule):  # one param group per cell, tagged with its groups (ScheduleDriver reads them)
        opt = rule.torch_optimizer(model.named_parameters(), schedule.at(0, steps))
    else:
        opt = rule.torch_optimizer(model.parameters(), schedule.at(0, steps))  # type: ignore[arg-type]
    loss = torch.zeros((), device=device)
    diverged = False
    if opt is not None:
        driver = ScheduleDriver(opt, rule, schedule, steps)
        for t, batch in batches:
            driver.apply()
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, batch)
            loss.backward()
            if grad_clip is not None:  # the clamp the search trained under (hpo.core.step.tree_clamp)
                torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
            opt.step()
            driver.advance()
            if on_step is not None:
                on_step(t, loss.detach())
            if not torch.isfinite(loss):
                diverged = True
                break
        params, buffers = split_state(model)
    else:
        loss_fn, _ = model_functions(model, task)
        params, buffers = split_state(model)
        state = rule.init(params)
        values = schedule.values_like(next(iter(params.values())))
        if example_names(rule):  # per-example loss values: each batch carries its training-set rows
            batches = retrain_batches(task, steps, seed, dtype, device, indexed=True)
        for t, batch in batches:
            params, state, buffers, loss, _ = plain_train_step(rule, loss_fn, params, buffers, state,
                                                               hyper_at_step(values, t, steps), t, batch, grad_clip,
                                                               seed=seed + 1)
            if on_step is not None:
                on_step(t, loss.detach())
            if not torch.isfinite(loss):
                diverged = True
                break
    return tested(task, model, params, buffers, loss, steps, diverged)


def retrain_batches(task: Task, steps: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu", indexed: bool = False) -> Iterator[tuple[int, Batch]]:
    """``(t, batch_t)`` for ``t = 0..steps-1``: the minibatches (augmented) of a retrain seeded ``seed``.

    Every retrain from scratch sees these batches, whatever optimizer it trains with.  ``indexed``:
    each is an :class:`~hpo.core.data.Indexed` batch carrying its training-set rows.
    """
    data = task.train_rows.to(dtype, device)
    stream = batch_order(len(data), task.batch_size, steps, seed + 1)
    for t, idx in enumerate(stream):
        batch = data.fetch(idx, seed + 1, t)
        yield t, Indexed(batch, idx) if indexed else batch


def tested(task: Task, model: torch.nn.Module, params: Params, buffers: Buffers, loss: torch.Tensor, steps: int,
           diverged: bool) -> RetrainResult:
    """The :class:`RetrainResult` of weights ``(params, buffers)`` of ``model``: objective and metrics on the test set."""
    device, dtype = next(iter(params.values())).device, next(iter(params.values())).dtype
    _, eval_fn = model_functions(model, task)
    with torch.no_grad():
        test_loss, means = evaluate(eval_fn, params, buffers, task.test_rows.to(dtype, device))
        score = task.score_fn()(test_loss, means)
    diverged = diverged or not bool(torch.isfinite(test_loss))  # the last update can still blow up
    return RetrainResult(float(score), float(test_loss), float(loss.detach()), steps, diverged,
                         task.reported(test_loss, means))
