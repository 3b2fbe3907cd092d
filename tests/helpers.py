"""Small float64 problems shared by the tests (the problem itself lives in :mod:`hpo.tiny`)."""

from __future__ import annotations

import torch
from torch import nn

from hpo.optimizers.base import UpdateRule
from hpo.optimizers.sgd import SGDMomentum
from hpo.problem import InnerProblem
from hpo.schedule import Schedule
from hpo.tiny import DT
from hpo.tiny import tiny_problem as _tiny_problem

__all__ = ["DT", "max_rel_err", "sgd_schedule", "tiny_problem"]


def tiny_problem(rule: UpdateRule | None = None, horizon: int = 12, batch_size: int = 10, seed: int = 1,
                 model: nn.Module | None = None) -> InnerProblem:
    """:func:`hpo.tiny.tiny_problem` with SGD-momentum by default: a 5-6-3 tanh MLP on random float64 data."""
    return _tiny_problem(rule or SGDMomentum(), horizon=horizon, batch_size=batch_size, seed=seed, model=model)


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
