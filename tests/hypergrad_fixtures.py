"""Tiny float64 inner problems shared by the reverse-truncated and greedy backend tests."""

from __future__ import annotations

import torch
from torch import nn

from hpo.optimizers.sgd import SGDMomentum
from hpo.problem import InnerProblem
from hpo.schedule import Schedule
from hpo.tasks.base import Task, init_model, model_functions, split_state


def tiny_task(batchnorm: bool = False, n: int = 48, d: int = 5, classes: int = 3, seed: int = 0) -> Task:
    """Random separable-ish data and a 2-layer MLP (optionally with BatchNorm)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, classes, generator=gen)
    x = torch.randn(n, d, generator=gen)
    y = (x @ w).argmax(-1)
    xt = torch.randn(n // 2, d, generator=gen)
    yt = (xt @ w).argmax(-1)

    def make() -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(d, 6)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(6))
        layers += [nn.Tanh(), nn.Linear(6, classes)]
        return nn.Sequential(*layers)

    return Task("tiny", x, y, xt, yt, make, classes, batch_size=8)


def tiny_problem(
    horizon: int = 12, batchnorm: bool = False, seed: int = 0, grad_clip: float | None = None
) -> InnerProblem:
    """A float64 inner problem: 32 train / 16 val samples, batch 8, SGD-momentum."""
    task = tiny_task(batchnorm=batchnorm, seed=seed)
    model = init_model(task, seed, torch.float64, "cpu")
    loss_fn, eval_fn = model_functions(model)
    params, buffers = split_state(model)
    x = task.train_x.double()
    return InnerProblem(
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        params=params,
        buffers=buffers,
        rule=SGDMomentum(),
        train_x=x[:32],
        train_y=task.train_y[:32],
        val_x=x[32:],
        val_y=task.train_y[32:],
        horizon=horizon,
        batch_size=8,
        seed=seed,
        grad_clip=grad_clip,
    )


def tiny_schedule(counts: dict[str, int] | None = None) -> Schedule:
    """A non-trivial schedule: distinct learning rates per segment, momentum 0.5, wd 0.01."""
    counts = counts or {"lr": 3, "momentum": 2, "wd": 1}
    vals = {
        "lr": torch.linspace(0.3, 0.1, counts["lr"], dtype=torch.float64),
        "momentum": torch.linspace(0.5, 0.7, counts["momentum"], dtype=torch.float64),
        "wd": torch.full((counts["wd"],), 0.01, dtype=torch.float64),
    }
    return Schedule(vals)
