"""Forward-mode hypergradients == full reverse-mode unroll == central finite differences (float64)."""

import pytest
import torch

from hpo.backends.columns import ColumnLayout
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from tests.conftest import DT, max_rel_err, sgd_schedule, tiny_problem


@pytest.fixture(scope="module")
def references():
    problem = tiny_problem()
    sched = sgd_schedule()
    return problem, sched, reverse_hypergradient(problem, sched.values), finite_difference_hypergradient(problem, sched.values)


@pytest.mark.parametrize("backend", [ForwardManualBackend(), ForwardJvpBackend()], ids=lambda b: b.name)
def test_forward_equals_reverse_and_finite_differences(backend, references):
    problem, sched, rev, fd = references
    res = run_inner(backend, problem, sched)
    assert res.steps == 12 and not res.diverged
    for name, n in sched.counts.items():
        assert res.hypergrad[name].shape == (n,)
        assert bool((res.hypergrad[name] != 0).all()), name  # every segment is reached and matters
    assert max_rel_err(res.hypergrad, rev) < 1e-6
    assert max_rel_err(res.hypergrad, fd) < 1e-6
    # the reference itself is not trivially equal to FD: they agree to FD accuracy, not exactly
    assert max_rel_err(rev, fd) < 1e-6


def test_manual_and_jvp_agree_to_round_off(references):
    problem, sched, _, _ = references
    a = run_inner(ForwardManualBackend(), problem, sched).hypergrad
    b = run_inner(ForwardJvpBackend(), problem, sched).hypergrad
    assert max_rel_err(a, b) < 1e-10


def test_validation_loss_is_reported_at_final_weights(references):
    problem, sched, _, _ = references
    from hpo.checking.unroll import unrolled_validation_loss

    res = run_inner(ForwardManualBackend(), problem, sched)
    assert res.val_loss == pytest.approx(float(unrolled_validation_loss(problem, sched.values)), rel=1e-12)


def test_zero_learning_rate_start_moves_only_learning_rates():
    """With every value at 0 (the FDS start), momentum and weight-decay tangents stay zero."""
    problem = tiny_problem()
    from hpo.core.schedule import Schedule

    zero = Schedule({"lr": torch.zeros(3, dtype=DT), "momentum": torch.zeros(1, dtype=DT), "wd": torch.zeros(1, dtype=DT)})
    res = run_inner(ForwardManualBackend(), problem, zero)
    assert float(res.hypergrad["momentum"][0]) == 0.0
    assert float(res.hypergrad["wd"][0]) == 0.0
    assert bool((res.hypergrad["lr"] != 0).all())


def test_tangent_memory_does_not_grow_with_horizon():
    sched = sgd_schedule()
    shapes = []
    for horizon in (6, 24):
        problem = tiny_problem(horizon=horizon)
        backend = ForwardManualBackend()
        state = backend.init(problem, sched)
        for t, batch in problem.batches():
            state = backend.step(problem, sched, state, t, batch)
        shapes.append({k: tuple(v.shape) for k, v in state.d_params.items()})
    assert shapes[0] == shapes[1]
    assert shapes[0]["0.weight"] == (7, 6, 5)  # 3 + 2 + 2 columns


def test_clamps_are_off_by_default_and_change_the_result_when_on(references):
    problem, sched, rev, _ = references
    from dataclasses import replace

    clipped = run_inner(ForwardManualBackend(), replace(problem, hz_clip=1e-4), sched).hypergrad
    assert max_rel_err(clipped, rev) > 1e-3


def test_column_layout_orders_columns_by_start_step():
    layout = ColumnLayout.build({"lr": 3, "momentum": 2, "wd": 1}, horizon=12)
    assert layout.columns == (("lr", 0), ("momentum", 0), ("wd", 0), ("lr", 1), ("momentum", 1), ("lr", 2))
    assert layout.starts == (0, 0, 0, 4, 6, 8)
    assert [layout.started(t) for t in (0, 3, 4, 5, 6, 8, 11)] == [3, 3, 4, 4, 5, 6, 6]
    d = layout.direct(6, DT, torch.device("cpu"))
    assert d["lr"].tolist() == [0, 0, 0, 1, 0]
    assert d["momentum"].tolist() == [0, 0, 0, 0, 1]
    assert d["wd"].tolist() == [0, 0, 1, 0, 0]
    per_col = torch.arange(6, dtype=DT)
    assert {k: v.tolist() for k, v in layout.to_types(per_col).items()} == {
        "lr": [0.0, 3.0, 5.0], "momentum": [1.0, 4.0], "wd": [2.0]}


def test_only_started_columns_are_stored():
    """Tangent rows are appended as their segments start; a segment that never starts has zero hypergradient."""
    problem = tiny_problem(horizon=12)
    sched = sgd_schedule()
    backend = ForwardManualBackend()
    state = backend.init(problem, sched)
    rows = []
    for t, batch in problem.batches():
        state = backend.step(problem, sched, state, t, batch)
        rows.append(state.d_params["0.weight"].shape[0])
    assert rows == [3, 3, 3, 3, 4, 4, 6, 6, 7, 7, 7, 7]  # column starts 0, 0, 0, 4, 6, 6, 8 (3/2/2 over 12)

    short = tiny_problem(horizon=2)  # lr segment 2 would start at step ceil(2 * 2 / 3) = 2: never
    res = run_inner(ForwardManualBackend(), short, sched)
    rev = reverse_hypergradient(short, sched.values)
    assert float(res.hypergrad["lr"][2]) == 0.0 and float(rev["lr"][2]) == 0.0
    assert torch.allclose(res.hypergrad["lr"][:2], rev["lr"][:2], rtol=1e-10, atol=0)
