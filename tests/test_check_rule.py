"""The rule checker (``hpo.checking.check_rule``, ``hpo check-rule``) and the tiny problem it runs on (``hpo.checking.tiny``).

Correct rules (the built-ins and the user-written RMSprop example) pass with their error figures on
one line per hyperparameter; rules that cut a tangent, carry a wrong hand tangent or raise fail on
the hyperparameter at fault with the likely cause, never with a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hpo.app.registry import BUILTIN_RULES, resolve_rule
from hpo.checking.check_rule import check_rule, fd_step, rel_err
from hpo.checking.tiny import tiny_problem, tiny_schedule
from hpo.cli.check_rule import check_rule_command
from hpo.optimizers import SGDMomentum

EXAMPLE_SPEC = f"{Path(__file__).resolve().parents[1] / 'docs' / 'examples' / 'rmsprop_rule.py'}:RMSprop"
SPECS = [*BUILTIN_RULES, EXAMPLE_SPEC]
IDS = [*BUILTIN_RULES, "example-rmsprop"]
FIGURE = r"\d\.\de[+-]\d\d"
SHORT = 6  # inner steps for the failing rules: enough for every segment, quick


class _Replaced(SGDMomentum):
    """SGD-momentum that runs ``step`` with ``hyper["lr"]`` replaced by ``use_lr(hyper["lr"])``."""

    hand_tangent = False

    def use_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """The learning rate the step actually uses."""
        raise NotImplementedError

    def step(self, params, state, grads, hyper, t):
        """SGD-momentum with the replaced learning rate."""
        return super().step(params, state, grads, {**hyper, "lr": self.use_lr(hyper["lr"])}, t)


class FloatLr(_Replaced):
    """Reads lr with ``float()``: the tangent of lr is cut."""

    def use_lr(self, lr):
        """A new tensor made from a Python float."""
        return torch.tensor(float(lr), dtype=torch.float64)


class ItemLr(_Replaced):
    """Reads lr with ``.item()``."""

    def use_lr(self, lr):
        """A Python float: ``params - lr.item() * v``."""
        return lr.item()


class SignLr(_Replaced):
    """Uses only the sign of lr: a zero derivative, and no effect at all near positive values."""

    def use_lr(self, lr):
        """``0.1 sign(lr)``."""
        return 0.1 * torch.sign(lr)


class HalfDetachedLr(_Replaced):
    """``lr * lr.detach() / 0.1``: the derived tangent is half the true one (both modes agree)."""

    def use_lr(self, lr):
        """Right value at lr = 0.1, half the derivative."""
        return lr * lr.detach() / 0.1


class NumpyLr(_Replaced):
    """Reads lr through ``.numpy()``: ``torch.func.jvp`` raises."""

    def use_lr(self, lr):
        """A tensor rebuilt from a NumPy array."""
        return torch.as_tensor(lr.detach().numpy())


class ForgetsDlr(SGDMomentum):
    """A hand tangent without the ``- dlr v_new`` term: wrong in lr only."""

    def tangent(self, params, state, grads, hyper, t, d_params, d_state, d_grads, d_hyper):
        """SGD's tangent with ``d_hyper["lr"]`` ignored."""
        return super().tangent(params, state, grads, hyper, t, d_params, d_state, d_grads,
                               {**d_hyper, "lr": torch.zeros_like(d_hyper["lr"])})


class RaisesAtStep3(SGDMomentum):
    """``step`` raises a plain error at inner step 3."""

    def step(self, params, state, grads, hyper, t):
        """Fails at ``t == 3``."""
        if t == 3:
            raise KeyError("velocity")
        return super().step(params, state, grads, hyper, t)


def lines_of(report) -> dict[str, str]:
    """The report's lines by their first word."""
    return {line.split()[0]: line for line in report.lines()}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_correct_rules_pass_with_their_figures(spec: str) -> None:
    """Built-in rules and the RMSprop example: every type ok, jvp == reverse == finite differences."""
    rule = resolve_rule(spec)
    report = check_rule(rule)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(rule.hyper_names)
    lines = report.lines()
    assert len(lines) == len(rule.hyper_names)
    for check, line in zip(report.checks, lines):
        assert check.ok and check.reverse_err < 1e-12 and check.fd_err < 1e-7
        pattern = rf"^{check.name} +ok +jvp vs reverse {FIGURE}, vs finite differences {FIGURE}"
        if rule.curvature is not None:  # also the checkpointed sweep, whose replay redraws the probes
            pattern += rf", checkpointed vs reverse {FIGURE}"
        if rule.hand_tangent:
            assert check.hand_err < 1e-12
            pattern += rf", hand tangent vs jvp {FIGURE}$"
        else:
            assert check.hand_err is None
            pattern += "$"
        assert re.match(pattern, line), line
        assert f"{check.reverse_err:.1e}" in line and f"{check.fd_err:.1e}" in line


