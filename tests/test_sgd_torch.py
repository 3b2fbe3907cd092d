"""The SGD rule and the torch.optim schedule path against torch.optim.SGD."""

import pytest
import torch
from torch import nn

from hpo.core.schedule import Schedule, segment_index
from hpo.core.torch_scheduler import ScheduleDriver
from hpo.optimizers.sgd import SGDMomentum

DT = torch.float64


def _model_and_data():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(8, 4, generator=gen, dtype=DT) for _ in range(9)]
    return model, xs


def _functional_run(model, xs, hyper_at):
    rule = SGDMomentum()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = rule.init(params)
    for t, x in enumerate(xs):
        p = {k: v.requires_grad_() for k, v in params.items()}
        loss = torch.func.functional_call(model, p, (x,)).pow(2).mean()
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        hyper = {k: torch.tensor(v, dtype=DT) for k, v in hyper_at(t).items()}
        params, state = rule.step({k: v.detach() for k, v in p.items()}, state, grads, hyper, t)
    return params


def _torch_run(model, xs, opt, driver=None):
    for x in xs:
        if driver is not None:
            driver.apply()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if driver is not None:
            driver.advance()
    return dict(model.named_parameters())


@pytest.mark.parametrize("hyper", [
    {"lr": 0.1, "momentum": 0.9, "wd": 5e-4},
    {"lr": 0.3, "momentum": 0.0, "wd": 0.0},
    {"lr": 0.05, "momentum": 0.5, "wd": 0.1},
])
def test_sgd_rule_equals_torch_sgd(hyper):
    model, xs = _model_and_data()
    ours = _functional_run(model, xs, lambda t: hyper)
    theirs = _torch_run(model, xs, torch.optim.SGD(model.parameters(), lr=hyper["lr"], momentum=hyper["momentum"],
                                                    weight_decay=hyper["wd"]))
    moved = False
    for k in ours:
        assert torch.allclose(ours[k], theirs[k].detach(), rtol=1e-12, atol=1e-14), k
    moved = any(not torch.allclose(ours[k], p.detach()) for k, p in _model_and_data()[0].named_parameters())
    assert moved


def test_schedule_driver_equals_rule_with_schedule():
    sched = Schedule({"lr": torch.tensor([0.2, 0.05, 0.1], dtype=DT), "momentum": torch.tensor([0.0, 0.9], dtype=DT),
                      "wd": torch.tensor([1e-3], dtype=DT)})
    model, xs = _model_and_data()
    horizon = len(xs)
    ours = _functional_run(model, xs, lambda t: sched.at(t, horizon))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    driver = ScheduleDriver(opt, SGDMomentum(), sched, horizon)
    seen = []
    orig_apply = driver.apply

    def spy():
        h = orig_apply()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        return h

    driver.apply = spy
    theirs = _torch_run(model, xs, opt, driver)
    for k in ours:
        assert torch.allclose(ours[k], theirs[k].detach(), rtol=1e-12, atol=1e-14), k
    assert seen == [(0.2, 1e-300)] * 3 + [(0.05, 1e-300), (0.05, 1e-300), (0.05, 0.9)] + [(0.1, 0.9)] * 3
    assert [segment_index(t, 9, 3) for t in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_driver_step_and_past_horizon():
    model, _ = _model_and_data()
    sched = Schedule.constant({"lr": 0.1, "momentum": 0.9, "wd": 0.0}, {"lr": 2})
    sched = Schedule({**sched.values, "lr": torch.tensor([0.1, 0.01], dtype=DT)})
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    driver = ScheduleDriver(opt, SGDMomentum(), sched, horizon=4)
    driver.apply()
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        driver.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.1, 0.1, 0.01, 0.01, 0.01, 0.01]
    assert driver.state_dict() == {"t": 5}
    with pytest.raises(ValueError):
        ScheduleDriver(opt, SGDMomentum(), sched, horizon=0)


def test_retrain_torch_path_equals_functional_fallback():
    """The retrain through torch.optim + ScheduleDriver equals the rule's own step loop."""
    from hpo.search.retrain import retrain
    from tests.conftest import TorchlessSGD, tiny_mlp_task, tiny_problem

    task = tiny_mlp_task(tiny_problem())
    sched = Schedule({"lr": torch.tensor([0.3, 0.1], dtype=DT), "momentum": torch.tensor([0.5], dtype=DT),
                      "wd": torch.tensor([1e-3], dtype=DT)})
    a = retrain(task, SGDMomentum(), sched, 20, seed=0, dtype=DT)
    b = retrain(task, TorchlessSGD(), sched, 20, seed=0, dtype=DT)
    assert a.test_loss == pytest.approx(b.test_loss, rel=1e-10)
    assert a.test_acc == b.test_acc and a.steps == 20
