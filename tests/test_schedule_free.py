"""``schedule-free``: random search over schedule-free SGD at a tiny budget, retrained with schedule-free SGD."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

pytest.importorskip("schedulefree")
import schedulefree

from hpo import CompareConfig, compare
from hpo.core.schedule import Schedule
from hpo.search.retrain import RETRAIN_SEED_OFFSET
from hpo.search.schedule_free import DEFAULT_SPACE, NAMES, retrain_schedule_free, train_schedule_free
from tests.conftest import tiny_task

FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"


class Spy(schedulefree.SGDScheduleFree):
    """``SGDScheduleFree`` recording every instance and the mode each call left it in."""

    made: ClassVar[list[Spy]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.warmup = kwargs["warmup_steps"]
        Spy.made.append(self)

    def train(self) -> None:  # type: ignore[override]
        self.calls.append("train")
        super().train()

    def eval(self) -> None:  # type: ignore[override]
        self.calls.append("eval")
        super().eval()

    def step(self, closure: Any = None) -> Any:
        self.calls.append("step")
        return super().step(closure)


def test_schedule_free_searches_retrains_with_sgdschedulefree_and_reports_that_accuracy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedulefree, "SGDScheduleFree", Spy)
    Spy.made = []
    cfg = CompareConfig(task=TASK, methods=("schedule-free",), budget=(8, 16), inner_steps=4, seeds=(0,),
                        counts={"lr": 2}, retrain_steps=6, val_frac=0.25, device="cpu", logdir=str(tmp_path / "c"))
    rows, _ = compare(cfg, log=lambda _: None)
    assert [(r.budget, r.steps) for r in rows] == [(8, 8), (16, 16)]  # 4 trials of T = 4 steps, the whole budget
    # 4 trials, then a retrain per budget point and one on the hold-out split: all with SGDScheduleFree
    assert len(Spy.made) == 4 + 2 + 1
    for opt in Spy.made:
        assert opt.calls[0] == "train" and opt.calls[-1] == "eval"  # train mode for the steps, eval mode to evaluate
        assert set(opt.calls[1:-1]) == {"step"}
    assert [len([c for c in o.calls if c == "step"]) for o in Spy.made] == [4, 4, 4, 4, 6, 6, 6]
    task = tiny_task()
    for r in rows:
        assert set(r.schedule) == set(NAMES)
        for name, value in r.schedule.items():
            assert len(value) == 1 and DEFAULT_SPACE[name].low <= value[0] <= DEFAULT_SPACE[name].high
        again = retrain_schedule_free(task, Schedule.from_dict(r.schedule), 6, 0 + RETRAIN_SEED_OFFSET)
        assert r.test_acc == again.test_acc  # the recorded accuracy is the schedule-free retrain's, exactly
        assert r.search_val_acc is not None and 0.0 <= r.search_val_acc <= 1.0
    assert rows[1].search_val_acc >= rows[0].search_val_acc  # best so far
    # the warm-up is a fraction of the run: stretched to the 6 retrain steps
    assert Spy.made[-1].warmup == round(rows[-1].schedule["warmup"][0] * 6)


def test_schedule_free_stops_at_its_time_budget(tmp_path: Path) -> None:
    cfg = CompareConfig(task=TASK, methods=("schedule-free",), budget=(16,), inner_steps=4, seeds=(0,),
                        counts={"lr": 2}, retrain_steps=4, val_frac=0.25, device="cpu", budget_seconds=0.001,
                        logdir=str(tmp_path / "t"))
    rows, _ = compare(cfg, log=lambda _: None)
    assert [r.steps for r in rows] == [4]  # one trial, not four


def test_a_batchnorm_model_is_evaluated_with_statistics_of_the_averaged_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.search.schedule_free as sf

    task = tiny_task(batchnorm=True)
    batches = [(t, task.train_rows.fetch(torch.arange(8 * (t % 4), 8 * (t % 4) + 8), 0, t))
               for t in range(8)]
    hyper = {"lr": 0.5, "momentum": 0.9, "wd": 0.0, "warmup": 0.25}
    with_stats = task.make_model()
    without = task.make_model()
    without.load_state_dict(with_stats.state_dict())
    loss, diverged = train_schedule_free(with_stats, task.loss, batches, hyper, 8)
    assert not diverged and torch.isfinite(loss) and not with_stats.training
    monkeypatch.setattr(sf, "has_batchnorm", lambda _: False)
    train_schedule_free(without, task.loss, batches, hyper, 8)  # the statistics of the gradient points y
    stale = without[1].running_mean.clone()
    assert not torch.allclose(stale, with_stats[1].running_mean)
    without.train()
    with torch.no_grad():  # the README's recipe by hand: forward passes at the averaged weights x
        for _, (x, _) in batches:
            without(x)
    assert torch.equal(without[1].running_mean, with_stats[1].running_mean)
    assert torch.equal(without[1].running_var, with_stats[1].running_var)
