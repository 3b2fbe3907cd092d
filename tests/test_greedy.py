"""greedy: one-step hypergradients equal a direct autograd computation; online mode."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hpo.backends.greedy import GreedyBackend, validation_batches
from hpo.checking.unroll import reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.schedule import Schedule, segment_index
from hpo.search.online_greedy import online_greedy, summarise
from tests.conftest import tiny_schedule, tiny_task_problem


def direct_greedy(problem, sched):
    """Sum over steps of d/d lambda_t of the val-batch loss after one SGD-momentum step, by autograd."""
    params = {k: v.clone() for k, v in problem.params.items()}
    buffers = problem.buffers
    vel = {k: torch.zeros_like(v) for k, v in params.items()}
    sums = {k: torch.zeros_like(v) for k, v in sched.values.items()}
    vb = validation_batches(problem)
    for t, batch in problem.batches():
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss, new_buffers = problem.loss_fn(p, buffers, batch)
        g = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        seg = {k: segment_index(t, problem.horizon, v.numel()) for k, v in sched.values.items()}
        lr, mu, wd = (sched.values[k][seg[k]].clone().requires_grad_() for k in ("lr", "momentum", "wd"))
        v_new = {k: mu * vel[k] + g[k] + wd * params[k] for k in params}
        p_new = {k: params[k] - lr * v_new[k] for k in params}
        val_loss, _ = problem.eval_fn(p_new, new_buffers, problem.val.fetch(vb[t], -1, t), False)
        d_lr, d_mu, d_wd = torch.autograd.grad(val_loss, [lr, mu, wd])
        for name, d in (("lr", d_lr), ("momentum", d_mu), ("wd", d_wd)):
            sums[name][seg[name]] += d
        params = {k: v.detach() for k, v in p_new.items()}
        vel = {k: v.detach() for k, v in v_new.items()}
        buffers = new_buffers
    return sums


@pytest.mark.parametrize("batchnorm", [False, True])
def test_greedy_equals_direct_autograd(batchnorm):
    problem = tiny_task_problem(10, batchnorm=batchnorm)
    sched = tiny_schedule()
    result = run_inner(GreedyBackend(), problem, sched)
    ref = direct_greedy(problem, sched)
    for k in ref:
        assert bool((ref[k] != 0).all())
        torch.testing.assert_close(result.hypergrad[k], ref[k], rtol=1e-9, atol=1e-12)
    assert result.steps == 10


def test_one_step_greedy_equals_exact_hypergradient():
    """With T = 1 and the validation set one minibatch, greedy is the exact hypergradient."""
    base = tiny_task_problem(1)
    problem = replace(base, val=base.val.subset(torch.arange(8)))
    sched = tiny_schedule({"lr": 1, "momentum": 1, "wd": 1})
    result = run_inner(GreedyBackend(), problem, sched)
    ref = reverse_hypergradient(problem, sched.values)
    for k in ref:
        torch.testing.assert_close(result.hypergrad[k], ref[k], rtol=1e-9, atol=1e-12)


def test_greedy_differs_from_full_hypergradient():
    problem = tiny_task_problem(12)
    sched = tiny_schedule()
    greedy = run_inner(GreedyBackend(), problem, sched).hypergrad
    full = reverse_hypergradient(problem, sched.values)
    assert float((greedy["lr"] - full["lr"]).abs().max()) > 1e-3


def test_online_without_hyper_lr_keeps_values():
    problem = tiny_task_problem(6)
    start = Schedule.constant({"lr": 0.2, "momentum": 0.5, "wd": 0.01})
    out = online_greedy(problem, start, hyper_lr={"lr": 0.0, "momentum": 0.0, "wd": 0.0}, counts={"lr": 2})
    assert out.trajectory["lr"].tolist() == pytest.approx([0.2] * 6)
    ref = run_inner(GreedyBackend(), problem, start)
    assert out.val_loss == pytest.approx(ref.val_loss, rel=1e-12)
    assert out.schedule.counts == {"lr": 2, "momentum": 1, "wd": 1}


def test_online_first_update_is_hypergradient_descent():
    problem = tiny_task_problem(2)
    start = Schedule.constant({"lr": 0.2, "momentum": 0.5, "wd": 0.01})
    beta = {"lr": 0.05, "momentum": 0.01, "wd": 1e-3}
    out = online_greedy(problem, start, hyper_lr=beta)
    h0 = run_inner(GreedyBackend(), replace(problem, horizon=1), start).hypergrad
    for k, b in beta.items():
        expected = start.values[k][0] - b * h0[k][0]
        assert float(out.trajectory[k][1]) == pytest.approx(float(expected), rel=1e-10)
    # momentum cannot move at step 0 (v_0 = 0); lr and wd do
    for k in ("lr", "wd"):
        assert float(out.trajectory[k][1]) != pytest.approx(float(start.values[k][0]), rel=1e-6)


def test_online_clamps_to_valid_range():
    problem = tiny_task_problem(4)
    start = Schedule.constant({"lr": 0.2, "momentum": 0.5, "wd": 0.0})
    out = online_greedy(problem, start, hyper_lr={"lr": 1e3, "momentum": 1e3, "wd": 1e3})
    assert float(out.trajectory["lr"].min()) >= 0.0
    assert float(out.trajectory["momentum"].max()) < 1.0
    assert float(out.trajectory["wd"].min()) >= 0.0


def test_online_rejects_unknown_hyperparameter():
    with pytest.raises(ValueError, match="no hyperparameter 'beta'"):
        online_greedy(
            tiny_task_problem(2), Schedule.constant({"lr": 0.1, "momentum": 0.0, "wd": 0.0}), hyper_lr={"beta": 1.0}
        )


def test_summarise_means_per_segment():
    traj = {"lr": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])}
    assert summarise(traj, {"lr": 3}).values["lr"].tolist() == [1.5, 3.5, 5.5]
