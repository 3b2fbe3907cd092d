"""Small float64 problems shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from hpo.optimizers.base import UpdateRule
from hpo.optimizers.sgd import SGDMomentum
from hpo.problem import InnerProblem
from hpo.schedule import Schedule
from hpo.tasks.base import model_functions, split_state

DT = torch.float64


def tiny_problem(rule: UpdateRule | None = None, horizon: int = 12, batch_size: int = 10, seed: int = 1,
                 model: nn.Module | None = None) -> InnerProblem:
    """A 5-6-3 tanh MLP on random float64 data: small enough for finite differences."""
    gen = torch.Generator().manual_seed(0)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    model = model.to(DT)
    loss_fn, eval_fn = model_functions(model)
    params, buffers = split_state(model)
    x = torch.randn(40, 5, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (40,), generator=gen)
    xv = torch.randn(20, 5, generator=gen, dtype=DT)
    yv = torch.randint(0, 3, (20,), generator=gen)
    return InnerProblem(loss_fn, eval_fn, params, buffers, rule or SGDMomentum(), x, y, xv, yv,
                        horizon=horizon, batch_size=batch_size, seed=seed)


def sgd_schedule() -> Schedule:
    """Three lr, two momentum and two weight-decay segments, away from range edges."""
    return Schedule({
        "lr": torch.tensor([0.1, 0.2, 0.05], dtype=DT),
        "momentum": torch.tensor([0.5, 0.8], dtype=DT),
        "wd": torch.tensor([0.01, 0.02], dtype=DT),
    })


def max_rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| / max(|b|, 1e-12) over all entries of two hypergradient dicts."""
    assert set(a) == set(b)
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-12)).max()) for k in a)
