"""Loss hyperparameters: every exact backend equals the reference unroll and central finite differences.

For each built-in kind (per-example and per-class weights, L2 per layer, label smoothing, input noise), with SGD
and Adam, on a classification and a regression problem, in float64: the hypergradient of every
value, the optimizer's and the loss's, from ``reverse-checkpointed``, ``forward-jvp`` and
``reverse-truncated`` with its full window equals reverse-mode differentiation of the unrolled loop
(:func:`hpo.checking.unroll.reverse_hypergradient`), which equals central finite differences.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.greedy import GreedyBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.backends.reverse_truncated import ReverseTruncatedBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.data import Indexed
from hpo.core.schedule import Schedule
from hpo.optimizers import SGDMomentum
from hpo.optimizers.adam import Adam
from hpo.optimizers.grouped import group_counts
from hpo.optimizers.loss_hypers import WithLossHypers
from hpo.search.inner_runs import FDSConfig, make_problem, rule_with_groups
from hpo.tasks.base import Metric, Problem, classification_task
from hpo.tasks.loss_hypers import with_loss_hypers

DT = torch.float64


def classifier() -> Problem:
    """24 training and 12 test points in 3 classes, a 4-5-3 tanh MLP."""
    gen = torch.Generator().manual_seed(3)
    x, xt = torch.randn(24, 4, generator=gen), torch.randn(12, 4, generator=gen)
    y, yt = torch.randint(0, 3, (24,), generator=gen), torch.randint(0, 3, (12,), generator=gen)
    return classification_task("tiny-cls", x, y, xt, yt, lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(),
                                                                                 nn.Linear(5, 3)), batch_size=6)


def regression() -> Problem:
    """24 training and 12 test points of a noisy linear target, a 4-5-1 tanh MLP, squared error per example."""
    gen = torch.Generator().manual_seed(4)
    x, xt = torch.randn(24, 4, generator=gen), torch.randn(12, 4, generator=gen)
    w = torch.randn(4, generator=gen)
    y, yt = x @ w + 0.1 * torch.randn(24, generator=gen), xt @ w

    def per_example(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (model(b[0]).squeeze(-1) - b[1]) ** 2

    def mse(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return per_example(model, b).mean()

    return Problem("tiny-reg", lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)), mse,
                   (x, y), (xt, yt), metrics={"mse": Metric(mse, "lower")}, batch_size=6, example_loss=per_example)


#: (problem, kind): every built-in kind on the classifier, the ones a regression takes on it.
CASES = [(classifier, k) for k in ("example_weight", "class_weight", "l2", "label_smoothing", "input_noise")] + \
        [(regression, k) for k in ("example_weight", "l2", "input_noise")]

RULES = {"sgd": SGDMomentum, "adam": Adam}

#: The optimizer's values: well inside their ranges, where every derivative is non-zero.
RULE_VALUES = {"sgd": {"lr": 0.2, "momentum": 0.5, "wd": 1e-3}, "adam": {"lr": 0.02, "beta1": 0.8, "beta2": 0.9, "wd": 1e-3}}


def setup(make: type | object, kind: str, rule_name: str, horizon: int = 8):
    """The inner problem and a schedule with every value away from its start (so no derivative vanishes)."""
    task = with_loss_hypers(make().to(DT), (kind,))  # type: ignore[operator]
    config = FDSConfig(inner_steps=(horizon,), dtype=DT, val_frac=0.25, seed=1)
    rule = rule_with_groups(task, RULES[rule_name](), config)
    assert isinstance(rule, WithLossHypers)
    problem = make_problem(task, rule, config, 0)
    gen = torch.Generator().manual_seed(9)
    sched = Schedule.initial(rule, counts={"label_smoothing": 2, "input_noise": 2}, groups=group_counts(rule))
    values = {}
    for name, v in sched.values.items():
        if name in RULE_VALUES[rule_name]:
            values[name] = torch.full_like(v, RULE_VALUES[rule_name][name])
        elif name == "example_weight":
            values[name] = 0.3 + 0.7 * torch.rand(v.shape, generator=gen, dtype=DT)
        elif name == "class_weight":
            values[name] = 0.5 + torch.rand(v.shape, generator=gen, dtype=DT)
        elif name == "l2":
            values[name] = 0.01 + 0.02 * torch.rand(v.shape, generator=gen, dtype=DT)
        elif name == "input_noise":
            values[name] = torch.tensor([0.3, 0.5], dtype=DT)
        else:
            values[name] = torch.tensor([0.1, 0.2], dtype=DT)
    return problem, values


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("make,kind", CASES, ids=[f"{m.__name__}-{k}" for m, k in CASES])
def test_exact_backends_equal_the_unroll_and_finite_differences(make: object, kind: str, rule_name: str) -> None:
    problem, values = setup(make, kind, rule_name)
    ref = reverse_hypergradient(problem, values)
    fd = finite_difference_hypergradient(problem, values)
    for name in values:
        assert torch.allclose(ref[name], fd[name], rtol=1e-5, atol=1e-8), name
    assert ref[kind].abs().max() > 1e-6  # the loss's values do move the validation loss
    for backend in (ReverseCheckpointedBackend(every=3), ReverseCheckpointedBackend(every=1), ForwardJvpBackend(),
                    ReverseTruncatedBackend()):
        got = run_inner(backend, problem, Schedule(values)).hypergrad
        for name in values:
            assert torch.allclose(got[name], ref[name], rtol=1e-9, atol=1e-13), (backend.name, name)


def test_per_example_weights_of_rows_never_drawn_get_no_hypergradient() -> None:
    problem, values = setup(classifier, "example_weight", "sgd", horizon=2)
    drawn = torch.unique(problem.example_ids[problem.order[:2].flatten()])
    got = run_inner(ReverseCheckpointedBackend(), problem, Schedule(values)).hypergrad["example_weight"]
    unseen = torch.ones(got.shape[0], dtype=torch.bool)
    unseen[drawn] = False
    assert got.shape == (24 - 6, 1) or got.shape[0] == values["example_weight"].shape[0]
    assert bool((got[unseen] == 0).all()) and bool((got[~unseen] != 0).all())


def test_greedy_per_example_weights_are_ren_et_al_one_step_reweighting() -> None:
    """One step of plain SGD: :math:`h_i = -\\eta\\, \\nabla L^{B}_{val}(\\theta_1)^\\top \\nabla \\ell_i(\\theta_0) / B`."""
    problem, values = setup(classifier, "example_weight", "sgd", horizon=1)
    values = {**values, "momentum": torch.zeros_like(values["momentum"]), "wd": torch.zeros_like(values["wd"])}
    got = run_inner(GreedyBackend(), problem, Schedule(values)).hypergrad["example_weight"][:, 0]
    batch = problem.batch(0)
    assert isinstance(batch, Indexed)
    rows = batch.index
    w = values["example_weight"][:, 0]
    lr = float(values["lr"][0])
    p0 = problem.params

    def example_grad(i: int) -> dict[str, torch.Tensor]:
        one = Indexed(tuple(t[i:i + 1] for t in batch.data), rows[i:i + 1])
        return torch.func.grad(lambda p: problem.loss_fn(p, problem.buffers, one, values_at(values))[0])(p0)

    def values_at(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: x[..., 0] for k, x in v.items()}

    grads = [example_grad(i) for i in range(len(rows))]  # each is w_i * grad l_i (a batch of one)
    b = len(rows)
    p1 = {k: p0[k] - lr * sum(g[k] for g in grads) / b for k in p0}
    from hpo.backends.greedy import validation_batches
    from hpo.core.data import EVAL_SEED
    val_batch = problem.val.fetch(validation_batches(problem)[0], EVAL_SEED, 0)
    g_val = torch.func.grad(lambda p: problem.eval_fn(p, problem.buffers, val_batch, False)[0])(p1)
    for i, row in enumerate(rows.tolist()):
        expected = -lr * sum((g_val[k] * grads[i][k]).sum() for k in p0) / (b * w[row])
        assert torch.allclose(got[row], expected, rtol=1e-9, atol=1e-14)


def test_forward_manual_refuses_loss_hyperparameters_in_one_line() -> None:
    problem, _ = setup(classifier, "label_smoothing", "sgd")
    with pytest.raises(ValueError, match="^the loss hyperparameters label_smoothing enter the gradient.*forward-jvp"):
        ForwardManualBackend().check_rule(problem.rule)
