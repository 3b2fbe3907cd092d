"""Every outer optimizer of the registry, held to the same contract by one parametrized table (as optax
tests its optimizers), and Adam against a hand-computed two-step update."""

from __future__ import annotations

import pytest
import torch

from hpo import ConfigError, RunConfig
from hpo.app.checkpoint import state_from_dict
from hpo.app.config import legacy_outer
from hpo.app.registry import OUTER_OPTIMIZERS, make_outer
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.adam import Adam
from hpo.outer.base import OuterState
from hpo.outer.rprop import Rprop
from hpo.outer.sign import SignDescent
from hpo.outer.sign_magnitude import SignMagnitude

F64 = torch.float64
SPECS = {s.name: s for s in SGDMomentum().hyperparameters}


def t(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def start(kinds: dict[str, str] | None = None) -> OuterState:
    return OuterState.start({"lr": t(0.5, 0.2), "momentum": t(0.5), "wd": t(1e-3)},
                            {"lr": 0.1, "momentum": 0.1, "wd": 3e-4}, kinds)


@pytest.mark.parametrize("name", list(OUTER_OPTIMIZERS))
def test_the_first_step_moves_each_value_against_its_hypergradient(name: str) -> None:
    new = make_outer(name).update(start(), {"lr": t(2.0, -3.0), "momentum": t(-1.0), "wd": t(0.0)}, SPECS)
    assert new.values["lr"][0] < 0.5 and new.values["lr"][1] > 0.2
    assert new.values["momentum"][0] > 0.5
    assert new.values["wd"].tolist() == [1e-3], "a zero hypergradient moves nothing"
    assert new.k == 1


@pytest.mark.parametrize("name", list(OUTER_OPTIMIZERS))
def test_values_are_projected_onto_their_ranges(name: str) -> None:
    st = start()
    for _ in range(6):
        st = make_outer(name).update(st, {"lr": t(1e6, 1e6), "momentum": t(-1e6), "wd": t(1e6)}, SPECS)
    assert st.values["lr"].tolist() == [0.0, 0.0] and st.values["wd"].tolist() == [0.0]
    assert 0.0 <= float(st.values["momentum"][0]) < 1.0


@pytest.mark.parametrize("name", list(OUTER_OPTIMIZERS))
def test_a_log_coordinate_keeps_values_positive(name: str) -> None:
    st = start({"lr": "log", "momentum": "log1m", "wd": "log"})
    st = OuterState(st.values, {"lr": t(0.69, 0.69), "momentum": t(0.69), "wd": t(0.69)}, st.signs, 0, None, st.kinds)
    for _ in range(4):
        st = make_outer(name).update(st, {"lr": t(5.0, 5.0), "momentum": t(-5.0), "wd": t(5.0)}, SPECS)
    assert bool((st.values["lr"] > 0).all()) and float(st.values["wd"][0]) > 0
    assert 0.5 < float(st.values["momentum"][0]) < 1.0


@pytest.mark.parametrize("name", list(OUTER_OPTIMIZERS))
def test_the_state_survives_a_checkpoint(name: str, tmp_path) -> None:
    opt = make_outer(name)
    st = opt.update(start(), {"lr": t(2.0, -3.0), "momentum": t(-1.0), "wd": t(1.0)}, SPECS)
    path = tmp_path / "state.pt"
    torch.save(st.to_dict(), path)
    back = state_from_dict(torch.load(path, weights_only=True))
    h = {"lr": t(1.0, 1.0), "momentum": t(1.0), "wd": t(-1.0)}
    a, b = opt.update(st, h, SPECS), opt.update(back, h, SPECS)
    for n in a.values:
        assert torch.equal(a.values[n], b.values[n]) and torch.equal(a.steps[n], b.steps[n])
    assert set(back.slots) == set(st.slots)


def test_adam_matches_a_hand_computed_two_step_update() -> None:
    """beta1 0.9, beta2 0.999, eps 1e-8, learning rate 0.1 (the step), h = 2 then -1, from 0.5:

    k=1: m = 0.2, v = 0.004, move = 0.1 * (0.2/0.1) / (sqrt(0.004/0.001) + 1e-8) = 0.0999999995;
    k=2: m = 0.08, v = 0.004996, move = 0.1 * (0.08/0.19) / (sqrt(0.004996/0.001999) + 1e-8).
    """
    st = OuterState.start({"lr": t(0.5)}, {"lr": 0.1})
    st = Adam().update(st, {"lr": t(2.0)}, SPECS)
    assert float(st.values["lr"][0]) == pytest.approx(0.4000000005, abs=1e-15)
    assert st.slots["m"]["lr"].tolist() == pytest.approx([0.2]) and st.slots["v"]["lr"].tolist() == pytest.approx([0.004])
    st = Adam().update(st, {"lr": t(-1.0)}, SPECS)
    move = 0.1 * (0.08 / 0.19) / ((0.004996 / 0.001999) ** 0.5 + 1e-8)
    assert float(st.values["lr"][0]) == pytest.approx(0.4000000005 - move, abs=1e-12)
    assert float(st.values["lr"][0]) == pytest.approx(0.37336629670243154, abs=1e-12)
    assert st.steps["lr"].tolist() == [0.1], "the learning rate stays the type's initial step"


def test_the_sign_family_are_one_move_with_different_step_rules() -> None:
    st, h = start(), {"lr": t(-1.0, -1.0), "momentum": t(-1.0), "wd": t(-1.0)}
    s1 = SignDescent().update(SignDescent().update(st, h, SPECS), h, SPECS)
    r1 = Rprop(grow=1.0).update(Rprop(grow=1.0).update(st, h, SPECS), h, SPECS)
    m1 = SignMagnitude(cap=1.0).update(SignMagnitude(cap=1.0).update(st, h, SPECS), h, SPECS)
    for n in s1.values:
        assert torch.equal(s1.values[n], r1.values[n]) and torch.equal(s1.values[n], m1.values[n])
    r2 = Rprop(grow=2.0).update(Rprop(grow=2.0).update(st, h, SPECS), h, SPECS)
    assert r2.values["lr"].tolist() == pytest.approx([0.5 + 0.1 + 0.2, 0.2 + 0.1 + 0.2])


@pytest.mark.parametrize(("name", "options", "message"), [
    ("newton", {}, "unknown outer optimizer 'newton'"),
    ("sign", {"grow": 2.0}, "sign has no option 'grow'"),
    ("rprop", {"grow": 0.5}, "rprop: grow must be at least 1"),
    ("adam", {"beta1": 1.0}, "adam: beta1 must be in"),
    ("sign", {"decay": 1.5}, "sign: decay must be in"),
])
def test_bad_outer_settings_name_their_field(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        RunConfig(outer=name, outer_options=options)
    assert e.value.field in ("outer", "outer_options")


def test_settings_stored_with_the_old_switches_map_onto_the_optimizers() -> None:
    assert legacy_outer({"grow": 1.5, "magnitude": 0.0, "decay": 0.5}) == {"outer": "rprop", "outer_options": {"grow": 1.5}}
    assert legacy_outer({"grow": 1.0, "magnitude": 2.0, "decay": 0.6}) == {
        "outer": "sign-magnitude", "outer_options": {"decay": 0.6, "cap": 2.0}}
    assert RunConfig.from_dict({"grow": 1.0, "magnitude": 0.0, "decay": 0.5}).resolved_outer == SignDescent()


def test_a_configuration_is_resolved_once() -> None:
    """The outer-loop settings and the outer optimizer are built with the configuration, then reused."""
    config = RunConfig(outer="adam", outer_options={"beta1": 0.8})
    assert config.fds() is config.fds() is config.resolved_fds
    assert config.fds().outer is config.resolved_outer and config.resolved_outer == Adam(beta1=0.8)