def test_float_of_a_hyperparameter_fails_naming_float_and_item() -> None:
    """``float(hyper["lr"])``: lr's derived hypergradient is exactly zero; momentum and wd still pass."""
    report = check_rule(FloatLr(), horizon=SHORT)
    lines = lines_of(report)
    assert not report.ok and list(lines) == ["lr", "momentum", "wd"]
    assert lines["lr"].startswith("lr        FAIL  derived tangent is exactly zero but finite differences give ")
    assert 'float(hyper["lr"])' in lines["lr"] and ".item()" in lines["lr"]
    assert report.checks[1].ok and report.checks[2].ok


def test_item_of_a_hyperparameter_fails() -> None:
    """``.item()`` cuts the tangent as ``float()`` does."""
    report = check_rule(ItemLr(), horizon=SHORT)
    lr = report.checks[0]
    assert not lr.ok and "exactly zero" in lr.message and ".item()" in lr.message
    fd = float(re.search(r"finite differences give (\S+):", lr.message).group(1))
    assert abs(fd) > 1e-3  # the loss does depend on lr
    assert [c.ok for c in report.checks] == [False, True, True]


def test_sign_of_a_hyperparameter_has_no_effect() -> None:
    """``sign(lr)``: zero by every method, and the message names sign()."""
    report = check_rule(SignLr(), horizon=SHORT)
    lr = report.checks[0]
    assert not lr.ok and lr.message.startswith("hypergradient is exactly zero by every method")
    assert "sign()" in lr.message and "no effect" in lr.message
    assert [c.ok for c in report.checks] == [False, True, True]


def test_partly_cut_tangent_fails_against_finite_differences() -> None:
    """``lr * lr.detach()``: jvp and reverse agree with each other, not with the loss."""
    report = check_rule(HalfDetachedLr(), horizon=SHORT)
    lr = report.checks[0]
    assert not lr.ok and lr.reverse_err < 1e-12 and 0.1 < lr.fd_err < 1
    assert "vs finite differences" in lr.message and "(reverse agrees)" in lr.message and ".detach()" in lr.message


def test_jvp_that_raises_is_a_fail_line_naming_the_cause() -> None:
    """``torch.func.jvp`` raising inside the rule: FAIL lines, no traceback."""
    report = check_rule(NumpyLr(), horizon=SHORT)
    assert not report.ok
    for c in report.checks:
        assert not c.ok and c.message.startswith("forward-jvp raises RuntimeError: ")
        assert "float(), .item()" in c.message


def test_wrong_hand_tangent_fails_hand_check_of_that_type() -> None:
    """A hand tangent missing its lr term fails lr's hand check; momentum and wd pass all three checks."""
    report = check_rule(ForgetsDlr(), horizon=SHORT)
    lr, mu, wd = report.checks
    assert not lr.ok and lr.message.startswith("hand tangent vs jvp ") and lr.hand_err == pytest.approx(1.0)
    assert lr.reverse_err < 1e-12 and lr.fd_err < 1e-7  # the derived tangent itself is right
    assert mu.ok and wd.ok and mu.hand_err < 1e-12 and wd.hand_err < 1e-12


def test_step_that_raises_is_one_fail_line() -> None:
    """A step that raises: one line with the exception's type, message and the step."""
    report = check_rule(RaisesAtStep3(), horizon=SHORT)
    assert not report.ok
    assert report.lines() == ["step      FAIL  rule.step raises KeyError: 'velocity' (inner step 3)"]


class Explodes(SGDMomentum):
    """A learning rate scaled by 1e200: the tiny run itself diverges."""

    hand_tangent = False

    def step(self, params, state, grads, hyper, t):
        """SGD-momentum at an absurd learning rate."""
        return super().step(params, state, grads, {**hyper, "lr": hyper["lr"] * 1e200}, t)


def test_diverging_run_is_one_fail_line() -> None:
    """A rule whose plain run gives a non-finite loss: one line naming the values."""
    report = check_rule(Explodes(), horizon=SHORT)
    assert len(report.checks) == 1 and not report.ok
    assert report.lines()[0].startswith("step      FAIL  the tiny run diverges (validation loss nan) at lr=[0.1, 0.2, 0.05]")


def test_rule_class_is_instantiated_and_schedule_can_be_given() -> None:
    """``check_rule(SGDMomentum, schedule=...)`` checks that schedule."""
    from hpo.core.schedule import Schedule

    sched = Schedule.constant({"lr": 0.3, "momentum": 0.9, "wd": 1e-2}, counts={"lr": 2})
    report = check_rule(SGDMomentum, horizon=SHORT, schedule=sched)
    assert report.ok and report.rule == "sgd"
    with pytest.raises(ValueError, match="out of range"):
        check_rule(SGDMomentum(), schedule=Schedule.constant({"lr": -1.0, "momentum": 0.5, "wd": 0.0}))


