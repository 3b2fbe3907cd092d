"""The ``backtrack`` divergence rule: bisect towards the last values that trained.

The ``lower`` rule halves every value in force after each divergence, so a search that keeps
probing the edge of stability drives momentum and the learning rates towards 0 (the CNN of
docs/results-long-horizon.md).  ``backtrack`` never goes below the last values that trained.
"""

from __future__ import annotations

import io

import pytest
import torch

from hpo.backends.forward import ForwardManualBackend
from hpo.cli.console import ConsoleReporter
from hpo.errors import ConfigError
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.base import OuterState
from hpo.outer.divergence import backtrack
from hpo.outer.sign import SignDescent
from hpo.search.fds import run_fds
from hpo.search.inner_runs import FDSConfig
from tests.test_divergence import tiny_task

SPECS = {s.name: s for s in SGDMomentum.hyperparameters}
F64 = torch.float64


def state(lr: list[float], good: list[float] | None, steps: float = 0.1) -> OuterState:
    values = {"lr": torch.tensor(lr, dtype=F64), "momentum": torch.tensor([0.3], dtype=F64)}
    st = OuterState.start(values, {"lr": steps, "momentum": 0.1})
    g = None if good is None else {"lr": torch.tensor(good, dtype=F64), "momentum": torch.tensor([0.2], dtype=F64)}
    return OuterState(st.values, st.steps, {n: -torch.ones_like(v) for n, v in st.values.items()}, 4, g)


def test_backtrack_goes_halfway_back_for_started_values_that_moved() -> None:
    st = state([0.4, 0.4, 0.3], [0.2, 0.4, 0.1])
    started = {"lr": torch.tensor([True, True, False]), "momentum": torch.tensor([True])}
    new = backtrack(st, started, 0.5)
    assert new is not None and new.k == 5
    # lr[0] moved 0.2 -> 0.4 and had started: back to 0.3; lr[1] did not move; lr[2] had not started.
    assert new.values["lr"].tolist() == pytest.approx([0.3, 0.4, 0.3], abs=1e-15)
    assert new.steps["lr"].tolist() == pytest.approx([0.05, 0.1, 0.1], abs=1e-15)
    assert new.signs["lr"].tolist() == [1.0, -1.0, -1.0]
    assert new.values["momentum"].tolist() == pytest.approx([0.25], abs=1e-15)
    assert new.steps["momentum"].tolist() == pytest.approx([0.05], abs=1e-15)
    assert new.good is st.good
    # A hypergradient that points at the diverged values again flips the sign: the step halves
    # once more, so the search bisects [0.2, 0.4] (0.3, then 0.325) instead of returning to 0.4.
    up = SignDescent().update(new, {"lr": torch.tensor([-1.0, -1.0, 0.0], dtype=F64),
                           "momentum": torch.tensor([1.0], dtype=F64)}, SPECS)
    assert up.values["lr"].tolist() == pytest.approx([0.325, 0.5, 0.3], abs=1e-15)
    assert up.values["momentum"].tolist() == pytest.approx([0.2], abs=1e-15)  # held: back to the good value


def test_backtrack_returns_none_without_a_good_point_or_a_moved_value() -> None:
    started = {"lr": torch.tensor([True, True]), "momentum": torch.tensor([True])}
    assert backtrack(state([0.4, 0.4], None), started) is None
    same = state([0.4, 0.4], [0.4, 0.4])
    same = OuterState(same.values, same.steps, same.signs, same.k,
                      {"lr": same.values["lr"].clone(), "momentum": same.values["momentum"].clone()})
    assert backtrack(same, started) is None


def test_good_point_round_trips_through_a_checkpoint_dict() -> None:
    st = state([0.4, 0.4], [0.2, 0.3])
    again = OuterState.from_dict(st.to_dict())
    assert again.good is not None and again.good["lr"].tolist() == [0.2, 0.3]
    old = {k: v for k, v in st.to_dict().items() if k != "good"}  # a checkpoint from before `good`
    assert OuterState.from_dict(old).good is None


def diverging_run(divergence: str, outer_steps: int = 3):
    """Outer step 1 trains at lr 0.01; its sign step of 1e5 makes outer step 2 diverge."""
    config = FDSConfig(outer_steps=outer_steps, inner_steps=(12,), counts={"lr": 2},
                       init={"lr": 0.01, "momentum": 0.5}, steps={"lr": 1e5, "momentum": 0.1}, batch_size=16,
                       val_frac=0.25, divergence=divergence, converged_frac=1e-12)
    return run_fds(tiny_task(), SGDMomentum(), ForwardManualBackend(), config)


def test_backtrack_after_a_diverged_outer_step_bisects_towards_the_values_that_trained() -> None:
    res = diverging_run("backtrack", outer_steps=2)
    first, second = res.history
    assert not first.diverged and second.diverged
    assert res.state.good is not None
    assert res.state.good["lr"].tolist() == [0.01, 0.01]  # the values outer step 1 trained with
    at = second.extra["diverged_at"]
    started = [j for j, s in enumerate((0, 6)) if s < at]
    for j in range(2):
        moved_to = first.values["lr"][j]
        expected = 0.01 + 0.5 * (moved_to - 0.01) if j in started and moved_to != 0.01 else moved_to
        assert second.values["lr"][j] == pytest.approx(expected, rel=1e-12)
    assert second.values["momentum"][0] == pytest.approx(0.5 + 0.5 * (first.values["momentum"][0] - 0.5), rel=1e-12)
    assert "lowered" not in second.extra and second.extra["backtracked"]["lr"] == [
        j for j in started if first.values["lr"][j] != 0.01]
    out = io.StringIO()
    ConsoleReporter(show_progress=False, out=out, outer_steps=2).on_outer_step(second)
    assert "halfway back to the last values that trained" in out.getvalue()


def test_lower_rule_on_the_same_run_halves_every_value_in_force() -> None:
    res = diverging_run("lower", outer_steps=2)
    first, second = res.history
    assert second.diverged and "backtracked" not in second.extra
    assert second.values["momentum"][0] == pytest.approx(min(first.values["momentum"][0] - 0.1,
                                                              first.values["momentum"][0] / 2), rel=1e-12)
    assert res.state.good is None  # forgotten: the values went below them


def test_an_unknown_divergence_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        FDSConfig(divergence="bisect").validate(SGDMomentum())
    assert e.value.field == "divergence"


def test_the_rule_reaches_the_outer_loop_from_hpo_run_and_hpo_compare() -> None:
    from hpo.app.compare_config import CompareConfig
    from hpo.app.config import RunConfig

    assert RunConfig(divergence="backtrack").fds().divergence == "backtrack"
    assert RunConfig().fds().divergence == "lower"
    cfg = CompareConfig(methods=("auto",), divergence="backtrack", samples=600)
    assert cfg.settings().fds(3).divergence == "backtrack"
    with pytest.raises(ConfigError) as e:
        RunConfig(divergence="bisect")
    assert e.value.field == "divergence"
