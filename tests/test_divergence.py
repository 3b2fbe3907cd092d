"""A diverging inner run stops early, moves the offending values the safe way, and the run goes on.

The authors' code takes sign 0 for a NaN hypergradient, so a diverged run never changes and
diverges again forever; these tests show that ours lowers the learning rate until it is finite.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace

import torch
from torch import nn

from hpo.backends.forward import ForwardManualBackend
from hpo.cli.console import ConsoleReporter
from hpo.core.callbacks import Callbacks
from hpo.optimizers.sgd import SGDMomentum
from hpo.outer.base import OuterState
from hpo.outer.divergence import safe_direction
from hpo.outer.sign import SignDescent
from hpo.search.fds import run_fds
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.tasks.base import Task, classification_task


def tiny_task(n: int = 96, d: int = 8, classes: int = 3) -> Task:
    """Random 3-class data and a one-hidden-layer MLP: fast enough for many inner steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return classification_task("tiny", x, y, x[:32], y[:32],
                               lambda: nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes)), 16)


SPECS = {s.name: s for s in SGDMomentum.hyperparameters}


def test_safe_direction_lowers_started_lr_and_momentum_and_holds_the_rest() -> None:
    nan = float("nan")
    hg = {"lr": torch.tensor([nan, nan, nan, nan], dtype=torch.float64),
          "momentum": torch.tensor([nan], dtype=torch.float64), "wd": torch.tensor([nan], dtype=torch.float64)}
    started = {"lr": torch.tensor([True, True, False, False]), "momentum": torch.tensor([True]),
               "wd": torch.tensor([True])}
    out = safe_direction(hg, SPECS, started)
    # +1 = "the loss grows with this value" -> sign_update lowers it; 0 holds it.
    assert out["lr"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out["momentum"].tolist() == [1.0]
    assert out["wd"].tolist() == [0.0]
    steps = {"lr": 0.1, "momentum": 0.1, "wd": 0.1}
    state = OuterState.start({k: torch.full_like(v, 0.5) for k, v in hg.items()}, steps)
    new = SignDescent().update(state, out, SPECS)
    assert new.values["lr"].tolist() == [0.4, 0.4, 0.5, 0.5]
    assert new.values["momentum"].tolist() == [0.4]
    assert new.values["wd"].tolist() == [0.5]
    # The authors' rule (sign 0 for NaN) leaves everything where it was: the run stalls.
    stalled = SignDescent().update(state, hg, SPECS)
    assert all(torch.equal(stalled.values[k], state.values[k]) for k in hg)


def test_diverged_outer_step_stops_early_and_lowers_only_values_in_force() -> None:
    config = FDSConfig(outer_steps=1, inner_steps=(16,), counts={"lr": 4}, init={"lr": 1e6, "momentum": 0.5},
                       steps={"lr": 4e5}, batch_size=16, val_frac=0.25)
    res = run_fds(tiny_task(), SGDMomentum(), ForwardManualBackend(), config)
    (r,) = res.history
    assert r.diverged
    at = r.extra["diverged_at"]
    assert r.steps_run == at < 16, "the inner loop must stop at the first non-finite loss or tangent"
    assert r.extra["divergence"] in ("loss", "tangents")
    started = [j for j, s in enumerate((0, 4, 8, 12)) if s < at]
    assert started and len(started) < 4, f"diverged at {at}: the test needs some segments not started"
    for j in range(4):
        expected = 1e6 / 2 if j in started else 1e6  # halved: min(1e6 - 4e5, 1e6 / 2)
        assert res.state.values["lr"][j].item() == expected
    assert res.state.values["momentum"].item() == 0.25  # min(0.5 - 0.1, 0.5 / 2)
    assert res.state.values["wd"].item() == 0.0
    assert r.extra["lowered"] == {"lr": started, "momentum": [0]}
    out = io.StringIO()
    ConsoleReporter(show_progress=False, out=out, outer_steps=1).on_outer_step(r)
    assert f"DIVERGED: non-finite {r.extra['divergence']} at inner step {at}/16" in out.getvalue()
    assert f"lowered lr[{','.join(map(str, started))}], momentum[0]" in out.getvalue()


def test_recovery_from_lr_1e6_with_a_small_step_takes_few_outer_steps() -> None:
    """Halving, not the fixed outer step (0.1 here), brings lr = 1e6 back within a few dozen outer steps."""
    config = FDSConfig(outer_steps=40, inner_steps=(8,), counts={"lr": 1}, init={"lr": 1e6}, steps={"lr": 0.1},
                       batch_size=16, val_frac=0.25, converged_frac=1e-9)
    hist = run_fds(tiny_task(), SGDMomentum(), ForwardManualBackend(), config).history
    first_ok = next(i for i, r in enumerate(hist) if not r.diverged)
    assert first_ok <= 30 and hist[first_ok - 1].values["lr"][0] < 1e6 / 2**first_ok * 1.0001


def test_run_recovers_from_a_huge_learning_rate() -> None:
    config = FDSConfig(outer_steps=5, inner_steps=(12,), counts={"lr": 2}, init={"lr": 1000.0, "momentum": 0.5},
                       steps={"lr": 400.0}, batch_size=16, val_frac=0.25)
    res = run_fds(tiny_task(), SGDMomentum(), ForwardManualBackend(), config)
    hist = res.history
    assert hist[0].diverged
    first_ok = next(i for i, r in enumerate(hist) if not r.diverged)
    lrs = [[1000.0, 1000.0]] + [r.values["lr"] for r in hist]
    for i in range(first_ok):  # every diverged step lowered every lr in force
        assert all(b < a for a, b in zip(lrs[i], lrs[i + 1])), (i, lrs[i], lrs[i + 1])
    ok = hist[first_ok]
    assert math.isfinite(ok.val_loss)
    assert all(math.isfinite(x) for v in ok.hypergrad.values() for x in v)


def test_tangent_blow_up_counts_as_divergence() -> None:
    config = FDSConfig(inner_steps=(4,), batch_size=16, val_frac=0.25)
    rule, backend = SGDMomentum(), ForwardManualBackend()
    problem = make_problem(tiny_task(), rule, config, 0)
    from hpo.core.schedule import Schedule

    state = backend.init(problem, Schedule.initial(rule))
    assert bool(backend.finite(state))
    name = next(iter(state.d_params))
    bad = dict(state.d_params)
    bad[name] = torch.full_like(bad[name], float("inf"))
    assert not bool(backend.finite(replace(state, d_params=bad)))
    assert bool(torch.isfinite(state.inner.loss))  # the loss alone would not have noticed


def test_finite_runs_are_not_flagged() -> None:
    config = FDSConfig(outer_steps=1, inner_steps=(8,), counts={"lr": 2}, init={"lr": 0.1}, batch_size=16,
                       val_frac=0.25)
    res = run_fds(tiny_task(), SGDMomentum(), ForwardManualBackend(), config, Callbacks())
    (r,) = res.history
    assert not r.diverged and r.extra == {} and r.steps_run == 8
