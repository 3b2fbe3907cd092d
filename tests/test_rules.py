"""One table of every registered update rule, and the checks every rule must pass.

For each rule (all of ``BUILTIN_RULES`` plus the user-written example in ``docs/examples``):

* its specs are consistent (defaults in range, hand-picked values in range);
* it equals its ``torch.optim`` counterpart step for step (float64), with constant
  hyperparameters and with a schedule driven through :class:`ScheduleDriver`;
* the ``forward-jvp`` hypergradient equals the full reverse-mode unroll and central finite
  differences (float64), and equals ``forward-manual`` where the rule has a hand-derived tangent;
* a hand-derived tangent equals the one ``torch.func.jvp`` derives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor
from torch.func import jvp

from hpo.app.registry import BUILTIN_RULES, load_object, resolve_rule
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.cli import cli
from hpo.core.backend import run_inner
from hpo.core.schedule import Schedule, segment_index
from hpo.core.torch_scheduler import ScheduleDriver
from hpo.optimizers import Adam, Sophia, UpdateRule
from hpo.outer.base import OuterState
from hpo.outer.divergence import safe_direction
from hpo.outer.sign import SignDescent
from hpo.search.inner_runs import FDSConfig
from tests.conftest import tiny_problem

F64 = torch.float64
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rmsprop_rule.py"
EXAMPLE_SPEC = f"{EXAMPLE}:RMSprop"


def sophia_every_3() -> UpdateRule:
    """Sophia with its estimate refreshed every 3 steps (the default 10 would leave a tiny run one refresh)."""
    return Sophia(every=3)


@dataclass(frozen=True)
class RuleCase:
    """A rule, a constant setting, and a schedule (several segments per type) away from range edges."""

    key: str
    spec: str
    const: dict[str, float]
    schedule: dict[str, list[float]]
    #: Central-difference step; EXAdam's ``m^2 / (m^2 + eps)`` varies on the scale of sqrt(eps) and needs a smaller one.
    fd_eps: float = 1e-5

    def make(self) -> UpdateRule:
        """The rule, resolved as the CLI's ``--optimizer`` resolves it."""
        return resolve_rule(self.spec)

    def values(self) -> dict[str, Tensor]:
        """The schedule as float64 tensors."""
        return {k: torch.tensor(v, dtype=F64) for k, v in self.schedule.items()}


CASES = [
    RuleCase("sgd", "sgd", {"lr": 0.1, "momentum": 0.9, "wd": 1e-2},
             {"lr": [0.3, 0.2, 0.1], "momentum": [0.5, 0.8], "wd": [1e-2, 3e-2]}),
    RuleCase("adam", "adam", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.95, "wd": 1e-2},
             {"lr": [0.03, 0.02, 0.01], "beta1": [0.7, 0.85], "beta2": [0.9, 0.97], "wd": [1e-2, 3e-2]}),
    RuleCase("adamw", "adamw", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.95, "wd": 0.1},
             {"lr": [0.03, 0.02, 0.01], "beta1": [0.7, 0.85], "beta2": [0.9, 0.97], "wd": [0.1, 0.3]}),
    RuleCase("exadam", "exadam", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.95, "wd": 0.1},
             {"lr": [0.03, 0.02, 0.01], "beta1": [0.7, 0.85], "beta2": [0.9, 0.97], "wd": [0.1, 0.3]}, fd_eps=1e-6),
    RuleCase("sophia", "tests.test_rules:sophia_every_3", {"lr": 0.05, "beta1": 0.9, "beta2": 0.95, "rho": 0.05, "wd": 0.1},
             {"lr": [0.06, 0.04, 0.02], "beta1": [0.8, 0.9], "beta2": [0.9, 0.97], "rho": [0.05, 0.1],
              "wd": [0.1, 0.3]}),
    RuleCase("adahessian", "adahessian", {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "wd": 0.1},
             {"lr": [0.06, 0.04, 0.02], "beta1": [0.7, 0.85], "beta2": [0.9, 0.97], "wd": [0.1, 0.3]}),
    RuleCase("example-rmsprop", EXAMPLE_SPEC, {"lr": 1e-2, "alpha": 0.9},
             {"lr": [0.03, 0.02, 0.01], "alpha": [0.8, 0.95]}),
]
IDS = [c.key for c in CASES]
#: Built-in rules without a ``torch.optim`` class; tests/test_related_rules.py holds them to pytorch-optimizer's.
NO_TORCH_OPTIM = {"exadam", "sophia", "adahessian"}
HAND = [c for c in CASES if c.make().hand_tangent]


