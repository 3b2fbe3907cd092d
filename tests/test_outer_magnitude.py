"""Magnitude-aware moves of the outer update (``--outer sign-magnitude``) against hand-computed values."""

import pytest
import torch

from hpo.app.compare_config import CompareConfig
from hpo.app.config import RunConfig
from hpo.errors import ConfigError
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.base import OuterState
from hpo.outer.sign import SignDescent
from hpo.outer.sign_magnitude import SignMagnitude, relative_magnitude

SPECS = {s.name: s for s in SGDMomentum().hyperparameters}


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_relative_magnitude_is_the_ratio_to_the_median_clamped() -> None:
    # |g| = 1, 2, 8, 0.01; lower median 1; clamp to [1/4, 4]; zero and NaN entries get 1
    r = relative_magnitude(t(1.0, -2.0, 8.0, -0.01, 0.0, float("nan")), 4.0)
    assert r.tolist() == [1.0, 2.0, 4.0, 0.25, 1.0, 1.0]
    assert relative_magnitude(t(0.0, 0.0), 4.0).tolist() == [1.0, 1.0]
    assert relative_magnitude(t(-3e-5), 4.0).tolist() == [1.0], "a single value moves by its step (sign update)"


def test_moves_scale_with_the_hypergradient_and_steps_do_not() -> None:
    st = OuterState.start({"lr": t(0.5, 0.5, 0.5, 0.5)}, {"lr": 0.1})
    h = {"lr": t(1.0, 2.0, 8.0, -0.01)}
    new = SignMagnitude(cap=4.0).update(st, h, SPECS)
    assert new.values["lr"].tolist() == pytest.approx([0.4, 0.3, 0.1, 0.525], abs=1e-15)
    assert new.steps["lr"].tolist() == [0.1] * 4
    assert new.signs["lr"].tolist() == [1.0, 1.0, 1.0, -1.0]
    plain = SignDescent().update(st, h, SPECS)
    assert plain.values["lr"].tolist() == pytest.approx([0.4, 0.4, 0.4, 0.6], abs=1e-15)


def test_log_coordinate_compares_hypergradients_in_that_coordinate() -> None:
    # dL/du = h * lambda: 1 * 1 and 1 * 0.01; lower median 0.01, so the first moves C = 2 steps
    st = OuterState.start({"lr": t(1.0, 0.01)}, {"lr": 0.5}, kinds={"lr": "log"})
    new = SignMagnitude(cap=2.0).update(st, {"lr": t(1.0, 1.0)}, SPECS)
    assert new.values["lr"].tolist() == pytest.approx([torch.e ** -1.0, 0.01 * torch.e ** -0.5], rel=1e-12)


@pytest.mark.parametrize("bad", [0.5, -1.0, float("nan")])
def test_a_cap_below_one_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="cap must be") as info:
        RunConfig(outer="sign-magnitude", outer_options={"cap": bad})
    assert info.value.field == "outer_options"


def test_the_setting_reaches_the_outer_loop() -> None:
    assert RunConfig(outer="sign-magnitude", outer_options={"cap": 3.0}).fds().outer == SignMagnitude(cap=3.0)
    assert RunConfig().fds().outer == SignDescent()
    with pytest.raises(ConfigError, match="applies only to the FDS methods"):
        CompareConfig(seeds=[0], methods=["tpe"], outer="sign-magnitude")


def test_compare_passes_the_cap_to_every_fds_method() -> None:
    config = CompareConfig(seeds=[0], methods=["auto", "tpe"], outer="sign-magnitude", outer_options={"cap": 2.0})
    assert config.settings().fds(0).outer == SignMagnitude(cap=2.0)
