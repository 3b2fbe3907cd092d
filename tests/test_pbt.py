"""``pbt``: Ray Tune's PopulationBasedTraining at a tiny budget; the best member's trajectory replayed as a schedule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

import hpo.search.pbt as pbt_search
from hpo import CompareConfig, compare
from hpo.optimizers.sgd import SGDMomentum
from hpo.search.pbt import Report, interval_bounds, replay_schedule

FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"


def children() -> list[int]:
    """Processes whose parent is this one (Ray's must all be gone after a run)."""
    me, out = str(os.getpid()), []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and stat.rsplit(")", 1)[1].split()[1] == me:
            out.append(int(d.name))
    return out


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list[Report], str]:
    """One comparison with ``pbt`` only: 3 members (budget 12 = 3 x T), T = 4 steps, 4 intervals of one step."""
    import ray

    reports: list[Report] = []
    real = pbt_search.run_pbt

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        reports.extend(out)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(pbt_search, "run_pbt", keep)
    before = children()
    printed: list[str] = []
    try:
        cfg = CompareConfig(task=TASK, methods=("pbt",), budget=(8, 12), inner_steps=4, seeds=(0,), counts={"lr": 2},
                            retrain_steps=4, val_frac=0.25, device="cpu",
                            logdir=str(tmp_path_factory.mktemp("pbt") / "c"))
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rows, _ = compare(cfg, log=printed.append)
    finally:
        mp.undo()
    assert not ray.is_initialized()
    assert set(children()) <= set(before), "Ray left processes behind"
    return rows, reports, out.getvalue()


def test_pbt_spends_the_budget_with_a_population_of_budget_over_horizon(pbt_run) -> None:
    rows, reports, stdout = pbt_run
    assert stdout == ""  # Ray is quiet: no tables on stdout
    assert {r.member for r in reports}.__len__() == 3  # 12 // 4 members
    assert {r.interval for r in reports} == {1, 2, 3, 4}  # T = 4 steps, min(10, T) intervals
    assert len(reports) == 3 * 4  # every member reported after every interval
    assert [(r.budget, r.steps) for r in rows] == [(8, 6), (12, 12)]  # 3 members x 2 steps <= 8; 3 x 4 = 12
    assert all(r.steps <= r.budget for r in rows)
    # stamped when the interval's last member reported: later for the later point, within the search
    assert 0 < rows[0].search_seconds < rows[1].search_seconds
    assert rows[1].search_seconds - rows[0].search_seconds == pytest.approx(
        max(r.wall for r in reports if r.interval == 4) - max(r.wall for r in reports if r.interval == 2))
    assert rows[1].cpu_seconds >= sum(r.cpu for r in reports) > 0  # the members' CPU time is counted


def test_pbt_incumbent_is_the_best_final_members_trajectory_piecewise_constant(pbt_run) -> None:
    rows, reports, _ = pbt_run
    rule = SGDMomentum()
    final = max((r for r in reports if r.interval == 4), key=Report.score)
    last = rows[-1]
    assert last.search_val_acc == pytest.approx(final.val_acc)
    schedule = replay_schedule(final.values(), rule.hyper_names, 4)
    assert last.schedule == schedule.to_dict()
    schedule.check(rule)  # valid for SGD: every value in range
    for name in rule.hyper_names:  # one value per perturbation interval, each the member's value in that interval
        assert last.schedule[name] == [step[name] for step in final.values()]
        space = CompareConfig(task=TASK, budget=(8,), inner_steps=4, counts={"lr": 2}).resolved_space[name]
        assert all(space.low <= v <= space.high for v in last.schedule[name])
    dense = schedule.dense(4)
    assert [float(dense["lr"][t]) for t in range(4)] == last.schedule["lr"]  # interval j = step j when T = 4


def test_exploiting_members_inherit_their_donors_trajectory(pbt_run) -> None:
    """A member's trajectory up to interval j - 1 is some member's trajectory at j - 1 (the donor's, after exploit)."""
    _, reports, _ = pbt_run
    by_interval = {j: [r.values() for r in reports if r.interval == j] for j in range(1, 5)}
    exploited = 0
    for j in range(2, 5):
        for r in (r for r in reports if r.interval == j):
            prefix = r.values()[:j - 1]
            assert prefix in by_interval[j - 1]
            own = next(x for x in reports if x.member == r.member and x.interval == j - 1)
            exploited += prefix != own.values()
    assert exploited >= 1  # with 3 members, the worst copies the best at every perturbation


def test_replay_schedule_holds_the_last_values_of_a_short_trajectory() -> None:
    s = replay_schedule([{"lr": 0.1, "momentum": 0.5, "wd": 0.0}, {"lr": 0.2, "momentum": 0.6, "wd": 0.0}],
                        ("lr", "momentum", "wd"), 4)
    assert s.to_dict() == {"lr": [0.1, 0.2, 0.2, 0.2], "momentum": [0.5, 0.6, 0.6, 0.6], "wd": [0.0] * 4}
    assert interval_bounds(10, 4) == [0, 3, 5, 8, 10]
    assert [int(x) for x in s.dense(10)["lr"].mul(10).round()] == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]


def test_pbt_stops_at_its_time_budget_after_one_interval_of_every_member(tmp_path: Path) -> None:
    """1 ms: every member finishes the interval it is in (one step here), and none starts another."""
    cfg = CompareConfig(task=TASK, methods=("pbt",), budget=(12,), inner_steps=4, seeds=(0,), counts={"lr": 2},
                        retrain_steps=4, val_frac=0.25, device="cpu", budget_seconds=0.001,
                        logdir=str(tmp_path / "t"))
    rows, _ = compare(cfg, log=lambda _: None)
    assert [r.steps for r in rows] == [3]  # 3 members x 1 step, not 3 x 4
    assert all(len(v) == 4 and len(set(v)) == 1 for v in rows[0].schedule.values())  # one interval, held to the end


def test_pbt_needs_a_budget_of_two_members_and_says_so_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hpo.cli import cli

    r = CliRunner().invoke(cli, ["compare", "--task", TASK, "--methods", "pbt", "--budget", "7", "--inner-steps", "4",
                                 "--counts", "lr=2", "--logdir", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.output == ("Error: Invalid value for '--methods': pbt: a population of 2 needs a budget of at least 2 "
                        "inner runs (8 steps), got 7\n")


def test_environment_is_set_for_the_block_and_restored(monkeypatch) -> None:
    from hpo.search.pbt import environment

    monkeypatch.setenv("HPO_TEST_KEPT", "old")
    monkeypatch.delenv("HPO_TEST_NEW", raising=False)
    with environment(HPO_TEST_KEPT="1", HPO_TEST_NEW="2"):
        assert (os.environ["HPO_TEST_KEPT"], os.environ["HPO_TEST_NEW"]) == ("1", "2")
    assert os.environ["HPO_TEST_KEPT"] == "old" and "HPO_TEST_NEW" not in os.environ