def test_rel_err_and_fd_step() -> None:
    """``||a - b|| / ||b||`` with its zero cases; the step keeps x +- 2 eps inside the range."""
    assert rel_err(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])) == pytest.approx(1 / 18 ** 0.5)
    assert rel_err(torch.zeros(2), torch.zeros(2)) == 0.0
    assert rel_err(torch.ones(2), torch.zeros(2)) == float("inf")
    momentum = SGDMomentum().spec("momentum")
    assert fd_step(momentum, 0.8) == pytest.approx(1e-3 * (0.999 - 0.8))
    assert fd_step(SGDMomentum().spec("lr"), 0.05) == pytest.approx(5e-5)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_tiny_schedule_is_inside_every_range(spec: str) -> None:
    """2-3 distinct values per type, strictly inside the spec's range."""
    rule = resolve_rule(spec)
    sched = tiny_schedule(rule)
    sched.check(rule)
    for s in rule.hyperparameters:
        v = sched.values[s.name].tolist()
        assert len(v) == (3 if s.count > 1 else 2) and len(set(v)) == len(v)
        assert all(s.lower < x < s.upper for x in v)


def test_tiny_schedule_values() -> None:
    """SGD gets lr 0.05..0.2 around its hand-picked 0.1, momentum 0.5/0.8; Adam's lr is around 1e-3."""
    assert tiny_schedule(SGDMomentum()).to_dict() == {"lr": [0.1, 0.2, 0.05], "momentum": [0.5, 0.8],
                                                      "wd": [0.0005, 0.001]}
    adam = tiny_schedule(resolve_rule("adam")).to_dict()
    assert adam["lr"] == [1e-3, 2e-3, 5e-4] and adam["beta1"] == adam["beta2"] == [0.5, 0.8]


def test_tiny_problem_leaves_the_global_rng_alone() -> None:
    """Same weights as ``nn.Sequential`` after ``torch.manual_seed(0)``, without touching the global RNG."""
    before = torch.random.get_rng_state()
    problem = tiny_problem(SGDMomentum())
    assert torch.equal(before, torch.random.get_rng_state())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(torch.float64)
    assert list(problem.params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for k, v in model.named_parameters():
        assert torch.equal(problem.params[k], v.detach()) and v.dtype == torch.float64
    assert len(problem.train) == 40 and len(problem.val) == 20 and problem.horizon == 12
    assert torch.equal(problem.train.data[0], tiny_problem(SGDMomentum(), horizon=3).train.data[0])


def test_cli_passes_builtin_rule() -> None:
    """``hpo check-rule sgd``: one ok line per hyperparameter, exit status 0."""
    result = CliRunner().invoke(check_rule_command, ["sgd", "--horizon", str(SHORT)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["lr", "ok"], ["momentum", "ok"], ["wd", "ok"]]
    assert all("hand tangent vs jvp" in ln for ln in lines)


def test_cli_fails_a_cut_rule_from_a_file(tmp_path: Path) -> None:
    """``hpo check-rule cut.py:CutSGD``: the FAIL line names the cause, exit status 1."""
    path = tmp_path / "cut.py"
    path.write_text(
        "import torch\nfrom hpo.optimizers import SGDMomentum\n\n\n"
        "class CutSGD(SGDMomentum):\n    hand_tangent = False\n\n"
        "    def step(self, params, state, grads, hyper, t):\n"
        "        lr = torch.tensor(float(hyper['lr']), dtype=torch.float64)\n"
        "        return super().step(params, state, grads, {**hyper, 'lr': lr}, t)\n")
    result = CliRunner().invoke(check_rule_command, [f"{path}:CutSGD", "--horizon", str(SHORT)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and lines[0].startswith("lr        FAIL  derived tangent is exactly zero")
    assert "float(" in lines[0] and lines[1].split()[:2] == ["momentum", "ok"]


@pytest.mark.parametrize("spec, message", [
    ("no-such-rule", "unknown optimizer 'no-such-rule'"),
    ("missing.py:Rule", "no such file: missing.py"),
    ("hpo.checking.tiny:tiny_data", "not a UpdateRule"),
])
def test_cli_unloadable_spec_is_a_usage_error(spec: str, message: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An unloadable SPEC raises ``click.BadParameter`` naming SPEC: exit status 2."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(click.BadParameter) as info:
        check_rule_command.main([spec], standalone_mode=False)
    assert info.value.param_hint == "SPEC"
    result = CliRunner().invoke(check_rule_command, [spec])
    assert result.exit_code == 2 and message in result.output


def test_registered_command_gives_one_line_errors() -> None:
    """Once ``hpo check-rule`` is registered on the group: a bad SPEC is one line and exit 2."""
    from hpo.cli import cli

    if "check-rule" not in cli.commands:
        pytest.skip("check-rule is not registered on the hpo group yet")
    result = CliRunner().invoke(cli, ["check-rule", "no-such-rule"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "unknown optimizer 'no-such-rule'" in result.output

