"""reverse-checkpointed == forward-jvp == full reverse-mode unroll == central finite differences (float64).

For SGD-momentum, Adam, AdamW and the RMSprop example rule; an MLP, a BatchNorm MLP, a small conv
net on augmented images and an MLP with dropout; every checkpoint interval from 1 to T; and the
failure cases (divergence, hz_clip, a bad interval).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hpo.backends import reverse_checkpointed
from hpo.backends.forward import ForwardJvpBackend
from hpo.backends.memory_budget import (
    ALL_STORED,
    OVER_BUDGET,
    RUN_TAPED,
    SPACED,
    SQRT,
    TAPED,
    parse_bytes,
    plan_checkpoints,
)
from hpo.backends.reverse_checkpointed import (
    ReverseCheckpointedBackend,
    adjoint_step,
    autograd_adjoint_step,
    autograd_plain_step,
    checkpoint_interval,
    fuse_segments,
    plain_step,
)
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import HypergradResult, run_inner
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers import Adam, AdamW, SGDMomentum, UpdateRule
from hpo.tasks.augment import Augment
from tests import conftest as helpers

F64 = torch.float64
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rmsprop_rule.py"


def rmsprop() -> UpdateRule:
    """The RMSprop rule written outside the library, loaded from its file."""
    spec = importlib.util.spec_from_file_location("rmsprop_rule_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RMSprop()


def values(**kw: list[float]) -> dict[str, Tensor]:
    """float64 shared values, several per type."""
    return {k: torch.tensor(v, dtype=F64) for k, v in kw.items()}


RULES = {
    "sgd": (SGDMomentum, values(lr=[0.3, 0.2, 0.1], momentum=[0.5, 0.8], wd=[1e-2, 3e-2])),
    "adam": (Adam, values(lr=[0.03, 0.02, 0.01], beta1=[0.7, 0.85], beta2=[0.9, 0.97], wd=[1e-2, 3e-2])),
    "adamw": (AdamW, values(lr=[0.03, 0.02, 0.01], beta1=[0.7, 0.85], beta2=[0.9, 0.97], wd=[0.1, 0.3])),
    "rmsprop": (rmsprop, values(lr=[0.03, 0.02, 0.01], alpha=[0.8, 0.95])),
}


def rel_err(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest ``||a[k] - b[k]|| / ||b[k]||`` over the types (each type on its own)."""
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def checkpointed(problem: InnerProblem, sched: Schedule, every: int | None = None) -> HypergradResult:
    """A whole run of the checkpointed backend; it must finish and be finite."""
    res = run_inner(ReverseCheckpointedBackend(every), problem, sched)
    assert not res.diverged and res.steps == problem.horizon
    assert all(bool(torch.isfinite(h).all()) for h in res.hypergrad.values())
    return res


def assert_exact(problem: InnerProblem, sched: Schedule, fd: dict[str, Tensor] | None = None,
                 jvp: bool = True) -> dict[str, Tensor]:
    """Checkpointed == reference unroll (and forward-jvp) to 1e-10, == finite differences to 1e-6."""
    got = checkpointed(problem, sched).hypergrad
    rev = reverse_hypergradient(problem, sched.values)
    assert all(bool((rev[k] != 0).all()) for k in rev), "every shared value must matter"
    assert rel_err(got, rev) < 1e-10
    if jvp:
        assert rel_err(got, run_inner(ForwardJvpBackend(), problem, sched).hypergrad) < 1e-10
    if fd is not None:
        assert rel_err(got, fd) < 1e-6
    return got


@pytest.mark.parametrize("key", list(RULES))
def test_every_rule_equals_forward_reverse_and_finite_differences(key: str) -> None:
    make, vals = RULES[key]
    problem = helpers.tiny_problem(make(), horizon=8)
    fd = finite_difference_hypergradient(problem, vals, eps=1e-5)
    assert_exact(problem, Schedule(vals), fd)


def test_grad_clip_is_differentiated_as_the_clamp() -> None:
    problem = replace(helpers.tiny_problem(horizon=8), grad_clip=0.05)
    sched = Schedule(RULES["sgd"][1])
    got = assert_exact(problem, sched)
    unclipped = checkpointed(replace(problem, grad_clip=None), sched).hypergrad
    assert rel_err(got, unclipped) > 1e-3  # the clamp is active


