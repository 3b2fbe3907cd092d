"""Hypergradients through BatchNorm models: forward mode == full reverse mode == finite differences.

BatchNorm running statistics are updated in the inner loop and not differentiated, so the finite
differences here hold the final running statistics fixed (the quantity the backends compute).
Runs on CUDA when present (``hpo.runtime.device.test_device``), in float64.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.runtime.device import device_for_tests
from hpo.tasks.augment import Augment
from hpo.tasks.base import classification_task, init_model
from hpo.tasks.models import LeNet, WideResNet
from tests.conftest import tensor_problem

DEV = device_for_tests()
F64 = torch.float64


class SmoothBN(nn.Module):
    """conv BN tanh, linear BN tanh, linear: BatchNorm without ReLU/max-pool kinks, for finite differences.

    (With ReLU or max-pooling the inner gradient jumps where an activation crosses a kink, so the
    unrolled loss is only piecewise smooth and central differences can straddle a jump.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(36, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``(N, 3, 8, 8)`` images."""
        return self.net(x)


def bn_problem(model: str, augment: Augment | None = None, horizon: int = 6) -> InnerProblem:
    """A tiny float64 problem on a BatchNorm model; images 28x28 (LeNet) or 8x8 (WRN-10-1, smooth)."""
    gen = torch.Generator().manual_seed(3)
    if model == "lenet":
        make, shape = (lambda: LeNet(1, 3, 28)), (1, 28, 28)
    elif model == "wrn":
        make, shape = (lambda: WideResNet(10, 1, 3, 3)), (3, 8, 8)
    else:
        make, shape = SmoothBN, (3, 8, 8)
    x = torch.randn(28, *shape, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (28,), generator=gen)
    task = classification_task("bn", x, y, x, y, make)
    net = init_model(task, 0, F64, DEV)
    x, y = x.to(DEV), y.to(DEV)
    return tensor_problem(net, SGDMomentum(), x[:20], y[:20], x[20:], y[20:], augment=augment,
                          horizon=horizon, batch_size=8, seed=5)


def schedule() -> Schedule:
    """3 learning rates, 2 momenta, 1 weight decay, all non-zero so every tangent is exercised."""
    return Schedule({"lr": torch.tensor([0.1, 0.05, 0.02], dtype=F64, device=DEV),
                     "momentum": torch.tensor([0.5, 0.8], dtype=F64, device=DEV),
                     "wd": torch.tensor([1e-2], dtype=F64, device=DEV)})


def final_buffers(problem: InnerProblem, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Running statistics after a plain (non-differentiated) run of the inner loop."""
    rule, p, b = problem.rule, problem.params, problem.buffers
    s = rule.init(p)
    for t, batch in problem.batches():
        hyper = {k: v[(v.numel() * t) // problem.horizon] for k, v in values.items()}
        with torch.enable_grad():
            q = {k: v.detach().requires_grad_() for k, v in p.items()}
            loss, b = problem.loss_fn(q, b, batch)
            g = dict(zip(q, torch.autograd.grad(loss, list(q.values()))))
        p, s = rule.step({k: v.detach() for k, v in q.items()}, s, g, hyper, t)
    return b


def fixed_statistics(problem: InnerProblem, buffers: dict[str, torch.Tensor]) -> InnerProblem:
    """The same problem, but the validation loss reads ``buffers`` instead of the run's statistics."""
    eval_fn = problem.eval_fn
    return replace(problem, eval_fn=lambda p, b, batch, *a: eval_fn(p, buffers, batch, *a))


@pytest.mark.parametrize("model,augment", [("wrn", None), ("lenet", Augment(pad=4, flip=True, cutout=8))])
def test_forward_equals_reverse_through_batchnorm(model: str, augment: Augment | None) -> None:
    problem = bn_problem(model, augment)
    sched = schedule()
    ref = reverse_hypergradient(problem, sched.values)
    for backend in (ForwardManualBackend(), ForwardJvpBackend()):
        got = run_inner(backend, problem, sched).hypergrad
        for k in ref:
            assert ref[k].abs().max() > 1e-6, k  # the comparison is not vacuous
            torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=f"{backend.name} {k}")


def test_running_statistics_updated_not_differentiated() -> None:
    problem = bn_problem("smooth", horizon=4)
    sched = schedule()
    backend = ForwardManualBackend()
    state = backend.init(problem, sched)
    for t, batch in problem.batches():
        state = backend.step(problem, sched, state, t, batch)
    got = backend.inner(state).buffers
    want = final_buffers(problem, sched.values)
    moved = [k for k in want if k.endswith("running_mean") and not torch.equal(want[k], problem.buffers[k])]
    assert moved, "running statistics did not change"
    for k in want:
        assert not got[k].requires_grad
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert int(got["net.1.num_batches_tracked"]) == 4
    assert int(problem.buffers["net.1.num_batches_tracked"]) == 0  # the inputs were not mutated


def test_batchnorm_hypergradient_matches_finite_differences() -> None:
    problem = bn_problem("smooth", horizon=6)
    sched = schedule()
    fixed = fixed_statistics(problem, final_buffers(problem, sched.values))
    fd = finite_difference_hypergradient(fixed, sched.values, eps=1e-6)
    got = run_inner(ForwardManualBackend(), problem, sched).hypergrad
    for k in fd:
        torch.testing.assert_close(got[k], fd[k], rtol=1e-5, atol=1e-8, msg=k)


def test_models_have_the_usual_sizes() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(WideResNet(16, 1)) == 175_066
    assert count(WideResNet(40, 2)) == 2_243_546
    assert LeNet(3, 10, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(15, 1)
