"""Search baselines: the search space, random search and TPE."""

from __future__ import annotations

import math

import pytest
import torch

from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.search.inner_runs import FDSConfig
from hpo.search.space import Range, parse_space, resolve_space, sample_schedule
from hpo.search.trials import Trial, best_so_far, random_search, tpe_search
from tests.conftest import tiny_task


def test_parse_space():
    s = parse_space("lr=1e-3:1:log, momentum=0:0.9")
    assert s == {"lr": Range(1e-3, 1.0, True), "momentum": Range(0.0, 0.9, False)}
    assert s["lr"].from_unit(0.5) == pytest.approx(math.sqrt(1e-3))
    assert s["momentum"].from_unit(0.5) == pytest.approx(0.45)


@pytest.mark.parametrize("text", ["lr", "lr=1", "lr=a:1", "lr=1:0", "lr=0:1:log", "lr=0:1:cube", ""])
def test_parse_space_rejects(text):
    with pytest.raises(ValueError):
        parse_space(text)


def test_resolve_space_fills_defaults_and_checks_ranges():
    rule = SGDMomentum()
    s = resolve_space(rule, "lr=0.01:0.5")
    assert s["lr"] == Range(0.01, 0.5, False) and s["momentum"].high == 0.99
    with pytest.raises(ValueError, match="out of range"):
        resolve_space(rule, "momentum=0:1")


def test_sample_schedule_within_ranges_and_shaped():
    space = {"lr": Range(1e-3, 1.0, True), "momentum": Range(0.1, 0.2), "wd": Range(1e-5, 1e-3, True)}
    gen = torch.Generator().manual_seed(0)
    lrs = []
    for _ in range(200):
        s = sample_schedule(space, {"lr": 4}, gen)
        assert s.counts == {"lr": 4, "momentum": 1, "wd": 1}
        assert bool(((s.values["lr"] >= 1e-3) & (s.values["lr"] <= 1.0)).all())
        assert 0.1 <= float(s.values["momentum"]) <= 0.2
        lrs += s.values["lr"].tolist()
    # log-uniform: about half the samples fall below the geometric midpoint sqrt(1e-3)
    below = sum(x < math.sqrt(1e-3) for x in lrs) / len(lrs)
    assert 0.4 < below < 0.6


def _config():
    return FDSConfig(inner_steps=(5,), val_frac=0.25, seed=3)


def test_random_search_is_deterministic_and_tracks_the_best():
    task, rule = tiny_task(), SGDMomentum()
    space = resolve_space(rule, None)
    a = random_search(task, rule, _config(), space, 4, counts={"lr": 2})
    b = random_search(task, rule, _config(), space, 4, counts={"lr": 2})
    assert [t.val_loss for t in a] == [t.val_loss for t in b]
    assert len({float(t.schedule.values["lr"][0]) for t in a}) == 4
    best = best_so_far(a)
    assert best[-1].score() == max(t.score() for t in a)
    assert all(best[i + 1].score() >= best[i].score() for i in range(3))


def test_tpe_search_runs_all_trials_in_space():
    task, rule = tiny_task(), SGDMomentum()
    space = resolve_space(rule, "lr=0.01:0.5:log")
    trials = tpe_search(task, rule, _config(), space, 5, counts={"lr": 2})
    assert len(trials) == 5
    for t in trials:
        assert t.schedule.counts["lr"] == 2
        assert bool(((t.schedule.values["lr"] >= 0.01) & (t.schedule.values["lr"] <= 0.5)).all())


def test_best_so_far_prefers_accuracy_then_loss():
    s = Schedule.constant({"lr": 0.1})
    trials = [Trial(0, s, 1.0, 0.5, 5, False), Trial(1, s, 0.9, 0.5, 5, False), Trial(2, s, 0.1, 0.4, 5, False)]
    assert [t.k for t in best_so_far(trials)] == [0, 1, 1]
