"""Multiplicative sign steps (``--outer-space log``) against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import hpo
from hpo.app.config import RunConfig
from hpo.backends.forward import ForwardManualBackend
from hpo.errors import ConfigError
from hpo.optimizers.adam import Adam
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.base import OuterState, converged
from hpo.outer.coordinates import LOG_STEP, Coordinate, coordinate
from hpo.outer.divergence import backtrack
from hpo.outer.sign import SignDescent
from hpo.search.fds import initial_state, run_fds
from hpo.search.inner_runs import FDSConfig
from tests.test_divergence import tiny_task

SGD = SGDMomentum()
SPECS = {s.name: s for s in SGD.hyperparameters}
F64 = torch.float64


def t(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


@pytest.mark.parametrize("kind", ["linear", "log", "log1m"])
def test_coordinates_invert(kind: str) -> None:
    c, x = Coordinate(kind), t(0.001, 0.3, 0.9, 0.999)
    assert torch.allclose(c.from_u(c.to_u(x)), x, rtol=1e-14, atol=0)


def test_which_types_step_multiplicatively() -> None:
    assert coordinate(SPECS["lr"], "log", t(0.1, 0.2)).kind == "log"
    assert coordinate(SPECS["lr"], "log", t(0.1, 0.0)).kind == "linear"  # a value at 0 cannot be multiplied up
    assert coordinate(SPECS["momentum"], "log", t(0.0)).kind == "log1m"
    assert coordinate(SPECS["wd"], "log", t(5e-4)).kind == "log"
    assert coordinate(SPECS["lr"], "linear", t(0.1)).kind == "linear"
    cfg = FDSConfig(outer_space="log")
    assert cfg.resolved_init(SGD) == {"lr": 0.1, "momentum": 0.9, "wd": 5e-4}  # the hand-picked setting
    st = initial_state(SGD, cfg)
    assert st.kinds == {"lr": "log", "momentum": "log1m", "wd": "log"}
    assert all(bool((v == LOG_STEP).all()) for v in st.steps.values())
    # Adam's hand-picked weight decay is 0: that type keeps its additive step.
    adam = initial_state(Adam(), cfg)
    assert adam.kinds == {"lr": "log", "beta1": "log1m", "beta2": "log1m", "wd": "linear"}
    assert adam.steps["wd"].tolist() == [1e-4]


def test_log_steps_double_halve_and_shrink_on_a_flip() -> None:
    st = OuterState.start({"lr": t(0.1, 0.1), "momentum": t(0.9), "wd": t(5e-4)}, {"lr": LOG_STEP, "momentum": LOG_STEP,
                                                                                    "wd": LOG_STEP},
                          {"lr": "log", "momentum": "log1m", "wd": "log"})
    # Negative hypergradient: raise.  lr doubles, momentum's distance to 1 halves, wd halves (positive h).
    st = SignDescent().update(st, {"lr": t(-3.0, 2.0), "momentum": t(-1.0), "wd": t(7.0)}, SPECS)
    assert st.values["lr"].tolist() == pytest.approx([0.2, 0.05], rel=1e-14)
    assert st.values["momentum"].tolist() == pytest.approx([0.95], rel=1e-14)
    assert st.values["wd"].tolist() == pytest.approx([2.5e-4], rel=1e-14)
    # A flip halves the log step: x sqrt(2) instead of x 2.
    st = SignDescent().update(st, {"lr": t(1.0, 2.0), "momentum": t(1.0), "wd": t(7.0)}, SPECS)
    assert st.values["lr"].tolist() == pytest.approx([0.2 / math.sqrt(2), 0.025], rel=1e-14)
    assert st.values["momentum"].tolist() == pytest.approx([1 - 0.05 * math.sqrt(2)], rel=1e-14)
    assert st.steps["lr"].tolist() == pytest.approx([LOG_STEP / 2, LOG_STEP], rel=1e-14)
    # The log step is relative: converged once every step is below the fraction, whatever the value.
    assert not converged(st, 0.05)
    small = OuterState(st.values, {n: torch.full_like(v, 0.04) for n, v in st.steps.items()}, st.signs, st.k,
                       kinds=st.kinds)
    assert converged(small, 0.05)


def test_backtrack_in_log_space_goes_to_the_geometric_midpoint() -> None:
    st = OuterState({"lr": t(0.4)}, {"lr": t(LOG_STEP)}, {"lr": t(-1.0)}, 3, {"lr": t(0.1)}, {"lr": "log"})
    new = backtrack(st, {"lr": torch.tensor([True])})
    assert new is not None
    assert new.values["lr"].tolist() == pytest.approx([0.2], rel=1e-14)
    assert new.steps["lr"].tolist() == pytest.approx([LOG_STEP / 2], rel=1e-14)


def test_log_space_run_moves_from_the_hand_picked_setting_by_factors_of_two() -> None:
    config = FDSConfig(outer_steps=1, inner_steps=(12,), counts={"lr": 2}, batch_size=16, val_frac=0.25,
                       outer_space="log")
    res = run_fds(tiny_task(), SGD, ForwardManualBackend(), config)
    (r,) = res.history
    for j, h in enumerate(r.hypergrad["lr"]):
        assert h != 0 and r.values["lr"][j] == pytest.approx(0.1 * 2.0 ** (-math.copysign(1, h)), rel=1e-12)
    h = r.hypergrad["momentum"][0]
    assert r.values["momentum"][0] == pytest.approx(1 - 0.1 * 2.0 ** math.copysign(1, h), rel=1e-12)
    assert res.state.kinds == {"lr": "log", "momentum": "log1m", "wd": "log"}
    assert OuterState.from_dict(res.state.to_dict()).kinds == res.state.kinds


def test_log_space_run_resumes_like_a_straight_run(tmp_path: Path) -> None:
    small = {"task": f"{Path(__file__).parent / 'conftest.py'}:tiny_task", "inner_steps": (6,), "counts": {"lr": 2},
             "val_frac": 0.25, "device": "cpu", "retrain_steps": 6, "outer_space": "log"}
    straight = hpo.run(RunConfig(**small, outer_steps=3, logdir=str(tmp_path / "a")))
    hpo.run(RunConfig(**small, outer_steps=1, logdir=str(tmp_path / "b")))
    resumed = hpo.resume(tmp_path / "b", {"outer_steps": 3, "task": small["task"]})
    assert resumed.schedule.to_dict() == straight.schedule.to_dict()
    assert straight.schedule.to_dict()["momentum"] != [0.9]  # it moved


def test_bad_outer_space_names_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        RunConfig(outer_space="exp")
    assert e.value.field == "outer_space"
