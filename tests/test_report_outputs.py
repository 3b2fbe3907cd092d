"""What a run shows: the ETA from the real horizons, the schedule picture's axes, the auto choice, threads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import hpo
from hpo import RunConfig
from hpo.cli.console import ConsoleReporter
from hpo.core.callbacks import OuterRecord
from hpo.core.schedule import Schedule
from hpo.reporting.schedule_plot import schedule_figure

TASK = f"{Path(__file__).parent / 'conftest.py'}:tiny_task"
SMALL = {"task": TASK, "inner_steps": (6,), "counts": {"lr": 2}, "val_frac": 0.25, "device": "cpu", "retrain_steps": 6}


def record(k: int, steps: int) -> OuterRecord:
    return OuterRecord(k=k, horizon=steps, steps_run=steps, val_loss=1.0, val_acc=0.5, hypergrad={"lr": [0.1]},
                       values={"lr": [0.1]}, step_sizes={"lr": [0.1]}, diverged=False, seconds=1.0)


def test_eta_counts_the_remaining_horizons(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 steps took 3 s; 300 + 300 remain, so the ETA is 60 s (not 2 x 30 steps' worth)."""
    now = [100.0]
    monkeypatch.setattr("hpo.cli.console.time.perf_counter", lambda: now[0])
    out = io.StringIO()
    console = ConsoleReporter(show_progress=False, out=out)
    console.on_run_start((30, 300, 300))
    now[0] = 103.0
    console.on_outer_step(record(0, 30))
    assert "outer 1/3" in out.getvalue() and "elapsed 3s, ETA 60s" in out.getvalue()


def test_schedule_picture_has_honest_axes() -> None:
    fig = schedule_figure(Schedule.from_dict({"lr": [0.1, 0.3], "momentum": [0.0]}), "after outer step 3/3")
    lr_ax, mom_ax = fig.axes
    assert lr_ax.get_xlim() == (0.0, 1.0) and lr_ax.get_xlabel() == "fraction of training"
    assert mom_ax.get_title() == "momentum = 0 (constant)" and mom_ax.get_ylim() == (-1.0, 1.0)
    assert fig._suptitle.get_text() == "after outer step 3/3"


def test_auto_choice_is_recorded_per_outer_step_and_threads_are_restored(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = hpo.run(RunConfig(**SMALL, outer_steps=2, logdir=str(tmp_path / "r")))
        assert torch.get_num_threads() == 2  # the run used one thread, then gave the caller's count back
    finally:
        torch.set_num_threads(before)
    assert [r.extra.get("backend") for r in result.history] == ["reverse-checkpointed"] * 2
