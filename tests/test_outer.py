"""The sign-based outer update against hand-computed sequences."""

import math

import torch

from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.base import OuterState, converged
from hpo.outer.divergence import safe_direction
from hpo.outer.rprop import Rprop
from hpo.outer.sign import SignDescent

SPECS = {s.name: s for s in SGDMomentum().hyperparameters}


def run(hypergrads, name="lr", init=0.0, step=0.1, decay=0.5, grow=1.0):
    st = OuterState.start({name: torch.tensor([init], dtype=torch.float64)}, {name: step})
    out = []
    for h in hypergrads:
        opt = SignDescent(decay) if grow == 1.0 else Rprop(decay, grow)
        st = opt.update(st, {name: torch.tensor([h], dtype=torch.float64)}, SPECS)
        out.append((round(float(st.values[name][0]), 12), round(float(st.steps[name][0]), 12)))
    return out, st


def test_sign_flip_halves_the_step():
    out, st = run([-1.0, -3.0, +2.0, +0.5, -1.0])
    assert out == [(0.1, 0.1), (0.2, 0.1), (0.15, 0.05), (0.1, 0.05), (0.125, 0.025)]
    assert st.k == 5


def test_decay_is_configurable():
    out, _ = run([-1.0, +1.0, -1.0], decay=0.25)
    assert out == [(0.1, 0.1), (0.075, 0.025), (0.08125, 0.00625)]


def test_steps_grow_while_the_sign_holds():
    """Rprop: x1.5 on a held sign, x0.5 on a flip, unchanged on the first step and on a zero."""
    out, _ = run([-1.0, -1.0, -1.0, +1.0, 0.0, +1.0], grow=1.5)
    assert out == [(0.1, 0.1), (0.25, 0.15), (0.475, 0.225), (0.3625, 0.1125), (0.3625, 0.1125), (0.19375, 0.16875)]


def test_values_are_clamped_to_the_valid_range():
    out, _ = run([+1.0, +1.0], init=0.05)
    assert out == [(0.0, 0.1), (0.0, 0.1)]
    out, _ = run([-1.0] * 3, name="momentum", init=0.8, step=0.1)
    assert out == [(0.9, 0.1), (0.999, 0.1), (0.999, 0.1)]


def test_zero_and_nan_hypergradients_leave_the_value_and_sign():
    out, st = run([-1.0, 0.0, float("nan"), +1.0])
    assert out == [(0.1, 0.1), (0.1, 0.1), (0.1, 0.1), (0.05, 0.05)]  # +1 after -1 is a flip
    assert float(st.signs["lr"][0]) == 1.0


def test_each_value_keeps_its_own_step():
    st = OuterState.start({"lr": torch.zeros(3, dtype=torch.float64)}, {"lr": 0.1})
    for h in ([-1, -1, -1], [1, -1, 1], [1, -1, -1]):
        st = SignDescent().update(st, {"lr": torch.tensor(h, dtype=torch.float64)}, SPECS)
    assert [round(x, 12) for x in st.values["lr"].tolist()] == [0.0, 0.3, 0.075]
    assert st.steps["lr"].tolist() == [0.05, 0.1, 0.025]


def test_convergence_when_every_step_is_small_relative_to_its_value():
    mk = lambda v, s: OuterState({"lr": torch.tensor(v)}, {"lr": torch.tensor(s)}, {"lr": torch.zeros(len(v))})
    assert converged(mk([1.0, 2.0], [0.04, 0.09]), 0.05)
    assert not converged(mk([1.0, 2.0], [0.04, 0.11]), 0.05)
    assert not converged(mk([0.0], [1e-9]), 0.05)  # a zero value never counts as converged
    assert converged(mk([1.0], [0.09]), 0.1)


def test_safe_direction_moves_started_values_to_their_safe_side():
    h = {"lr": torch.tensor([-2.0, math.nan, 3.0]), "momentum": torch.tensor([math.inf]), "wd": torch.tensor([math.nan])}
    out = safe_direction(h, SPECS)
    # lr and momentum are lowered (pseudo-hypergradient +1), weight decay is held (0)
    assert out["lr"].tolist() == [1.0, 1.0, 1.0] and out["momentum"].tolist() == [1.0] and out["wd"].tolist() == [0.0]
    started = {"lr": torch.tensor([True, True, False]), "momentum": torch.tensor([True]), "wd": torch.tensor([True])}
    assert safe_direction(h, SPECS, started)["lr"].tolist() == [1.0, 1.0, 0.0]


def test_state_round_trips_through_a_dict():
    _, st = run([-1.0, 1.0])
    again = OuterState.from_dict(st.to_dict())
    assert again.k == st.k and torch.equal(again.values["lr"], st.values["lr"])
