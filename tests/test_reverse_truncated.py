"""reverse-truncated (higher): W = T equals forward mode, full reverse mode and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from hpo.backends.forward import ForwardManualBackend
from hpo.backends.reverse_truncated import ReverseTruncatedBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.schedule import segment_index
from hpo.core.step import tree_clamp
from tests.conftest import tiny_schedule, tiny_task_problem


def rel_err(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in b) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    return num / den


def truncated_reference(problem, values, window):
    """Validation loss unrolled with torch.func, weights and momentum cut (detached) at T - W."""

    def loss(vals):
        params, buffers = problem.params, problem.buffers
        state = problem.rule.init(params)
        for t, batch in problem.batches():
            if t == problem.horizon - window:
                params = {k: v.detach() for k, v in params.items()}
                state = {sk: {k: v.detach() for k, v in sv.items()} for sk, sv in state.items()}
            hyper = {k: v[segment_index(t, problem.horizon, v.numel())] for k, v in vals.items()}
            g, buffers = grad(lambda p, b=buffers, batch=batch: problem.loss_fn(p, b, batch), has_aux=True)(params)
            params, state = problem.rule.step(params, state, tree_clamp(g, problem.grad_clip), hyper, t)
        return problem.eval_fn(params, buffers, next(problem.val.chunks(10**6)), False)[0]

    return grad(loss)(values)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_full_window_equals_forward_and_reverse(batchnorm):
    problem = tiny_task_problem(9, batchnorm=batchnorm)
    sched = tiny_schedule()
    trunc = run_inner(ReverseTruncatedBackend(9), problem, sched)
    fwd = run_inner(ForwardManualBackend(), problem, sched)
    ref = reverse_hypergradient(problem, sched.values)
    assert rel_err(trunc.hypergrad, ref) < 1e-6
    assert rel_err(trunc.hypergrad, fwd.hypergrad) < 1e-6
    assert trunc.steps == 9
    assert trunc.val_loss == pytest.approx(fwd.val_loss, rel=1e-10)
    assert all(bool((h != 0).all()) for h in trunc.hypergrad.values())


def test_full_window_equals_finite_differences():
    problem = tiny_task_problem(6)
    sched = tiny_schedule()
    trunc = run_inner(ReverseTruncatedBackend(), problem, sched)
    fd = finite_difference_hypergradient(problem, sched.values, eps=1e-6)
    assert rel_err(trunc.hypergrad, fd) < 1e-6


def test_full_window_with_grad_clip_equals_reverse():
    problem = tiny_task_problem(8, grad_clip=0.05)
    sched = tiny_schedule()
    trunc = run_inner(ReverseTruncatedBackend(8), problem, sched)
    assert rel_err(trunc.hypergrad, reverse_hypergradient(problem, sched.values)) < 1e-6


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("window", [1, 6])
def test_short_window_equals_detached_unroll(batchnorm, window):
    problem = tiny_task_problem(12, batchnorm=batchnorm)
    sched = tiny_schedule()
    trunc = run_inner(ReverseTruncatedBackend(window), problem, sched)
    ref = truncated_reference(problem, sched.values, window)
    assert rel_err(trunc.hypergrad, ref) < 1e-6
    full = reverse_hypergradient(problem, sched.values)
    assert rel_err(trunc.hypergrad, full) > 1e-3  # truncation really changes the answer
    # lr segments are steps 0-3, 4-7, 8-11: those ending before T - W get exactly zero
    for j, end in enumerate((4, 8, 12)):
        if end <= 12 - window:
            assert float(trunc.hypergrad["lr"][j]) == 0.0
        else:
            assert float(trunc.hypergrad["lr"][j]) != 0.0


def test_window_start():
    assert ReverseTruncatedBackend().window_start(12) == 0
    assert ReverseTruncatedBackend(50).window_start(12) == 0
    assert ReverseTruncatedBackend(5).window_start(12) == 7


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        ReverseTruncatedBackend(0)


def test_weights_match_forward_mode_primal():
    problem = tiny_task_problem(7, batchnorm=True)
    sched = tiny_schedule()
    b1, b2 = ReverseTruncatedBackend(3), ForwardManualBackend()
    s1, s2 = b1.init(problem, sched), b2.init(problem, sched)
    for t, batch in problem.batches():
        s1, s2 = b1.step(problem, sched, s1, t, batch), b2.step(problem, sched, s2, t, batch)
    for k, v in b2.inner(s2).params.items():
        torch.testing.assert_close(b1.inner(s1).params[k].detach(), v, rtol=1e-12, atol=1e-12)
    for k, v in b2.inner(s2).buffers.items():
        torch.testing.assert_close(b1.inner(s1).buffers[k], v)
