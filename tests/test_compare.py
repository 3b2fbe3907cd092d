"""`hpo compare` on a tiny task and budget; one-line errors with exit status 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpo.cli import cli

FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"
METHODS = (
    "auto,forward-manual,reverse-checkpointed,reverse-truncated,greedy,online-greedy,random-constant,random-schedule,tpe,tpe-schedule,hand-picked"
)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_compare_tiny_budget(tmp_path):
    out = tmp_path / "cmp"
    r = invoke(
        "compare",
        "--task",
        TASK,
        "--methods",
        METHODS,
        "--budget",
        "8,16",
        "--inner-steps",
        "4",
        "--seeds",
        "0,1",
        "--counts",
        "lr=2",
        "--retrain-steps",
        "6",
        "--val-frac",
        "0.25",
        "--device",
        "cpu",
        "--logdir",
        str(out),
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    methods = METHODS.split(",")
    assert len(rows) == len(methods) * 2 * 2
    for row in rows:
        if row["method"] == "hand-picked":
            assert int(row["steps"]) == 0
        else:
            assert int(row["steps"]) == int(row["budget"])  # every search spends exactly its budget
        assert 0.0 <= float(row["test_acc"]) <= 1.0
        assert (row["val_acc"] != "") == (row["budget"] == "16")
    # forward mode and full-window reverse mode give the same hypergradient signs, hence the same schedule
    for seed in ("0", "1"):
        sched = {r["method"]: json.loads(r["schedule"]) for r in rows if r["seed"] == seed and r["budget"] == "16"}
        fwd, rev = sched["forward-manual"], sched["reverse-truncated"]
        assert fwd.keys() == rev.keys()
        for name in fwd:
            assert fwd[name] == pytest.approx(rev[name]), name
        assert len(sched["random-schedule"]["lr"]) == 2 and len(sched["random-constant"]["lr"]) == 1
        assert len(sched["forward-manual"]["lr"]) == 2
    table = (out / "results.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
    assert (out / "schedules.png").stat().st_size > 1000
    assert (out / "accuracy_vs_budget.png").stat().st_size > 1000
    assert list(out.glob("events.out.tfevents.*"))
    assert "test acc" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "forward-manual,bogus"], "unknown backend 'bogus'"),
        (["--budget", "3"], "below one inner run"),
        (["--space", "lr=1:0"], "LOW <= HIGH"),
        (["--space", "lr=0:1:log"], "LOW > 0"),
        (["--space", "beta=0:1"], "no hyperparameter 'beta'"),
        (["--space", "momentum=0:2"], "out of range"),
        (["--window", "3", "--methods", "greedy"], "--window"),
        (["--window", "0", "--methods", "reverse-truncated"], "at least 1"),
        (["--seeds", "a"], "--seeds"),
        (["--seeds", "1,1"], "distinct"),
        (["--hyper-lr", "beta=1"], "no hyperparameter 'beta'"),
        (["--counts", "lr=9"], "9 shared lr values need at least 9 inner steps"),
        (["--inner-steps", "0"], "at least 1"),
        (["--task", "nope"], "unknown task"),
        (["--population", "3", "--methods", "greedy"], "applies only to pbt"),
        (["--short-steps", "-1"], "--short-steps"),
        (["--outer", "rprop", "--outer-option", "grow=0.5"], "rprop: grow must be at least 1"),
        (["--outer", "sign-magnitude", "--outer-option", "cap=0.5"], "sign-magnitude: cap must be at least 1"),
        (["--outer-option", "beta1=0.5"], "sign has no option 'beta1'"),
        (["--outer", "adam", "--methods", "tpe"], "applies only to the FDS methods"),
        (["--steps", "lr=0"], "must be positive"),
        (["--init", "momentum=1.5"], "out of range"),
        (["--init", "beta=1"], "no hyperparameter 'beta'"),
        (["--init", "lr=0.1", "--methods", "tpe"], "applies only to the FDS methods"),
        (["--keep-best", "--methods", "tpe"], "applies only to the FDS methods"),
        (["--divergence", "backtrack", "--methods", "tpe"], "applies only to the FDS methods"),
        (["--divergence", "bisect"], "'bisect' is not one of 'lower', 'backtrack'"),
        (["--short-steps", "2", "--keep-best", "--methods", "auto"], "cannot hold 2 short outer steps"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    base = [
        "compare",
        "--task",
        TASK,
        "--inner-steps",
        "4",
        "--budget",
        "8",
        "--counts",
        "lr=2",
        "--logdir",
        str(tmp_path / "x"),
    ]
    r = invoke(*base, *args)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    assert message in lines[0]
    assert "Traceback" not in r.output


def test_run_window_needs_reverse_truncated(tmp_path):
    r = invoke("run", "--task", TASK, "--backend", "greedy", "--window", "3", "--logdir", str(tmp_path / "r"))
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--window" in lines[0] and "reverse-truncated" in lines[0]


def _rows_without_times(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return [{k: v for k, v in r.items() if k not in ("search_seconds", "cpu_seconds")} for r in rows]


def test_jobs_give_the_same_rows_as_one_process(tmp_path: Path) -> None:
    common = ["compare", "--task", TASK, "--methods", "auto,random-constant,hand-picked", "--budget", "8",
              "--inner-steps", "4", "--seeds", "0,1", "--counts", "lr=2", "--retrain-steps", "4", "--val-frac", "0.25",
              "--device", "cpu"]
    one = invoke(*common, "--logdir", str(tmp_path / "one"))
    two = invoke(*common, "--jobs", "2", "--logdir", str(tmp_path / "two"))
    assert one.exit_code == 0 and two.exit_code == 0, (one.output, two.output)
    assert _rows_without_times(tmp_path / "one" / "results.csv") == _rows_without_times(tmp_path / "two" / "results.csv")


def test_a_time_budget_stops_every_method_after_its_first_unit(tmp_path: Path) -> None:
    """1 ms of wall clock: each method finishes the unit it started (an outer step, a trial) and stops."""
    from hpo import CompareConfig, compare

    cfg = CompareConfig(task=TASK, methods=("forward-jvp", "online-greedy", "random-constant", "tpe"), budget=(16,),
                        inner_steps=4, seeds=(0,), counts={"lr": 2}, retrain_steps=4, val_frac=0.25, device="cpu",
                        budget_seconds=0.001, logdir=str(tmp_path / "t"))
    rows, _ = compare(cfg, log=lambda _: None)
    assert {r.method: r.steps for r in rows} == {m: 4 for m in cfg.methods}  # one unit of 4 steps, not 16


def test_cosine_baselines_search_the_peak_of_a_warm_up_cosine_schedule(tmp_path: Path) -> None:
    from hpo import CompareConfig, compare
    from hpo.search.trials import CosineWarmup

    cfg = CompareConfig(task=TASK, methods=("cosine-random", "cosine-tpe"), budget=(12,), inner_steps=4, seeds=(0,),
                        counts={"lr": 2},
                        retrain_steps=4, val_frac=0.25, device="cpu", logdir=str(tmp_path / "c"))
    rows, _ = compare(cfg, log=lambda _: None)
    shape = CosineWarmup()
    for r in rows:
        lr = r.schedule["lr"]
        assert len(lr) == shape.segments and r.steps == 12
        peak = lr[len(lr) // 2 - 1] / shape.factor((len(lr) // 2 - 1 + 0.5) / shape.segments)
        assert 1e-3 <= peak <= 1.0  # the SGD search range of lr
        expected = [peak * shape.factor((j + 0.5) / shape.segments) for j in range(shape.segments)]
        assert lr == pytest.approx(expected, rel=1e-9)
        assert len(r.schedule["momentum"]) == 1 and len(r.schedule["wd"]) == 1


def test_init_starts_the_fds_outer_loop_from_the_given_values(tmp_path: Path) -> None:
    from hpo import CompareConfig, compare

    cfg = CompareConfig(task=TASK, methods=("auto",), budget=(4,), inner_steps=4, seeds=(0,), counts={"lr": 2},
                        init={"lr": 0.3, "momentum": 0.5, "wd": 1e-3}, steps={"lr": 0.05, "momentum": 0.05, "wd": 1e-4},
                        retrain_steps=4, val_frac=0.25, device="cpu", logdir=str(tmp_path / "c"))
    (row,), _ = compare(cfg, log=lambda _: None)
    # one outer step: every value is its start moved by one signed step (no divergence at these values)
    assert all(v in (pytest.approx(0.25), pytest.approx(0.35)) for v in row.schedule["lr"])
    assert row.schedule["momentum"][0] in (pytest.approx(0.45), pytest.approx(0.55))
    assert row.schedule["wd"][0] in (pytest.approx(9e-4), pytest.approx(1.1e-3))


def test_cosine_needs_a_learning_rate_called_lr(tmp_path: Path) -> None:
    from hpo import CompareConfig, ConfigError

    rule_file = tmp_path / "nolr.py"
    rule_file.write_text("from hpo.optimizers import SGDMomentum, HyperSpec\n"
                         "class NoLr(SGDMomentum):\n"
                         "    hyperparameters = (HyperSpec('eta', search_low=0.01, search_high=1.0),)\n")
    with pytest.raises(ConfigError, match="needs a hyperparameter 'lr'"):
        CompareConfig(task=TASK, optimizer=f"{rule_file}:NoLr", methods=("cosine-random",), budget=(4,),
                      inner_steps=4, seeds=(0,), device="cpu")


def test_rows_record_best_so_far_validation_and_test_accuracy_against_seconds(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from hpo import CompareConfig, compare
    from hpo.app.compare import split_holdout
    from hpo.app.compare_outputs import seconds_figure
    from hpo.search.trials import best_so_far, random_search
    from tests.conftest import tiny_task

    cfg = CompareConfig(task=TASK, methods=("random-constant", "hand-picked"), budget=(4, 8, 12), inner_steps=4,
                        seeds=(0, 1), counts={"lr": 2}, retrain_steps=4, val_frac=0.25, device="cpu",
                        logdir=str(tmp_path / "s"))
    rows, paths = compare(cfg, log=lambda _: None)
    search_task, _ = split_holdout(tiny_task(), cfg.holdout_frac)
    for seed in (0, 1):
        trials = random_search(search_task, cfg.resolved_rule, cfg.settings().fds(seed), cfg.resolved_space, 3)
        ours = [r for r in rows if r.method == "random-constant" and r.seed == seed]
        assert [r.search_val_acc for r in ours] == pytest.approx([t.val_acc for t in best_so_far(trials)])
        assert [r.schedule for r in ours] == [t.schedule.to_dict() for t in best_so_far(trials)]
        assert 0 < ours[0].search_seconds < ours[1].search_seconds < ours[2].search_seconds
    assert all(r.search_val_acc is None for r in rows if r.method == "hand-picked")
    csv_rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert [float(r["search_val_acc"]) for r in csv_rows if r["method"] == "random-constant"] == pytest.approx(
        [r.search_val_acc for r in rows if r.method == "random-constant"], abs=1e-4)
    assert paths["seconds"] == tmp_path / "s" / "accuracy_vs_seconds.png" and paths["seconds"].stat().st_size > 1000
    fig = seconds_figure(rows, cfg.methods)
    (line, hand) = fig.axes[0].lines[0], fig.axes[0].lines[-1]
    xs, ys = line.get_data()
    for b, x, y in zip((4, 8, 12), xs, ys):
        at = [r for r in rows if r.method == "random-constant" and r.budget == b]
        assert x == pytest.approx(sum(r.search_seconds for r in at) / 2)
        assert y == pytest.approx(sum(r.test_acc for r in at) / 2)
    hand_acc = sum(r.test_acc for r in rows if r.method == "hand-picked" and r.budget == 12) / 2
    assert list(hand.get_ydata()) == pytest.approx([hand_acc] * 2)  # hand-picked: a horizontal line
    plt.close(fig)
