"""The FDS outer-loop options of ``hpo compare``: multi-fidelity short steps and keeping the best schedule."""

from __future__ import annotations

import pytest
import torch

from hpo.app.registry import resolve_method
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.core.callbacks import OuterRecord
from hpo.optimizers.sgd import SGDMomentum
from hpo.search import fds as fds_search
from hpo.search.base import SearchSettings
from hpo.search.fds import FDSSearch, _Recorder, best_seen, epoch_steps, fds_config, run_fds, validation_accuracy
from hpo.search.inner_runs import FDSConfig
from hpo.search.pbt import PBTSearch
from hpo.search.space import default_space
from tests.conftest import tiny_task

RULE = SGDMomentum()


def settings(**kw: object) -> SearchSettings:
    base = {"horizon": 20, "budget": 100, "space": default_space(RULE), "counts": {"lr": 2}, "dtype": torch.float64}
    return SearchSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_epoch_is_the_train_part_over_the_batch() -> None:
    task = tiny_task(n=48)  # 48 - ceil(0.05 * 48) = 45 train samples, batches of 8
    assert epoch_steps(task, settings()) == 6
    assert epoch_steps(task, settings(batch_size=4)) == 12


def test_short_steps_run_an_epoch_first_and_keep_the_budget() -> None:
    task = tiny_task(n=48)
    plain = fds_config(task, RULE, settings(), 0)
    assert plain.outer_steps == 5 and plain.inner_steps == (20,)
    short = fds_config(task, RULE, settings(short_steps=3), 0)
    assert short.inner_steps == (6, 6, 6, 20)  # 3 * 6 + 4 * 20 = 98 <= 100
    assert short.outer_steps == 3 + 4
    assert [short.horizon(k) for k in range(7)] == [6, 6, 6, 20, 20, 20, 20]


def test_keep_best_reserves_one_horizon_for_the_last_score() -> None:
    cfg = fds_config(tiny_task(n=48), RULE, settings(keep_best=True), 0)
    assert cfg.outer_steps == 4 and cfg.inner_steps == (20,)


def test_validation_accuracy_repeats_the_outer_steps_score() -> None:
    """A plain run of the values outer step k started from scores exactly what step k recorded."""
    task = tiny_task(n=48)
    config = FDSConfig(outer_steps=3, inner_steps=(20,), counts={"lr": 2}, seed=4, dtype=torch.float64)
    result = run_fds(task, RULE, ReverseCheckpointedBackend(), config)
    start = {"lr": torch.zeros(2, dtype=torch.float64), "momentum": torch.zeros(1, dtype=torch.float64),
             "wd": torch.zeros(1, dtype=torch.float64)}
    before = [start] + [{n: torch.tensor(v, dtype=torch.float64) for n, v in r.values.items()}
                        for r in result.history[:-1]]
    accs = [validation_accuracy(task, RULE, config, v, r.k) for v, r in zip(before, result.history)]
    assert accs == [r.val_acc for r in result.history]
    assert len(set(accs)) > 1  # the steps change the schedule enough to change its score


def record(k: int, val_acc: float, lr: float, horizon: int = 20, diverged: bool = False) -> OuterRecord:
    return OuterRecord(k=k, horizon=horizon, steps_run=horizon, val_loss=0.0, val_acc=val_acc, hypergrad={},
                       values={"lr": [lr, lr], "momentum": [0.0], "wd": [0.0]}, step_sizes={}, diverged=diverged,
                       seconds=0.0, converged=False)


def test_best_seen_picks_the_best_scored_full_horizon_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record k scores the values of record k-1; short and diverged runs' scores do not count."""
    scored = []
    monkeypatch.setattr(fds_search, "validation_accuracy",
                        lambda task, rule, config, values, k: scored.append((values["lr"].tolist(), k)) or 0.2)
    task = tiny_task(n=48)
    config = FDSConfig(outer_steps=6, inner_steps=(6, 6, 20), counts={"lr": 2}, seed=0, dtype=torch.float64)
    rec = _Recorder()
    for r in (record(0, 0.10, 0.30, horizon=6),
              record(1, 0.99, 0.25, horizon=6),        # scores lr 0.30 over a short run: not a candidate
              record(2, 0.50, 0.20),                   # scores lr 0.25
              record(3, 0.95, 0.15, diverged=True),    # scores lr 0.20, but the run diverged
              record(4, 0.90, 0.10),                   # scores lr 0.15: the best
              record(5, 0.60, 50.0)):                  # scores lr 0.10; lr 50 gets a plain run
        rec.on_outer_step(r)
    best = best_seen(task, RULE, config, rec)
    assert best.schedule.values["lr"].tolist() == [0.15, 0.15]
    assert best.search_val_acc == 0.9
    assert best.steps == 2 * 6 + 4 * 20 + 20  # the plain run that scores lr = 50 is counted
    assert scored == [([50.0, 50.0], 6)]  # on the split of the step that would have come next


def test_best_seen_keeps_a_warm_start_that_no_step_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record 0 scores the initial values: with the best score, the start is returned."""
    monkeypatch.setattr(fds_search, "validation_accuracy", lambda task, rule, config, values, k: 0.3)
    config = FDSConfig(outer_steps=3, inner_steps=(20,), counts={"lr": 2}, init={"lr": 0.4, "momentum": 0.5},
                       seed=0, dtype=torch.float64)
    rec = _Recorder()
    for r in (record(0, 0.80, 0.45), record(1, 0.70, 0.50), record(2, 0.75, 0.55)):
        rec.on_outer_step(r)
    best = best_seen(tiny_task(n=48), RULE, config, rec)
    assert best.search_val_acc == 0.8
    assert best.schedule.values["lr"].tolist() == [0.4, 0.4]
    assert best.schedule.values["momentum"].tolist() == [0.5]


def test_keep_best_search_returns_one_more_incumbent_within_the_budget() -> None:
    task = tiny_task(n=48)
    points = FDSSearch(ReverseCheckpointedBackend()).search(task, RULE, settings(keep_best=True, budget=80), 0)
    assert len(points) == 3 + 1
    assert points[-1].steps == 80 and all(p.steps <= 80 for p in points)
    # point i holds the values after outer step i and the score of the values before it
    scored = [(p.search_val_acc, i) for i, p in enumerate(points[1:-1])] + [(points[-1].search_val_acc, 2)]
    acc, i = max(scored)
    assert points[-1].search_val_acc == acc
    assert points[-1].schedule.values["lr"].tolist() == points[i].schedule.values["lr"].tolist()


def test_population_option_sizes_pbt() -> None:
    method = resolve_method("pbt", population=3)
    assert isinstance(method, PBTSearch) and method.size(settings(budget=200)) == 3
    assert resolve_method("pbt").size(settings(budget=200)) == 10


def test_budget_must_hold_the_short_steps_a_full_step_and_the_scoring_run() -> None:
    method = FDSSearch(ReverseCheckpointedBackend())
    method.check(RULE, settings(budget=60, short_steps=1, keep_best=True))
    with pytest.raises(ValueError, match="cannot hold 2 short outer steps, one full outer step and the keep-best"):
        method.check(RULE, settings(budget=60, short_steps=2, keep_best=True))
