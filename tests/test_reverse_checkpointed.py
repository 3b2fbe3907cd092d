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

from hpo.backends.forward import ForwardJvpBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend, checkpoint_interval
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
    assert checkpointed(problem, sched).info == {"every": 3, "checkpoints": 4}  # round(sqrt(12))
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
    backend = ReverseCheckpointedBackend()
    state = backend.init(problem, sched)
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
