"""Grouped schedules are exact: every exact backend == reference unroll == central finite differences (float64).

A grouped type's values are a ``(groups, segments)`` table.  For SGD-momentum, Adam, AdamW and the RMSprop
example rule, wrapped in :class:`~hpo.optimizers.grouped.GroupedRule` with per-layer, bias-vs-rest
and pattern groupings, forward-jvp, forward-manual (rules with a hand tangent), reverse-checkpointed
and reverse-truncated (whole window) agree with full reverse mode through the unrolled loop and
with central finite differences.  The grouping ``all`` is no wrapper at all, so it reproduces the
ungrouped numbers bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.greedy import GreedyBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.backends.reverse_truncated import ReverseTruncatedBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.grouping import grouped_rule
from hpo.core.schedule import Schedule
from hpo.optimizers import Adam, AdamW, SGDMomentum, UpdateRule
from hpo.optimizers.grouped import GroupedRule
from tests import conftest as helpers
from tests.test_reverse_checkpointed import rel_err, rmsprop

F64 = torch.float64


def t(x: list) -> Tensor:
    return torch.tensor(x, dtype=F64)


# The tiny MLP's parameters: 0.weight (6, 5), 0.bias (6,), 2.weight (3, 6), 2.bias (3,).
CASES = {
    "sgd": (SGDMomentum, {"lr": "layer", "momentum": "bias-vs-rest"},
            {"lr": t([[0.3, 0.2, 0.1], [0.15, 0.25, 0.05]]), "momentum": t([[0.5, 0.8], [0.6, 0.7]]),
             "wd": t([1e-2, 3e-2])}),
    "adam": (Adam, {"lr": "layer", "beta2": "bias-vs-rest", "wd": "weight,bias"},
             {"lr": t([[0.03, 0.02, 0.01], [0.02, 0.03, 0.015]]), "beta1": t([0.7, 0.85]),
              "beta2": t([[0.9, 0.97], [0.95, 0.92]]), "wd": t([[1e-2, 3e-2], [2e-2, 4e-2]])}),
    "adamw": (AdamW, {"lr": "layer", "wd": "bias-vs-rest"},
              {"lr": t([[0.03, 0.02, 0.01], [0.02, 0.03, 0.015]]), "beta1": t([0.7, 0.85]),
               "beta2": t([0.9, 0.97]), "wd": t([[1e-2, 3e-2], [2e-2, 4e-2]])}),
    "rmsprop": (rmsprop, {"lr": "bias,*", "alpha": "layer"},
                {"lr": t([[0.03, 0.02, 0.01], [0.01, 0.025, 0.02]]), "alpha": t([[0.8, 0.95], [0.9, 0.85]])}),
}


def grouped_problem(key: str, horizon: int = 8):
    make, groups, vals = CASES[key]
    base = helpers.tiny_problem(make(), horizon=horizon)
    rule = grouped_rule(base.rule, groups, base.params)
    assert isinstance(rule, GroupedRule)
    from dataclasses import replace

    return replace(base, rule=rule), Schedule(vals)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    problem, sched = grouped_problem(request.param)
    rev = reverse_hypergradient(problem, sched.values)
    fd = finite_difference_hypergradient(problem, sched.values, eps=1e-5)
    return request.param, problem, sched, rev, fd


def test_reference_unroll_agrees_with_finite_differences(case) -> None:
    key, _, sched, rev, fd = case
    for name, v in sched.values.items():
        assert rev[name].shape == v.shape
        assert bool((rev[name] != 0).all()), (key, name)  # every group and segment matters
    assert rel_err(rev, fd) < 1e-6


@pytest.mark.parametrize("backend", [ForwardJvpBackend(), ForwardManualBackend(), ReverseCheckpointedBackend(),
                                     ReverseCheckpointedBackend(every=1), ReverseTruncatedBackend()],
                         ids=["forward-jvp", "forward-manual", "reverse-checkpointed", "reverse-checkpointed-k1",
                              "reverse-truncated"])
def test_every_exact_backend_equals_the_unroll_and_finite_differences(case, backend) -> None:
    _, problem, sched, rev, fd = case
    if isinstance(backend, ForwardManualBackend) and not problem.rule.hand_tangent:  # the RMSprop example
        with pytest.raises(ValueError, match="has no hand-derived tangent; use the forward-jvp backend"):
            run_inner(backend, problem, sched)
        return
    res = run_inner(backend, problem, sched)
    assert not res.diverged and res.steps == problem.horizon
    for name, v in sched.values.items():
        assert res.hypergrad[name].shape == v.shape
    assert rel_err(res.hypergrad, rev) < 1e-10
    assert rel_err(res.hypergrad, fd) < 1e-6


def test_greedy_gives_a_table_per_grouped_type() -> None:
    problem, sched = grouped_problem("sgd")
    res = run_inner(GreedyBackend(), problem, sched)
    assert {k: tuple(v.shape) for k, v in res.hypergrad.items()} == {"lr": (2, 3), "momentum": (2, 2), "wd": (2,)}
    assert bool(torch.isfinite(res.hypergrad["lr"]).all()) and bool((res.hypergrad["lr"] != 0).all())


def test_grouping_all_is_no_wrapper_and_reproduces_the_ungrouped_numbers_exactly() -> None:
    problem = helpers.tiny_problem(SGDMomentum(), horizon=8)
    assert grouped_rule(problem.rule, {}, problem.params) is problem.rule
    assert grouped_rule(problem.rule, {"lr": "all", "wd": "all"}, problem.params) is problem.rule
    sched = helpers.sgd_schedule()
    for backend in (ForwardManualBackend(), ReverseCheckpointedBackend()):
        a = run_inner(backend, problem, sched).hypergrad
        b = run_inner(backend, problem, sched).hypergrad
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", [ForwardJvpBackend(), ReverseCheckpointedBackend()], ids=lambda b: b.name)
def test_equal_values_over_groups_sum_to_the_shared_hypergradient(backend) -> None:
    """Chain rule: with every group at the shared value, the groups' hypergradients sum to the shared one."""
    problem = helpers.tiny_problem(SGDMomentum(), horizon=8)
    sched = helpers.sgd_schedule()
    shared = run_inner(backend, problem, sched)
    from dataclasses import replace

    rule = grouped_rule(problem.rule, {"lr": "layer", "wd": "bias-vs-rest"}, problem.params)
    wide = sched.broadcast_groups({"lr": 2, "wd": 2})
    grouped = run_inner(backend, replace(problem, rule=rule), wide)
    assert grouped.val_loss == pytest.approx(shared.val_loss, rel=1e-13)
    for name in ("lr", "wd"):
        torch.testing.assert_close(grouped.hypergrad[name].sum(0), shared.hypergrad[name], rtol=1e-11, atol=0)
    torch.testing.assert_close(grouped.hypergrad["momentum"], shared.hypergrad["momentum"], rtol=1e-11, atol=0)


def test_a_schedule_that_does_not_fit_the_groups_is_refused() -> None:
    problem, _ = grouped_problem("sgd")
    flat = Schedule({"lr": t([0.1, 0.2]), "momentum": t([0.5]), "wd": t([0.0])})
    with pytest.raises(ValueError, match="does not fit the rule's parameter groups"):
        run_inner(ReverseCheckpointedBackend(), problem, flat)


def test_wrapper_mirrors_the_rule(case) -> None:
    _, problem, _, _, _ = case
    rule: UpdateRule = problem.rule
    inner = rule.rule  # type: ignore[attr-defined]
    assert (rule.name, rule.hyperparameters, rule.hand_picked, rule.hand_tangent) == (
        inner.name, inner.hyperparameters, inner.hand_picked, inner.hand_tangent)
    assert list(rule.init(problem.params)) == list(inner.init(problem.params))