def fixed_statistics(problem: InnerProblem, buffers: dict[str, Tensor]) -> InnerProblem:
    """The problem whose validation loss reads ``buffers`` (finite differences hold BatchNorm statistics fixed)."""
    eval_fn = problem.eval_fn
    return replace(problem, eval_fn=lambda p, b, batch, *a: eval_fn(p, buffers, batch, *a))


def test_batchnorm_statistics_replayed_not_differentiated() -> None:
    problem = helpers.tiny_task_problem(horizon=12, batchnorm=True)
    sched = helpers.tiny_schedule({"lr": 3, "momentum": 2, "wd": 2})
    backend = ReverseCheckpointedBackend()
    state = backend.init(problem, sched)
    for t, batch in problem.batches():
        state = backend.step(problem, sched, state, t, batch)
    buffers = backend.inner(state).buffers
    assert int(buffers["1.num_batches_tracked"]) == 12 and int(problem.buffers["1.num_batches_tracked"]) == 0
    assert not torch.equal(buffers["1.running_mean"], problem.buffers["1.running_mean"])
    fd = finite_difference_hypergradient(fixed_statistics(problem, buffers), sched.values, eps=1e-6)
    got = assert_exact(problem, sched, fd)
    for every in (1, 12):
        assert rel_err(checkpointed(problem, sched, every).hypergrad, got) < 1e-12


def image_problem(augment: Augment | None) -> InnerProblem:
    """A conv net on tiny float64 images ``(2, 5, 5)``, batch 6, 8 steps (two epochs)."""
    gen = torch.Generator().manual_seed(4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3)).to(F64)
    x = torch.randn(36, 2, 5, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (36,), generator=gen)
    return helpers.tensor_problem(net, SGDMomentum(), x[:24], y[:24], x[24:], y[24:], augment=augment,
                                  horizon=8, batch_size=6, seed=2)


def test_augmented_batches_are_replayed() -> None:
    problem = image_problem(Augment(pad=1, flip=True))
    sched = Schedule(values(lr=[0.2, 0.1, 0.05], momentum=[0.5, 0.7], wd=[1e-2, 2e-2]))
    x3, _ = problem.batch(3)
    assert not torch.equal(x3, problem.train.data[0][problem.order[3]])  # augmentation changes the batch
    fd = finite_difference_hypergradient(problem, sched.values, eps=1e-5)
    got = assert_exact(problem, sched, fd)
    plain = checkpointed(image_problem(None), sched).hypergrad
    assert rel_err(got, plain) > 1e-3


def test_every_checkpoint_interval_gives_the_same_hypergradient() -> None:
    problem = helpers.tiny_problem(horizon=12)
    sched = helpers.sgd_schedule()
    results = {k: checkpointed(problem, sched, k) for k in (1, 2, 3, 5, 12, 50)}
    assert {k: r.info["checkpoints"] for k, r in results.items()} == {1: 12, 2: 6, 3: 4, 5: 3, 12: 1, 50: 1}
    # no budget binds: the forward pass tapes the whole run, one "segment" of 12 steps
    assert checkpointed(problem, sched).info == {"every": 12, "checkpoints": 1, "regime": RUN_TAPED}
    results["run"] = checkpointed(problem, sched)
    for r in results.values():
        assert rel_err(r.hypergrad, results[3].hypergrad) < 1e-12


def test_default_interval_is_about_the_square_root_of_the_horizon() -> None:
    assert [checkpoint_interval(None, t) for t in (1, 2, 12, 100, 1000, 10_000)] == [1, 1, 3, 10, 32, 100]
    assert checkpoint_interval(7, 100) == 7


