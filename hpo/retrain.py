"""Train a fresh model with a schedule, through ``torch.optim`` and :class:`ScheduleDriver`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hpo.problem import augment_generator, batch_index_stream, evaluate
from hpo.schedule import Schedule
from hpo.torch_scheduler import ScheduleDriver
from hpo.optimizers.base import UpdateRule
from hpo.tasks.base import Task, cross_entropy, init_model, model_functions, split_state


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
) -> RetrainResult:
    """Train ``task``'s model from scratch on its whole train set for ``steps`` steps.

    The schedule is stretched to ``steps`` (segment of step t is ``floor(n t / steps)``).  Rules
    with a ``torch.optim`` counterpart train through it and :class:`ScheduleDriver`; others fall
    back to the rule's own ``step``.
    """
    model = init_model(task, seed, dtype, device)
    x_all, y_all = task.train_x.to(device, dtype), task.train_y.to(device)
    stream = batch_index_stream(x_all.shape[0], task.batch_size, steps, seed + 1, x_all.device)
    gen = augment_generator(x_all.device, seed + 1) if task.augment is not None else None

    def batch_x(idx: torch.Tensor) -> torch.Tensor:
        return x_all[idx] if task.augment is None else task.augment(x_all[idx], gen)

    opt = rule.torch_optimizer(model.parameters(), schedule.at(0, steps))
    loss = torch.zeros((), device=device)
    diverged = False
    if opt is not None:
        driver = ScheduleDriver(opt, rule, schedule, steps)
        for t, idx in enumerate(stream):
            driver.apply()
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            loss = cross_entropy(model(batch_x(idx)), y_all[idx])
            loss.backward()
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
        values = {k: v.to(device, dtype) for k, v in schedule.values.items()}
        for t, idx in enumerate(stream):
            idx = idx.to(device)
            hyper = {k: v[(v.numel() * t) // steps] for k, v in values.items()}
            with torch.enable_grad():
                p = {k: v.detach().requires_grad_() for k, v in params.items()}
                loss, buffers = loss_fn(p, buffers, batch_x(idx), y_all[idx])
                grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
            params, state = rule.step({k: v.detach() for k, v in p.items()}, state, grads, hyper, t)
            if on_step is not None:
                on_step(t, loss.detach())
            if not torch.isfinite(loss):
                diverged = True
                break
    _, eval_fn = model_functions(model)
    with torch.no_grad():
        test_loss, test_acc = evaluate(eval_fn, params, buffers, task.test_x.to(device, dtype), task.test_y.to(device))
    diverged = diverged or not bool(torch.isfinite(test_loss))  # the last update can still blow up
    return RetrainResult(float(test_acc), float(test_loss), float(loss.detach()), steps, diverged)
