"""Train a fresh model with a schedule, through ``torch.optim`` and :class:`ScheduleDriver`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import final

import torch

from hpo.core.problem import Buffers, augment_generator, batch_order, evaluate
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, train_step
from hpo.core.torch_scheduler import ScheduleDriver
from hpo.optimizers.base import Params, UpdateRule
from hpo.optimizers.grouped import GroupedRule, group_counts
from hpo.tasks.base import Task, cross_entropy, init_model, model_functions, split_state

#: ``hpo run --seed S`` retrains with seed ``S + RETRAIN_SEED_OFFSET``; ``hpo retrain`` does the same.
RETRAIN_SEED_OFFSET = 7919


@final
@dataclass(frozen=True)
class RetrainResult:
    """Test metrics of a model trained from scratch with a schedule."""

    test_acc: float
    test_loss: float
    train_loss: float
    steps: int
    diverged: bool


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
    back to the rule's own ``step``.  A schedule whose groups do not fit ``rule`` is a ``ValueError``.  ``grad_clip`` clamps every gradient to ``[-c, c]``, as the
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
        for t, x, y in batches:
            driver.apply()
            opt.zero_grad(set_to_none=True)
            loss = cross_entropy(model(x), y)
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
        loss_fn, _ = model_functions(model)
        params, buffers = split_state(model)
        state = rule.init(params)
        values = schedule.values_like(next(iter(params.values())))
        for t, x, y in batches:
            params, state, buffers, loss, _ = train_step(rule, loss_fn, params, buffers, state,
                                                         hyper_at_step(values, t, steps), t, x, y, grad_clip,
                                                         seed=seed + 1)
            if on_step is not None:
                on_step(t, loss.detach())
            if not torch.isfinite(loss):
                diverged = True
                break
    return tested(task, model, params, buffers, loss, steps, diverged)


def retrain_batches(task: Task, steps: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(t, x_t, y_t)`` for ``t = 0..steps-1``: the minibatches (augmented) of a retrain seeded ``seed``.

    Every retrain from scratch sees these batches, whatever optimizer it trains with.
    """
    x_all, y_all = task.train_x.to(device, dtype), task.train_y.to(device)
    stream = batch_order(x_all.shape[0], task.batch_size, steps, seed + 1, x_all.device)
    for t, idx in enumerate(stream):
        x = x_all[idx] if task.augment is None else task.augment(x_all[idx], augment_generator(x_all.device, seed + 1, t))
        yield t, x, y_all[idx]


def tested(task: Task, model: torch.nn.Module, params: Params, buffers: Buffers, loss: torch.Tensor, steps: int,
           diverged: bool) -> RetrainResult:
    """The :class:`RetrainResult` of weights ``(params, buffers)`` of ``model``: loss and accuracy on the test set."""
    device, dtype = next(iter(params.values())).device, next(iter(params.values())).dtype
    _, eval_fn = model_functions(model)
    with torch.no_grad():
        test_loss, test_acc = evaluate(eval_fn, params, buffers, task.test_x.to(device, dtype), task.test_y.to(device))
    diverged = diverged or not bool(torch.isfinite(test_loss))  # the last update can still blow up
    return RetrainResult(float(test_acc), float(test_loss), float(loss.detach()), steps, diverged)