def dropout_problem() -> InnerProblem:
    """An MLP with dropout between its layers: each step draws masks from the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
    return helpers.tiny_problem(horizon=12, model=net)


def test_dropout_masks_are_replayed() -> None:
    problem = dropout_problem()
    sched = helpers.sgd_schedule()
    torch.manual_seed(123)
    fresh = torch.get_rng_state()
    ref = reverse_hypergradient(problem, sched.values)
    assert torch.equal(torch.get_rng_state(), fresh)  # the unroll leaves the global RNG as it was
    for every in (1, 5, None, 12):
        torch.manual_seed(123 + every if every else 0)  # masks are seeded per step: the global RNG is irrelevant
        before = torch.get_rng_state()
        res = checkpointed(problem, sched, every)
        assert rel_err(res.hypergrad, ref) < 1e-10
        assert torch.equal(torch.get_rng_state(), before)  # the run leaves the global RNG where it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Identity(), nn.Linear(8, 3))
    without = checkpointed(helpers.tiny_problem(horizon=12, model=plain), sched).hypergrad
    assert rel_err(without, ref) > 1e-3  # the masks matter


def test_huge_learning_rate_stops_early_with_no_hypergradient() -> None:
    problem = helpers.tiny_problem(horizon=12)
    sched = Schedule(values(lr=[1e100, 1e100, 1e100], momentum=[0.5], wd=[1.0]))
    res = run_inner(ReverseCheckpointedBackend(), problem, sched)
    assert res.diverged and res.steps < 12 and res.info["divergence"] == "loss"
    assert not any(bool(torch.isfinite(h).any()) for h in res.hypergrad.values())


def test_non_finite_adjoint_is_a_divergence() -> None:
    """lr = 1e200: the loss stays finite (tanh saturates) but the adjoint overflows."""
    problem = helpers.tiny_problem(horizon=12)
    sched = Schedule(values(lr=[1e200, 0.1, 0.1], momentum=[0.5], wd=[0.0]))
    res = run_inner(ReverseCheckpointedBackend(), problem, sched)
    assert res.steps == 12 and res.val_loss < float("inf")
    assert res.diverged and res.info["divergence"] == "adjoint" and res.info["diverged_at"] == 12
    assert not any(bool(torch.isfinite(h).any()) for h in res.hypergrad.values())


def test_hz_clip_and_a_bad_interval_are_refused() -> None:
    problem = replace(helpers.tiny_problem(), hz_clip=1.0)
    with pytest.raises(ValueError, match="^hz_clip: the reverse-checkpointed backend does not support it") as err:
        run_inner(ReverseCheckpointedBackend(), problem, helpers.sgd_schedule())
    assert isinstance(err.value, ConfigError) and err.value.field == "hz_clip" and "--" not in str(err.value)
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="^every: must be at least 1") as err:
            ReverseCheckpointedBackend(every=bad)
        assert err.value.field == "every" and isinstance(err.value, ValueError) and "--" not in str(err.value)


def test_memory_holds_one_checkpoint_per_interval() -> None:
    problem = helpers.tiny_problem(horizon=100, batch_size=4)
    sched = helpers.sgd_schedule()
    one = state_bytes(problem)
    backend = ReverseCheckpointedBackend(memory_budget=19 * one)  # S(10) = 10 + 9 states
    state = backend.init(problem, sched)
    assert state.plan.regime == SQRT and state.plan.bytes == 19 * one
    for t, batch in problem.batches():
        state = backend.step(problem, sched, state, t, batch)
    assert [c.t for c in state.checkpoints] == list(range(0, 100, 10))


def test_compiled_steps_give_the_same_hypergradient() -> None:
    """``compile="aot_eager"`` (a quick capture check of both step functions), dropout included."""
    problem = dropout_problem()
    sched = helpers.sgd_schedule()
    torch.manual_seed(7)
    eager = checkpointed(problem, sched).hypergrad
    torch.manual_seed(7)
    compiled = run_inner(ReverseCheckpointedBackend(compile="aot_eager"), problem, sched)
    assert not compiled.diverged
    assert rel_err(compiled.hypergrad, eager) < 1e-12


def taped_graph_bytes(problem: InnerProblem, sched: Schedule) -> int:
    """What the saved-tensor hooks count on taped step 0 of ``problem`` (the backend's measurement)."""
    backend = ReverseCheckpointedBackend()
    state = backend.step(problem, sched, backend.init(problem, sched), 0, problem.batch(0))
    return state.graph_bytes


def state_bytes(problem: InnerProblem) -> int:
    """Bytes of one stored state of ``problem`` as the backend counts them."""
    return ReverseCheckpointedBackend().state_bytes(problem, problem.rule.init(problem.params))


@pytest.mark.parametrize("states, every, regime", [(None, 25, RUN_TAPED), ("segment tapes", 5, TAPED),
                                                   ("no tape", 1, ALL_STORED), (25, 1, ALL_STORED),
                                                   (14, 2, SPACED), (9, 5, SQRT), (3, 5, OVER_BUDGET)])
def test_every_budget_regime_equals_the_reference_and_finite_differences(
        states: int | str | None, every: int, regime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole run taped, taped sqrt(T) segments, k = 1 (all stored), k = 2, k = sqrt(T) replayed
    and over budget: the reference unroll to 1e-13, central finite differences to 1e-6."""
    problem = helpers.tiny_problem(horizon=25)
    sched = helpers.sgd_schedule()
    one = state_bytes(problem)
    budget = states * one if isinstance(states, int) else None
    if states == "segment tapes":  # 5 checkpoints and 5 step graphs fit, 25 step graphs do not
        tape = int(reverse_checkpointed.TAPE_MARGIN * taped_graph_bytes(problem, sched))
        assert 5 * one + 5 * tape < one + 25 * tape
        budget = 5 * one + 5 * tape
    elif states is not None:  # a step's tape that fits no budget: the plans without taping
        monkeypatch.setattr(reverse_checkpointed, "TAPE_MARGIN", 10**9)
    backend = ReverseCheckpointedBackend(memory_budget=budget) if budget else ReverseCheckpointedBackend()
    if states == "no tape":
        backend.memory_budget = 10**7  # all 25 states fit, but no tape does
    res = run_inner(backend, problem, sched)
    assert (res.info["every"], res.info["regime"]) == (every, regime)
    rev = reverse_hypergradient(problem, sched.values)
    assert rel_err(res.hypergrad, rev) < 1e-13
    fd = finite_difference_hypergradient(problem, sched.values, eps=1e-5)
    assert rel_err(res.hypergrad, fd) < 1e-6


def test_k_equal_to_the_horizon_recomputes_everything_exactly() -> None:
    problem = helpers.tiny_problem(horizon=25)
    sched = helpers.sgd_schedule()
    res = run_inner(ReverseCheckpointedBackend(every=25), problem, sched)
    assert res.info["checkpoints"] == 1
    assert rel_err(res.hypergrad, reverse_hypergradient(problem, sched.values)) < 1e-13


@pytest.mark.parametrize("key", list(RULES))
@pytest.mark.parametrize("clip", [None, 0.05])
def test_autograd_steps_are_bit_identical_to_the_torch_func_steps(key: str, clip: float | None) -> None:
    """The eager fast path (``torch.autograd``) gives exactly the ``torch.func`` step and adjoint step."""
    make, vals = RULES[key]
    rule = make()
    problem = helpers.tiny_problem(rule, horizon=4)
    batch = problem.batch(0)
    gen = torch.Generator().manual_seed(3)
    params = problem.params
    state = {sk: {k: torch.rand(v.shape, generator=gen, dtype=v.dtype) for k, v in sv.items()}
             for sk, sv in rule.init(params).items()}
    hyper = {k: v[0] for k, v in vals.items()}
    args = (rule, problem.loss_fn, clip, params, problem.buffers, state, hyper, 1, batch)
    fast, ref = autograd_plain_step(*args), plain_step(*args)
    for a, b in [(fast.params, ref.params), (fast.grads, ref.grads), *zip(fast.opt_state.values(),
                                                                          ref.opt_state.values())]:
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert torch.equal(fast.loss, ref.loss)
    a_p = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    a_s = {sk: {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in sv.items()}
           for sk, sv in state.items()}
    got, want = autograd_adjoint_step(*args, a_p, a_s), adjoint_step(*args, a_p, a_s)
    assert all(torch.equal(got[0][k], want[0][k]) for k in want[0])
    assert all(torch.equal(got[1][sk][k], want[1][sk][k]) for sk in want[1] for k in want[1][sk])
    assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])


def test_the_eager_single_process_path_uses_autograd_and_curvature_rules_keep_torch_func() -> None:
    from hpo.optimizers import Sophia

    backend = ReverseCheckpointedBackend()
    assert backend.functions(None, SGDMomentum()).adjoint is autograd_adjoint_step
    assert backend.functions(None, Sophia()).adjoint is adjoint_step


@pytest.mark.parametrize("text, size", [("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000),
                                        ("1000000", 1_000_000), (4096, 4096), ("64 kib", 65536)])
def test_memory_budget_sizes(text: object, size: int) -> None:
    assert parse_bytes("memory_budget", text) == size
    assert ReverseCheckpointedBackend(memory_budget=text).memory_budget == size  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["banana", "12 parsecs", "-5MiB", "0", "", True, "0.1"])
def test_a_bad_memory_budget_is_one_line_naming_the_field(bad: object) -> None:
    with pytest.raises(ConfigError, match="^memory_budget: must be") as err:
        ReverseCheckpointedBackend(memory_budget=bad)  # type: ignore[arg-type]
    assert err.value.field == "memory_budget" and "\n" not in str(err.value)


def test_the_plan_takes_the_fewest_recomputations_the_budget_allows() -> None:
    assert [plan_checkpoints(100, 1, c).every for c in (100, 99, 51, 50, 19, 18)] == [1, 2, 2, 3, 10, 10]
    assert [plan_checkpoints(100, 1, c).regime for c in (100, 51, 19, 18)] == [ALL_STORED, SPACED, SQRT, OVER_BUDGET]
    assert plan_checkpoints(100, 1, None).every == 1
    # a taped segment of 10 steps: 10 checkpoints + 10 step graphs of 5 bytes
    assert plan_checkpoints(100, 1, 60, tape_bytes=5).regime == TAPED
    assert plan_checkpoints(100, 1, 59, tape_bytes=5).regime == SPACED  # S(2) = 51 states fit
    # the whole run: 1 state and 100 step graphs of 5 bytes
    assert (plan_checkpoints(100, 1, 501, tape_bytes=5).regime, plan_checkpoints(100, 1, 500, tape_bytes=5).regime) \
        == (RUN_TAPED, TAPED)
    assert plan_checkpoints(100, 1, None, tape_bytes=5).every == 100


@pytest.mark.parametrize("key", ["sgd", "adam"])
def test_taped_segments_equal_replayed_segments(key: str) -> None:
    """With room for a segment's graph the sweep tapes it (no separate replay); else it replays: same result."""
    make, vals = RULES[key]
    problem = helpers.tiny_problem(make(), horizon=25)
    sched = Schedule(vals)
    results = {}
    for budget in (10**9, 1):  # a segment's graph fits / nothing fits: the set interval, replayed
        backend = ReverseCheckpointedBackend(every=5, memory_budget=budget)
        state = backend.init(problem, sched)
        for t, batch in problem.batches():
            state = backend.step(problem, sched, state, t, batch)
        assert state.graph_bytes > 0
        results[fuse_segments(state)] = backend.hypergradient(problem, sched, state).hypergrad
    assert set(results) == {True, False}
    rev = reverse_hypergradient(problem, sched.values)
    assert rel_err(results[True], rev) < 1e-13 and rel_err(results[False], rev) < 1e-13


@pytest.mark.parametrize("key", ["sgd", "adam"])
def test_the_whole_run_taped_computes_each_step_once(key: str) -> None:
    """RUN_TAPED: the training loss is evaluated T times in all (the forward pass, nothing replayed);
    taped sqrt(T) segments evaluate it about 2T times.  Both equal the reference unroll."""
    make, vals = RULES[key]
    base = helpers.tiny_problem(make(), horizon=16)
    sched = Schedule(vals)
    calls = {"n": 0}

    def counting(*args: object) -> tuple[Tensor, dict[str, Tensor]]:
        calls["n"] += 1
        return base.loss_fn(*args)  # type: ignore[arg-type]

    problem = replace(base, loss_fn=counting)
    rev = reverse_hypergradient(base, sched.values)
    counts = {}
    for budget in (None, "segments"):
        backend = ReverseCheckpointedBackend()
        if budget == "segments":  # room for 4 checkpoints and a 4-step tape, not for 16 step graphs
            state = backend.step(problem, sched, backend.init(problem, sched), 0, problem.batch(0))
            backend.memory_budget = 4 * state_bytes(problem) + 4 * state.graph_bytes
        calls["n"] = 0
        res = run_inner(backend, problem, sched)
        counts[res.info["regime"]] = calls["n"]
        assert rel_err(res.hypergrad, rev) < 1e-13
    assert counts == {RUN_TAPED: 16, TAPED: 16 + 16}


@pytest.mark.parametrize("key", list(RULES))
def test_plain_train_step_is_train_step_bit_for_bit(key: str) -> None:
    """What search trials, retraining and online-greedy train with: torch.autograd, the same values as torch.func."""
    from hpo.core.step import plain_train_step, train_step

    make, vals = RULES[key]
    rule = make()
    problem = helpers.tiny_problem(rule, horizon=3)
    params, state = problem.params, rule.init(problem.params)
    ref_p, ref_s = params, state
    for t, batch in problem.batches():
        hyper = {k: v[0] for k, v in vals.items()}
        fast = plain_train_step(rule, problem.loss_fn, params, problem.buffers, state, hyper, t, batch, 0.5)
        ref = train_step(rule, problem.loss_fn, ref_p, problem.buffers, ref_s, hyper, t, batch, 0.5)
        assert all(torch.equal(fast.params[k], ref.params[k]) for k in ref.params)
        assert torch.equal(fast.loss, ref.loss) and not fast.params[next(iter(params))].requires_grad
        params, state, ref_p, ref_s = fast.params, fast.opt_state, ref.params, ref.opt_state
