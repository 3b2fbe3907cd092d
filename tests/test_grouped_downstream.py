"""Grouped schedules downstream: files, the outer update, ScheduleDriver, retrain, run, resume, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import hpo
from hpo import ConfigError, RetrainConfig, RunConfig
from hpo.app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from hpo.app.retrain import retrain_schedule
from hpo.core.grouping import grouped_rule, resolve_grouping
from hpo.core.schedule import Schedule
from hpo.core.torch_scheduler import ScheduleDriver
from hpo.optimizers import Adam, SGDMomentum
from hpo.optimizers.grouped import GroupedRule
from hpo.outer.base import OuterState
from hpo.outer.sign import SignDescent
from hpo.reporting.report import format_values
from hpo.reporting.schedule_plot import heatmap_figure, schedule_figure
from hpo.search.retrain import retrain
from tests.conftest import TorchlessSGD, tiny_mlp_task, tiny_problem

DT = torch.float64
FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"
SMALL = {"task": TASK, "inner_steps": (6,), "counts": {"lr": 2}, "val_frac": 0.25, "device": "cpu",
         "retrain_steps": 6, "groups": {"lr": "layer", "wd": "bias-vs-rest"}}


def grouped_schedule() -> Schedule:
    return Schedule({"lr": torch.tensor([[0.2, 0.05, 0.1], [0.1, 0.3, 0.02]], dtype=DT),
                     "momentum": torch.tensor([[0.0, 0.9], [0.5, 0.7]], dtype=DT),
                     "wd": torch.tensor([1e-3], dtype=DT)}, {"lr": ("0", "2"), "momentum": ("0", "2")})


def test_schedule_file_round_trip_and_old_files(tmp_path: Path) -> None:
    s = grouped_schedule()
    assert s.counts == {"lr": 3, "momentum": 2, "wd": 1} and s.group_counts == {"lr": 2, "momentum": 2}
    assert s.size == 6 + 4 + 1
    s.save(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["schedule"]["lr"] == [[0.2, 0.05, 0.1], [0.1, 0.3, 0.02]] and data["groups"]["lr"] == ["0", "2"]
    back = Schedule.load(tmp_path / "s.json")
    assert all(torch.equal(back.values[k], s.values[k]) for k in s.values) and back.groups == s.groups
    assert s.at(4, 9) == {"lr": [0.05, 0.3], "momentum": [0.0, 0.5], "wd": 1e-3}
    assert s.dense(9)["lr"].shape == (2, 9)
    old = Schedule.from_dict({"lr": [0.1, 0.2], "momentum": [0.9], "wd": [0.0]})  # a file from before groups
    assert old.group_counts == {} and old.values["lr"].shape == (2,)
    with pytest.raises(ValueError, match="groups of different lengths"):
        Schedule.from_dict({"lr": [[0.1, 0.2], [0.3]]})
    wide = old.broadcast_groups({"lr": 3})
    assert wide.values["lr"].tolist() == [[0.1, 0.2]] * 3
    with pytest.raises(ValueError, match="has 2 groups but its grouping rule gives 3"):
        s.broadcast_groups({"lr": 3, "momentum": 2})


def test_outer_update_is_elementwise_on_tables() -> None:
    specs = {sp.name: sp for sp in SGDMomentum().hyperparameters}
    s = grouped_schedule()
    state = OuterState.start(s.values, {"lr": 0.1, "momentum": 0.1, "wd": 3e-4})
    hg = {"lr": torch.tensor([[1.0, -1.0, 0.0], [-2.0, float("nan"), 3.0]], dtype=DT),
          "momentum": torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=DT), "wd": torch.tensor([-1.0], dtype=DT)}
    new = SignDescent().update(state, hg, specs)
    torch.testing.assert_close(new.values["lr"], torch.tensor([[0.1, 0.15, 0.1], [0.2, 0.3, 0.0]], dtype=DT))
    assert new.values["momentum"].shape == (2, 2) and new.values["wd"].shape == (1,)
    flipped = SignDescent().update(new, {k: -v for k, v in hg.items()}, specs)
    assert flipped.steps["lr"].tolist() == [[0.05, 0.05, 0.1], [0.05, 0.1, 0.05]]


def test_console_summary_names_the_groups() -> None:
    values = {"lr": [[0.1, 0.2], [0.3, 0.4]], "wd": [0.0]}
    assert format_values(values, groups={"lr": ["conv1", "fc"]}) == "lr[conv1]=[0.1 0.2] lr[fc]=[0.3 0.4] wd=[0]"
    assert format_values(values) == "lr[0]=[0.1 0.2] lr[1]=[0.3 0.4] wd=[0]"


def test_pictures_do_not_fail_on_grouped_schedules(tmp_path: Path) -> None:
    s = grouped_schedule()
    assert len(schedule_figure(s).axes) == 3 + 2  # one panel per type, plus a colour bar per heat map
    fig = heatmap_figure(s, "lr", "lr")
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def model_and_data():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    gen = torch.Generator().manual_seed(3)
    return model, [torch.randn(8, 4, generator=gen, dtype=DT) for _ in range(9)]


@pytest.mark.parametrize("make", [SGDMomentum, Adam], ids=["sgd", "adam"])
def test_schedule_driver_with_param_groups_equals_the_functional_rule(make) -> None:
    model, xs = model_and_data()
    horizon = len(xs)
    base = make()
    if base.name == "adam":
        sched = Schedule({"lr": torch.tensor([[0.02, 0.01, 0.03], [0.005, 0.02, 0.01]], dtype=DT),
                          "beta1": torch.tensor([[0.8, 0.9], [0.7, 0.85]], dtype=DT),
                          "beta2": torch.tensor([0.99], dtype=DT), "wd": torch.tensor([1e-3], dtype=DT)})
        groups = {"lr": "layer", "beta1": "bias-vs-rest"}
    else:
        sched = grouped_schedule()
        groups = {"lr": "layer", "momentum": "layer"}
    named = dict(model.named_parameters())
    rule = grouped_rule(base, groups, named)
    assert isinstance(rule, GroupedRule) and len(rule.cells) > 1
    params = {k: v.detach().clone() for k, v in named.items()}
    state = rule.init(params)
    for t, x in enumerate(xs):
        p = {k: v.requires_grad_() for k, v in params.items()}
        loss = torch.func.functional_call(model, p, (x,)).pow(2).mean()
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        from hpo.core.step import hyper_at_step

        params, state = rule.step({k: v.detach() for k, v in p.items()}, state, grads,
                                  hyper_at_step(sched.values, t, horizon), t)

    grouping = resolve_grouping(groups, named)
    opt = base.torch_optimizer(grouping.param_groups(model.named_parameters()), {k: 0.0 for k in sched.values})
    driver = ScheduleDriver(opt, base, sched, horizon)
    for x in xs:
        driver.apply()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        driver.advance()
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), params[k], rtol=1e-12, atol=1e-14)
    assert len({g["lr"] for g in opt.param_groups}) > 1


def test_schedule_driver_refuses_param_groups_without_group_indices() -> None:
    model, _ = model_and_data()
    grouping = resolve_grouping({"lr": "layer"}, dict(model.named_parameters()))
    with pytest.raises(TypeError, match="need named parameters"):
        grouping.param_groups(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="param group 0 has no group index for lr"):
        ScheduleDriver(opt, SGDMomentum(), grouped_schedule(), 9).apply()


def test_grouped_retrain_through_torch_equals_the_functional_fallback() -> None:
    p = tiny_problem()
    task = tiny_mlp_task(p)
    sched = grouped_schedule()
    a = retrain(task, grouped_rule(SGDMomentum(), {"lr": "layer", "momentum": "layer"}, p.params), sched, 20, 0, DT)
    b = retrain(task, grouped_rule(TorchlessSGD(), {"lr": "layer", "momentum": "layer"}, p.params), sched, 20, 0, DT)
    assert a.test_loss == pytest.approx(b.test_loss, rel=1e-10) and a.test_acc == b.test_acc
    flat = retrain(task, SGDMomentum(), Schedule({k: v[0] if v.dim() == 2 else v for k, v in sched.values.items()}),
                   20, 0, DT)
    assert flat.test_loss != pytest.approx(a.test_loss, rel=1e-6)  # the groups matter
    with pytest.raises(ValueError, match="do not match the grouping"):
        retrain(task, SGDMomentum(), sched, 20, 0, DT)


def test_grouped_run_writes_groups_everywhere(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = hpo.run(RunConfig(**SMALL, outer_steps=2, grad_clip=0.05, logdir=str(tmp_path / "g")))
    assert result.schedule.values["lr"].shape == (2, 2) and result.schedule.values["wd"].shape == (2, 1)
    assert result.schedule.values["momentum"].shape == (1,)
    saved = json.loads((tmp_path / "g" / "schedule.json").read_text())
    assert saved["groups"] == {"lr": ["0", "2"], "wd": ["bias-norm", "rest"]}
    assert saved["config"]["groups"] == {"lr": "layer", "wd": "bias-vs-rest"}
    assert len(saved["schedule"]["lr"]) == 2 and len(saved["history"][1]["hypergrad"]["lr"][0]) == 2
    assert saved["history"][0]["groups"] == {"lr": ["0", "2"], "wd": ["bias-norm", "rest"]}
    assert any("lr[0]=[" in line and "wd[rest]=[" in line for line in result.summary)
    ckpt = load_checkpoint(tmp_path / "g" / "checkpoint.pt")
    assert ckpt.state.values["lr"].shape == (2, 2) and ckpt.config["groups"] == {"lr": "layer", "wd": "bias-vs-rest"}
    acc = EventAccumulator(str(tmp_path / "g"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"heatmap/lr", "heatmap/wd", "schedule"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("heatmap/lr")] == [0, 1]
    assert {"hyper/lr/0/1", "hyper/wd/rest/0", "hypergrad/lr/2/0", "hyper/momentum/0"} <= set(acc.Tags()["scalars"])
    assert (tmp_path / "g" / "schedule.png").stat().st_size > 1000

    # hpo retrain reads the grouping (and the gradient clamp) the file records, and reproduces the run's own retrain
    again = retrain_schedule(RetrainConfig(schedule=str(tmp_path / "g" / "schedule.json"), task=TASK, device="cpu"))
    assert again.test_loss == pytest.approx(result.learned.test_loss, rel=1e-6)
    rule = grouped_rule(SGDMomentum(), SMALL["groups"], dict(nn.Sequential(nn.Linear(5, 6), nn.Tanh(),
                                                                           nn.Linear(6, 3)).named_parameters()))
    from tests.conftest import tiny_task

    unclamped = retrain(tiny_task(), rule, result.schedule, 6, 7919, torch.float32, "cpu")
    assert unclamped.test_loss != pytest.approx(result.learned.test_loss, rel=1e-6)  # the clamp is active
    with pytest.raises(ConfigError, match="gives the groups") as e:
        retrain_schedule(RetrainConfig(schedule=str(tmp_path / "g" / "schedule.json"), task=TASK, device="cpu",
                                       groups={"lr": "param", "wd": "bias-vs-rest"}))
    assert e.value.field == "groups"


def test_grouped_run_then_resume_equals_a_straight_run(tmp_path: Path) -> None:
    straight = hpo.run(RunConfig(**SMALL, outer_steps=3, logdir=str(tmp_path / "a")))
    hpo.run(RunConfig(**SMALL, outer_steps=1, logdir=str(tmp_path / "b")))
    resumed = hpo.resume(tmp_path / "b", {"outer_steps": 3, "task": TASK})
    assert all(torch.equal(resumed.schedule.values[k], straight.schedule.values[k]) for k in straight.schedule.values)
    assert [r.values for r in resumed.history] == [r.values for r in straight.history]
    assert resumed.learned.test_loss == straight.learned.test_loss
    with pytest.raises(ConfigError, match="conflicts with the run being resumed") as e:
        hpo.resume(tmp_path / "b", {"outer_steps": 4, "task": TASK, "groups": {"lr": "param"}})
    assert e.value.field == "groups"


def test_a_checkpoint_that_does_not_fit_the_groups_is_refused(tmp_path: Path) -> None:
    hpo.run(RunConfig(**SMALL, outer_steps=1, logdir=str(tmp_path / "c")))
    path = tmp_path / "c" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    flat = {k: v.reshape(-1) for k, v in ckpt.state.values.items()}  # (2, 2) -> (4,): the shapes lie
    state = OuterState(flat, {k: v.reshape(-1) for k, v in ckpt.state.steps.items()},
                       {k: v.reshape(-1) for k, v in ckpt.state.signs.items()}, ckpt.state.k)
    save_checkpoint(path, Checkpoint(state, ckpt.history, ckpt.config, ckpt.search_seconds))
    with pytest.raises(ConfigError, match="does not fit the parameter groups") as e:
        hpo.resume(tmp_path / "c", {"outer_steps": 2, "task": TASK})
    assert e.value.field == "resume"


def test_schedule_init_shared_starts_every_group(tmp_path: Path) -> None:
    path = tmp_path / "start.json"
    Schedule.constant({"lr": 0.05, "momentum": 0.5, "wd": 1e-4}, {"lr": 2}).save(path)
    cfg = RunConfig(**{k: v for k, v in SMALL.items() if k != "counts"}, outer_steps=1, schedule_init=str(path),
                    logdir=str(tmp_path / "s"))
    result = hpo.run(cfg)
    first = result.history[0]
    assert len(first.values["lr"]) == 2 and len(first.values["wd"]) == 2


def test_a_diverged_grouped_run_lowers_every_started_group(tmp_path: Path) -> None:
    from hpo.reporting.report import divergence_text

    result = hpo.run(RunConfig(**SMALL, outer_steps=1, init={"lr": 1e30}, logdir=str(tmp_path / "d")))
    record = result.history[0]
    assert record.diverged
    lowered = record.extra["lowered"]["lr"]
    assert lowered and all(":" in p for p in lowered) and {p.split(":")[0] for p in lowered} == {"0", "1"}
    assert "lowered lr[0:0" in divergence_text(record)
    assert (result.schedule.values["lr"] <= 0.5e30).all()  # halved at least
