"""Magnitude-aware moves of the outer update (``--magnitude C``) against hand-computed values."""

import pytest
import torch

from hpo.compare_config import CompareConfig
from hpo.config import RunConfig
from hpo.errors import ConfigError
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer import OuterState, relative_magnitude, sign_update

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
    new = sign_update(st, h, SPECS, magnitude=4.0)
    assert new.values["lr"].tolist() == pytest.approx([0.4, 0.3, 0.1, 0.525], abs=1e-15)
    assert new.steps["lr"].tolist() == [0.1] * 4
    assert new.signs["lr"].tolist() == [1.0, 1.0, 1.0, -1.0]
    plain = sign_update(st, h, SPECS)
    assert plain.values["lr"].tolist() == pytest.approx([0.4, 0.4, 0.4, 0.6], abs=1e-15)


def test_log_coordinate_compares_hypergradients_in_that_coordinate() -> None:
    # dL/du = h * lambda: 1 * 1 and 1 * 0.01; lower median 0.01, so the first moves C = 2 steps
    st = OuterState.start({"lr": t(1.0, 0.01)}, {"lr": 0.5}, kinds={"lr": "log"})
    new = sign_update(st, {"lr": t(1.0, 1.0)}, SPECS, magnitude=2.0)
    assert new.values["lr"].tolist() == pytest.approx([torch.e ** -1.0, 0.01 * torch.e ** -0.5], rel=1e-12)


@pytest.mark.parametrize("bad", [0.5, -1.0, float("nan")])
def test_a_cap_below_one_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(magnitude=bad)
    assert info.value.field == "magnitude"


def test_the_setting_reaches_the_outer_loop() -> None:
    assert RunConfig(magnitude=3.0).fds().magnitude == 3.0
    assert RunConfig().fds().magnitude == 0.0
    with pytest.raises(ConfigError, match="applies only to the FDS methods"):
        CompareConfig(seeds=[0], methods=["tpe"], magnitude=2.0)


def test_compare_passes_the_cap_to_every_fds_method() -> None:
    config = CompareConfig(seeds=[0], methods=["auto", "tpe"], magnitude=2.0)
    assert config.settings().fds(0).magnitude == 2.0
