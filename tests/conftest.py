"""Shared test fixtures and helpers, once: tiny float64 problems, the library's modules, a clean checkout.

Tests import the helpers from here (``from tests.conftest import tiny_problem``); ``tiny_task`` is
also used as a task plugin, ``tests/conftest.py:tiny_task``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import final

import pytest
import torch
from torch import nn

from hpo.checking.tiny import DT
from hpo.checking.tiny import tiny_problem as _tiny_problem
from hpo.core.data import TensorRows
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.loss_hypers import WithLossHypers
from hpo.optimizers.sgd import SGDMomentum
from hpo.tasks.base import Task, classification_task, init_model, model_functions, split_state
from hpo.tasks.loss_hypers import with_loss_hypers

REPO = Path(__file__).resolve().parents[1]
#: hpo.backends, hpo.optimizers and hpo.tasks live in their own top-level folders (package-dir), so
#: walking hpo.__path__ alone does not reach them.
PACKAGES = ("hpo", "hpo.backends", "hpo.optimizers", "hpo.tasks")


def library_modules() -> list[str]:
    """Dotted names of every module of the library (``hpo.__main__`` included)."""
    names = set()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            names.add(info.name)
    return sorted(names)


def module_path(module: str) -> Path:
    """The source file of ``module`` (found without importing it)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin)


@pytest.fixture(autouse=True)
def _keep_checkout_clean(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a fresh temporary folder, so default outputs (``runs/``) never land in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# Tiny float64 problems: a 5-6-3 tanh MLP on random data (hpo.checking.tiny), SGD-momentum by default.

def tiny_problem(rule: UpdateRule | None = None, horizon: int = 12, batch_size: int = 10, seed: int = 1,
                 model: nn.Module | None = None) -> InnerProblem:
    """:func:`hpo.checking.tiny.tiny_problem` with SGD-momentum by default: a 5-6-3 tanh MLP on random float64 data."""
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


# A tiny classification task (optionally with BatchNorm) and its inner problem.

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

    return classification_task("tiny", x, y, xt, yt, make, batch_size=8)


def tiny_task_problem(
    horizon: int = 12, batchnorm: bool = False, seed: int = 0, grad_clip: float | None = None,
    loss_hypers: tuple[str, ...] = (),
) -> InnerProblem:
    """A float64 inner problem: 32 train / 16 val samples, batch 8, SGD-momentum (and the built-in
    ``loss_hypers``: the rule then carries them, and per-example weights index the 32 training rows)."""
    task = with_loss_hypers(tiny_task(batchnorm=batchnorm, seed=seed), loss_hypers)
    rule: UpdateRule = SGDMomentum()
    if task.hypers:
        rule = WithLossHypers(rule, task.hypers, {**task.hyper_groups(), "example_weight": 32})
    model = init_model(task, seed, torch.float64, "cpu")
    loss_fn, eval_fn = model_functions(model, task)
    params, buffers = split_state(model)
    data = task.train_rows.to(torch.float64)
    return InnerProblem(
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        params=params,
        buffers=buffers,
        rule=rule,
        example_ids=torch.arange(32) if "example_weight" in loss_hypers else None,
        train=data.subset(torch.arange(32)),
        val=data.subset(torch.arange(32, 48)),
        score_fn=task.score_fn(),
        model_loss=task.loss,
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


@final
class TorchlessSGD(SGDMomentum):  # type: ignore[misc]
    """SGD-momentum without a ``torch.optim`` counterpart: the retrain takes the rule's own step loop."""

    def torch_optimizer(self, params, hyper):  # type: ignore[no-untyped-def]
        return None


def tiny_mlp_task(problem: InnerProblem) -> Task:
    """A task on ``problem``'s data whose model is the tiny 5-6-3 tanh MLP (batch 10)."""
    assert isinstance(problem.train, TensorRows) and isinstance(problem.val, TensorRows)
    return Task("tiny", lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), problem.model_loss,
                problem.train, problem.val, metrics=tiny_task().metrics, batch_size=10)


def tensor_problem(net: nn.Module, rule: UpdateRule, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor,
                   yv: torch.Tensor, augment=None, **kwargs) -> InnerProblem:  # type: ignore[no-untyped-def]
    """A classification :class:`InnerProblem` of ``net`` on train ``(x, y)`` and validation ``(xv, yv)``."""
    task = classification_task("t", x, y, xv, yv, lambda: net)
    loss_fn, eval_fn = model_functions(net, task)
    params, buffers = split_state(net)
    return InnerProblem(loss_fn, eval_fn, params, buffers, rule, TensorRows((x, y), augment), TensorRows((xv, yv)),
                        score_fn=task.score_fn(), model_loss=task.loss, **kwargs)
