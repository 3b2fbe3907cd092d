"""benchmarks/compare_report.py: several compare runs merged into one table at each method's final point."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hpo.app.compare_checkpoint import Row
from hpo.app.compare_outputs import write_csv

SPEC = importlib.util.spec_from_file_location("compare_report", Path(__file__).parents[1] / "benchmarks" /
                                              "compare_report.py")
assert SPEC is not None and SPEC.loader is not None
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


def row(method: str, seed: int, budget: int, acc: float, seconds: float) -> Row:
    return Row(method=method, seed=seed, budget=budget, steps=budget, search_seconds=seconds, cpu_seconds=seconds,
               test_acc=acc, val_acc=acc, retrain_steps=10, diverged=False, schedule={"lr": [0.1, 0.2]},
               search_val_acc=acc)


def test_each_method_at_its_own_final_budget_with_labels(tmp_path: Path) -> None:
    (tmp_path / "fds").mkdir()
    (tmp_path / "base").mkdir()
    write_csv([row("auto", s, b, a, b / 100) for s, (b1, b2) in enumerate([(0.5, 0.8), (0.6, 0.9)])
               for b, a in ((30, b1), (60, b2))], tmp_path / "fds" / "results.csv")
    write_csv([row("tpe", s, 1000, a, 0.6) for s, a in enumerate([0.7, 0.7])], tmp_path / "base" / "results.csv")
    rows = report.read_rows(f"short={tmp_path / 'fds'}") + report.read_rows(str(tmp_path / "base"))
    assert {r.method for r in rows} == {"short", "tpe"}
    lines = report.table(rows).splitlines()
    assert lines[2] == "| short | 0.8500 ± 0.0707 | 0.6 | 60 | 2 |"  # the 60-step point, not the 30-step one
    assert lines[3] == "| tpe | 0.7000 ± 0.0000 | 0.6 | 1000 | 2 |"


def test_the_same_method_in_two_unlabelled_directories_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_csv([row("hand-picked", 0, 0, 0.5, 0.0)], tmp_path / d / "results.csv")
    monkeypatch.setattr("sys.argv", ["compare_report.py", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                     str(tmp_path / "out")])
    with pytest.raises(SystemExit) as info:
        report.main()
    assert info.value.code == 2
    assert "'hand-picked' (seed 0) is in more than one directory" in capsys.readouterr().err


def test_each_seed_at_its_own_final_budget_when_calls_used_different_budget_lists(tmp_path: Path) -> None:
    """hand-picked next to FDS (budgets 30, 60) for seed 0 and next to a baseline (budget 1000) for seed 1."""
    rows = [row("hand-picked", 0, b, 0.5, 0.0) for b in (30, 60)] + [row("hand-picked", 1, 1000, 0.7, 0.0)]
    lines = report.table(rows).splitlines()
    assert lines[2] == "| hand-picked | 0.6000 ± 0.1414 | 0.0 | 530 | 2 |"
