"""Same seed, same device, same result: FDS runs, resumed runs and retrains repeat exactly on CPU."""

from __future__ import annotations

import dataclasses
import json

import torch
from torch import nn

from hpo.app.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from hpo.backends.forward import ForwardManualBackend
from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.search.fds import run_fds
from hpo.search.inner_runs import FDSConfig
from hpo.search.retrain import retrain
from hpo.tasks.base import Task, classification_task


def tiny_task() -> Task:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 6, generator=g)
    y = torch.randint(0, 3, (80,), generator=g)
    return classification_task("tiny", x, y, x[:20], y[:20],
                               lambda: nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)), 16)


CONFIG = FDSConfig(outer_steps=2, inner_steps=(8,), counts={"lr": 2}, batch_size=16, val_frac=0.25, seed=4)


def same_history(a, b) -> bool:
    strip = [{k: v for k, v in r.__dict__.items() if k != "seconds"} for r in a]
    return strip == [{k: v for k, v in r.__dict__.items() if k != "seconds"} for r in b]


def test_same_seed_same_schedule_and_global_rng_untouched() -> None:
    task, rule, backend = tiny_task(), SGDMomentum(), ForwardManualBackend()
    rng = torch.get_rng_state()
    a = run_fds(task, rule, backend, CONFIG)
    assert torch.equal(torch.get_rng_state(), rng), "the outer loop must not consume the global RNG"
    b = run_fds(task, rule, backend, CONFIG)
    assert all(torch.equal(a.schedule.values[n], b.schedule.values[n]) for n in a.schedule.values)
    assert same_history(a.history, b.history)
    c = run_fds(task, rule, backend, dataclasses.replace(CONFIG, seed=5))
    assert c.history[0].hypergrad != a.history[0].hypergrad, "a different seed must change the run"


def test_continuing_from_a_saved_checkpoint_repeats_the_run(tmp_path) -> None:
    task, rule, backend = tiny_task(), SGDMomentum(), ForwardManualBackend()
    straight = run_fds(task, rule, backend, CONFIG)
    first = run_fds(task, rule, backend, dataclasses.replace(CONFIG, outer_steps=1))
    save_checkpoint(checkpoint_path(tmp_path), Checkpoint(first.state, first.history, {}))
    ck = load_checkpoint(checkpoint_path(tmp_path))
    rest = run_fds(task, rule, backend, CONFIG, state=ck.state, history=ck.history)
    assert all(torch.equal(straight.schedule.values[n], rest.schedule.values[n]) for n in straight.schedule.values)
    assert same_history(straight.history, rest.history)


def test_retrain_is_deterministic() -> None:
    task, rule = tiny_task(), SGDMomentum()
    sched = Schedule.constant({"lr": 0.3, "momentum": 0.9, "wd": 1e-3}, {"lr": 3})
    a = retrain(task, rule, sched, 12, seed=7)
    b = retrain(task, rule, sched, 12, seed=7)
    assert a == b


def test_hpo_retrain_reproduces_the_runs_learned_result(tmp_path) -> None:
    from click.testing import CliRunner

    from hpo.cli import cli

    env = {"HPO_DATA": str(tmp_path / "data")}
    logdir = tmp_path / "run"
    run = CliRunner().invoke(cli, ["run", "--samples", "100", "--batch-size", "16", "--outer-steps", "1",
                                   "--inner-steps", "6", "--counts", "lr=2", "--retrain-steps", "5", "--seed", "2",
                                   "--device", "cpu", "--no-progress", "--logdir", str(logdir)], env=env)
    assert run.exit_code == 0, run.output
    learned = json.loads((logdir / "schedule.json").read_text())["results"]["learned"]
    again = CliRunner().invoke(cli, ["retrain", "--schedule", str(logdir / "schedule.json"), "--samples", "100",
                                     "--seed", "2", "--device", "cpu"], env=env)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().startswith(f"test_acc={learned['test_acc']:.4f}  test_loss={learned['test_loss']:.4f}")