def rel_err(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``||a - b|| / ||b||`` over all entries of all types."""
    num = torch.cat([(a[k] - b[k]).flatten() for k in b]).norm()
    return float(num / torch.cat([b[k].flatten() for k in b]).norm())


def random_params(gen: torch.Generator) -> dict[str, Tensor]:
    """Two float64 tensors of different shapes."""
    return {"w": torch.randn(3, 4, generator=gen, dtype=F64), "b": torch.randn(4, generator=gen, dtype=F64)}


def test_table_covers_every_registered_rule() -> None:
    """Adding a built-in rule without a row here fails, so every rule is held to these checks."""
    names = {c.make().name for c in CASES}
    assert set(BUILTIN_RULES) <= names
    assert "rmsprop" in names
    for c in CASES:
        rule = c.make()
        assert set(c.const) == set(rule.hyper_names) == set(c.schedule)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_specs_are_consistent(case: RuleCase) -> None:
    """Defaults validate, hand-picked and test values lie inside the rule's ranges."""
    rule = case.make()
    FDSConfig(inner_steps=(50,)).validate(rule)
    Schedule.initial(rule).check(rule)
    assert rule.hand_picked is not None
    Schedule.constant(rule.hand_picked).check(rule)
    Schedule.constant(case.const).check(rule)
    Schedule.from_dict(case.schedule).check(rule)
    for s in rule.hyperparameters:
        assert s.lower <= s.init <= s.upper and s.step > 0 and s.count >= 1 and s.on_divergence in (-1, 0, 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hpo_optimizers_shows_the_rules_specs(case: RuleCase) -> None:
    """``hpo optimizers SPEC`` prints every hyperparameter's range and defaults from the rule."""
    result = CliRunner().invoke(cli, ["optimizers", case.spec])
    assert result.exit_code == 0, result.output
    rule = case.make()
    assert result.output.startswith(rule.name)
    for s in rule.hyperparameters:
        row = next(line.split() for line in result.output.splitlines() if line.split()[:1] == [s.name])
        assert " ".join(row[1:6]) == s.range_text() and float(row[6]) == s.init and float(row[7]) == s.step


def test_hpo_optimizers_unknown_name_is_one_line_error() -> None:
    """A bad name is one line on stderr and exit status 2."""
    result = CliRunner().invoke(cli, ["optimizers", "no-such-rule"])
    assert result.exit_code == 2 and "unknown optimizer 'no-such-rule'" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_divergence_moves_each_value_the_way_its_rule_says(case: RuleCase) -> None:
    """After a non-finite hypergradient each value moves by one step in its ``on_divergence`` direction."""
    rule = case.make()
    specs = {s.name: s for s in rule.hyperparameters}
    start = OuterState.start(case.values(), {s.name: s.step for s in rule.hyperparameters})
    nan = {k: torch.full_like(v, float("nan")) for k, v in start.values.items()}
    moved = SignDescent().update(start, safe_direction(nan, specs), specs)
    for name, s in specs.items():
        expected = s.clamp(start.values[name] + s.on_divergence * s.step)
        torch.testing.assert_close(moved.values[name], expected, rtol=0, atol=0)


def test_forward_manual_without_hand_tangent_is_one_line_error(tmp_path: Path) -> None:
    """A rule without ``tangent`` under ``--backend forward-manual``: one line, exit 2, before any work."""
    result = CliRunner().invoke(cli, ["run", "--optimizer", EXAMPLE_SPEC, "--backend", "forward-manual",
                                      "--logdir", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "'--backend': optimizer 'rmsprop' has no hand-derived tangent; use the forward-jvp backend" in result.output
    assert len(result.output.strip().splitlines()) == 1


TORCH_CASES = [c for c in CASES if c.key not in NO_TORCH_OPTIM]  # the others: tests/test_related_rules.py


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant", "scheduled"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c.key for c in TORCH_CASES])
def test_equals_torch_optim(case: RuleCase, scheduled: bool) -> None:
    """Step for step equal to ``torch.optim`` driven by the same (constant or stepped) schedule."""
    rule = case.make()
    steps = 8
    sched = Schedule(case.values()) if scheduled else Schedule.constant(case.const)
    gen = torch.Generator().manual_seed(1)
    params = random_params(gen)
    leaves = [p.clone().requires_grad_() for p in params.values()]
    opt = rule.torch_optimizer(leaves, sched.at(0, steps))
    assert opt is not None, f"{rule.name} has no torch.optim counterpart"
    driver = ScheduleDriver(opt, rule, sched, steps)
    state = rule.init(params)
    values = {k: v.to(F64) for k, v in sched.values.items()}
    for t in range(steps):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in params.items()}
        hyper = {k: v[segment_index(t, steps, v.numel())] for k, v in values.items()}
        params, state = rule.step(params, state, grads, hyper, t)
        driver.apply()
        for leaf, g in zip(leaves, grads.values()):
            leaf.grad = g.clone()
        opt.step()
        driver.advance()
        for leaf, (k, p) in zip(leaves, params.items()):
            torch.testing.assert_close(p, leaf.detach(), rtol=1e-12, atol=1e-14, msg=f"{rule.name} {k} step {t}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_jvp_equals_reverse_and_finite_differences(case: RuleCase) -> None:
    """forward-jvp == full reverse-mode unroll (1e-12) == central differences (1e-6), float64."""
    rule = case.make()
    problem = tiny_problem(rule, horizon=8)
    values = case.values()
    fwd = run_inner(ForwardJvpBackend(), problem, Schedule(values)).hypergrad
    rev = reverse_hypergradient(problem, values)
    fd = finite_difference_hypergradient(problem, values, eps=case.fd_eps)
    assert all(bool((rev[k] != 0).all()) for k in rev), "every shared value must matter"
    assert rel_err(fwd, rev) < 1e-12
    assert rel_err(fd, rev) < 1e-6
    for k in rev:  # every type on its own, not only the largest
        assert rel_err({k: fwd[k]}, {k: rev[k]}) < 1e-10


@pytest.mark.parametrize("case", HAND, ids=[c.key for c in HAND])
def test_forward_manual_equals_forward_jvp(case: RuleCase) -> None:
    """With a hand-derived tangent, forward-manual and forward-jvp agree to 1e-10 (float64)."""
    problem = tiny_problem(case.make(), horizon=8)
    sched = Schedule(case.values())
    manual = run_inner(ForwardManualBackend(), problem, sched).hypergrad
    derived = run_inner(ForwardJvpBackend(), problem, sched).hypergrad
    assert rel_err(manual, derived) < 1e-10


@pytest.mark.parametrize("t", [0, 5])
@pytest.mark.parametrize("case", HAND, ids=[c.key for c in HAND])
def test_hand_tangent_equals_derived(case: RuleCase, t: int) -> None:
    """``rule.tangent`` == ``torch.func.jvp`` of ``rule.step`` at a random point and direction."""
    rule = case.make()
    gen = torch.Generator().manual_seed(2)
    params = random_params(gen)
    state = rule.init(params)
    hyper = {k: torch.tensor(v, dtype=F64) for k, v in case.const.items()}
    for s in range(3):  # a state with non-zero moments
        params, state = rule.step(params, state, {k: torch.randn(v.shape, generator=gen, dtype=F64)
                                                  for k, v in params.items()}, hyper, s)
    grads = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in params.items()}

    def like(tree: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in tree.items()}

    tangents = (like(params), {sk: like(sv) for sk, sv in state.items()}, like(grads), like(hyper))
    hand = rule.tangent(params, state, grads, hyper, t, *tangents)
    _, derived = jvp(lambda p, s, g, h: rule.step(p, s, g, h, t), (params, state, grads, hyper), tangents)
    torch.testing.assert_close(hand, derived, rtol=1e-12, atol=1e-12)


def test_adam_tangent_is_finite_at_zero_gradients() -> None:
    """eps_root keeps Adam differentiable where the gradient (hence v) is exactly zero."""
    rule = Adam()
    params = {"w": torch.ones(3, dtype=F64)}
    zeros = {"w": torch.zeros(3, dtype=F64)}
    hyper = {"lr": torch.tensor(1e-2, dtype=F64), "beta1": torch.tensor(0.9, dtype=F64),
             "beta2": torch.tensor(0.999, dtype=F64), "wd": torch.tensor(0.0, dtype=F64)}
    d_hyper = {k: torch.tensor(1.0, dtype=F64) for k in hyper}
    tangents = (zeros, {"m": zeros, "v": zeros}, zeros, d_hyper)

    def tangent_of_step() -> dict[str, Tensor]:
        _, (d_params, _) = jvp(lambda p, s, g, h: rule.step(p, s, g, h, 0),
                               (params, rule.init(params), zeros, hyper), tangents)
        return d_params

    assert bool(torch.isfinite(tangent_of_step()["w"]).all())
    rule.eps_root = 0.0  # the hazard eps_root removes: d sqrt(v) at v = 0 is inf, times 0 is nan
    assert bool(torch.isnan(tangent_of_step()["w"]).all())


def test_example_rule_is_short_and_loads_by_path() -> None:
    """The worked example is a file outside the library, under 25 lines, loaded as file.py:attr."""
    assert len(EXAMPLE.read_text().splitlines()) < 25
    cls = load_object(EXAMPLE_SPEC)
    assert isinstance(cls, type) and issubclass(cls, UpdateRule)
    assert cls.__module__.split(".")[0] not in {"optimizers", "hpo", "backends", "tasks"}


def test_hpo_run_learns_the_example_rule(tmp_path: Path) -> None:
    """``hpo run --optimizer docs/examples/rmsprop_rule.py:RMSprop`` learns its schedule end to end."""
    logdir = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", "--optimizer", EXAMPLE_SPEC, "--backend", "forward-jvp", "--samples", "500",
        "--outer-steps", "2", "--inner-steps", "8", "--retrain-steps", "8", "--device", "cpu",
        "--logdir", str(logdir), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    out = json.loads((logdir / "schedule.json").read_text())
    assert out["optimizer"] == "rmsprop" and len(out["history"]) == 2
    lr = out["schedule"]["lr"]
    assert len(lr) == 4 and all(x > 0 for x in lr), lr  # every lr moved up from its init 0
    assert all(math.isfinite(x) for h in out["history"] for x in h["hypergrad"]["lr"])
    assert "learned schedule" in result.output

