"""The application layer from Python: typed configurations, run, resume, compare, retrain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import hpo
from hpo import CompareConfig, ConfigError, RetrainConfig, RunConfig
from hpo.app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from hpo.app.registry import SEARCH_METHODS, resolve_method
from hpo.cli import cli
from hpo.outer.base import OuterState
from hpo.search.base import SearchMethod
from hpo.search.fds import FDSSearch

FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"
SMALL = {"task": TASK, "inner_steps": (6,), "counts": {"lr": 2}, "val_frac": 0.25, "device": "cpu",
         "retrain_steps": 6}


@pytest.mark.parametrize(("changes", "field"), [
    ({"outer_steps": 0}, "outer_steps"),
    ({"seed": "0"}, "seed"),
    ({"dtype": "float16"}, "dtype"),
    ({"inner_steps": 300}, "inner_steps"),
    ({"retrain_steps": True}, "retrain_steps"),
    ({"counts": {"lr": 10**7}}, "counts"),
    ({"inner_steps": (10**12,)}, "inner_steps"),
    ({"init": {"lr": -1.0}}, "init"),
    ({"optimizer": "adamw9"}, "optimizer"),
    ({"backend": "magic"}, "backend"),
    ({"window": 5}, "window"),
    ({"outer": "rprop", "outer_options": {"grow": 0.9}}, "outer_options"),
    ({"outer": "newton"}, "outer"),
    ({"outer_options": {"grow": 1.2}}, "outer_options"),
    ({"compile": True, "backend": "greedy"}, "compile"),
    ({"task": "imagenet"}, "task"),
    ({"augment": "flip"}, "augment"),
    ({"baseline": {"speed": 3.0}}, "baseline"),
    ({"hz_clip": 1.0, "backend": "reverse-checkpointed"}, "hz_clip"),
    ({"task": "cifar10-lenet", "augment": "bogus"}, "augment"),
])
def test_config_errors_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert info.value.field == field
    assert "--" not in info.value.message  # the core never names a CLI flag


def test_unknown_setting_in_a_stored_config_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"seed": 0, "warp_drive": 9})
    assert info.value.field == "warp_drive"


def test_config_round_trips_through_plain_values() -> None:
    cfg = RunConfig(**SMALL, outer_steps=2)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_run_then_resume_from_python_equals_a_straight_run(tmp_path: Path) -> None:
    straight = hpo.run(RunConfig(**SMALL, outer_steps=3, logdir=str(tmp_path / "a")))
    hpo.run(RunConfig(**SMALL, outer_steps=1, logdir=str(tmp_path / "b")))
    resumed = hpo.resume(tmp_path / "b", {"outer_steps": 3, "task": TASK})  # a plugin task is named again
    assert len(resumed.history) == 3
    assert resumed.schedule.to_dict() == straight.schedule.to_dict()
    assert resumed.learned.test_acc == straight.learned.test_acc
    stored = load_checkpoint(tmp_path / "b" / "checkpoint.pt").config
    assert stored["outer_steps"] == 3 and stored["task"] == TASK


def test_resume_accepts_settings_that_resolve_as_stored(tmp_path: Path) -> None:
    hpo.run(RunConfig(**SMALL, outer_steps=1, logdir=str(tmp_path / "r")))
    # counts lr=2 was given; momentum=1 is the rule's default count, so it is no conflict
    out = hpo.resume(tmp_path / "r", {"task": TASK, "counts": {"lr": 2, "momentum": 1}, "outer_steps": 2})
    assert len(out.history) == 2
    with pytest.raises(ConfigError) as info:
        hpo.resume(tmp_path / "r", {"task": TASK, "outer_steps": 1, "warp": 1})
    assert info.value.field == "warp"


def test_resume_refuses_fewer_outer_steps_than_done(tmp_path: Path) -> None:
    hpo.run(RunConfig(**SMALL, outer_steps=2, logdir=str(tmp_path / "r")))
    with pytest.raises(ConfigError) as info:
        hpo.resume(tmp_path / "r", {"task": TASK, "outer_steps": 1})
    assert info.value.field == "outer_steps"


def test_resume_refuses_a_changed_setting(tmp_path: Path) -> None:
    hpo.run(RunConfig(**SMALL, outer_steps=1, logdir=str(tmp_path / "r")))
    with pytest.raises(ConfigError) as info:
        hpo.resume(tmp_path / "r", {"seed": 4, "task": TASK})
    assert info.value.field == "seed" and "conflicts with the run being resumed" in info.value.message


def test_resume_never_imports_code_a_checkpoint_names(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    payload = tmp_path / "payload.py"
    payload.write_text(f"open({str(marker)!r}, 'w').close()\n")
    state = OuterState.start({"lr": torch.zeros(2), "momentum": torch.zeros(1), "wd": torch.zeros(1)},
                             {"lr": 0.1, "momentum": 0.1, "wd": 3e-4})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(run_dir / "checkpoint.pt", Checkpoint(state, (), {**SMALL, "optimizer": f"{payload}:rule"}))
    with pytest.raises(ConfigError) as info:
        hpo.resume(run_dir)
    assert info.value.field == "optimizer" and "name it again" in info.value.message
    assert not marker.exists()


def test_cli_and_python_give_the_same_schedule(tmp_path: Path) -> None:
    py = hpo.run(RunConfig(**SMALL, outer_steps=2, logdir=str(tmp_path / "py")))
    r = CliRunner().invoke(cli, ["run", "--task", TASK, "--inner-steps", "6", "--counts", "lr=2", "--val-frac", "0.25",
                                 "--device", "cpu", "--retrain-steps", "6", "--outer-steps", "2", "--no-progress",
                                 "--logdir", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    cli_out = json.loads((tmp_path / "cli" / "schedule.json").read_text())
    assert cli_out["schedule"] == py.schedule.to_dict()
    assert cli_out["config"]["outer_steps"] == 2


def test_version_1_checkpoint_options_are_read_as_a_configuration(tmp_path: Path) -> None:
    state = OuterState.start({"lr": torch.zeros(2), "momentum": torch.zeros(1), "wd": torch.zeros(1)},
                             {"lr": 0.1, "momentum": 0.1, "wd": 3e-4})
    data = Checkpoint(state, ()).to_dict()
    data.pop("config")
    data["version"] = 1
    data["options"] = {"init_values": {"lr": 0.0}, "step_sizes": {"lr": 0.1}, "compile_step": False,
                       "progress": True, "resume": None, "seed": 3}
    path = tmp_path / "checkpoint.pt"
    torch.save(data, path)
    ck = load_checkpoint(path)
    assert ck.config == {"init": {"lr": 0.0}, "steps": {"lr": 0.1}, "compile": False, "seed": 3}
    save_checkpoint(path, ck)
    assert load_checkpoint(path).config == ck.config


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_compare_runs_adam_with_the_default_methods(optimizer: str, tmp_path: Path) -> None:
    """Each rule carries its own search ranges, so the default methods work for every built-in rule."""
    cfg = CompareConfig(task=TASK, optimizer=optimizer, budget=(8,), inner_steps=4, seeds=(0,), counts={"lr": 2},
                        retrain_steps=4, val_frac=0.25, device="cpu", logdir=str(tmp_path))
    assert set(cfg.resolved_space) == {"lr", "beta1", "beta2", "wd"}
    rows, paths = hpo.compare(cfg, log=lambda _: None)
    assert {r.method for r in rows} == set(cfg.methods) and paths["csv"].exists()


def test_compare_cli_with_adam_exits_0(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compare", "--task", TASK, "--optimizer", "adam", "--budget", "8", "--inner-steps", "4",
                                 "--seeds", "0", "--counts", "lr=2", "--retrain-steps", "4", "--val-frac", "0.25",
                                 "--device", "cpu", "--logdir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output


def test_every_search_method_shares_one_interface() -> None:
    for name in SEARCH_METHODS:
        assert isinstance(resolve_method(name), SearchMethod)
    method = resolve_method("forward-jvp")
    assert isinstance(method, FDSSearch) and method.backend.name == "forward-jvp"
    with pytest.raises(ValueError, match="search method"):
        resolve_method("magic")


def test_retrain_uses_what_schedule_json_records(tmp_path: Path) -> None:
    hpo.run(RunConfig(task="mnist1d-mlp", optimizer="adam", outer_steps=1, inner_steps=(8,), samples=200,
                      device="cpu", logdir=str(tmp_path / "a")))
    cfg = RetrainConfig(schedule=str(tmp_path / "a" / "schedule.json"), device="cpu")
    assert cfg.resolved_rule.name == "adam" and cfg.resolved_task == "mnist1d-mlp" and cfg.resolved_steps == 8
    assert cfg.resolved["samples"] == 200 and cfg.resolved["seed"] == 0  # as the run recorded them
    r = CliRunner().invoke(cli, ["retrain", "--schedule", str(tmp_path / "a" / "schedule.json"), "--samples", "200",
                                 "--device", "cpu"])
    assert r.exit_code == 0 and "test_acc=" in r.output, r.output


def test_a_cut_tangent_gets_one_warning_line(tmp_path: Path) -> None:
    rule_file = tmp_path / "cut.py"
    rule_file.write_text(
        "import torch\n"
        "from hpo.optimizers import SGDMomentum\n"
        "class Cut(SGDMomentum):\n"
        "    hand_tangent = False\n"
        "    def step(self, params, state, grads, hyper, t):\n"
        "        lr = float(hyper['lr'])\n"
        "        return super().step(params, state, grads, {**hyper, 'lr': torch.tensor(lr)}, t)\n")
    lines: list[str] = []

    from hpo.core.callbacks import Callbacks

    class Messages(Callbacks):
        def on_message(self, text: str) -> None:
            lines.append(text)

    hpo.run(RunConfig(**{**SMALL, "backend": "forward-jvp", "optimizer": f"{rule_file}:Cut",
                         "init": {"lr": 0.1}}, outer_steps=2, logdir=str(tmp_path / "run")), callbacks=[Messages()])
    warnings = [x for x in lines if x.startswith("warning: the hypergradient of")]
    assert len(warnings) == 1 and "of lr was exactly zero" in warnings[0] and "float()" in warnings[0]
    assert (tmp_path / "run" / "schedule.png").stat().st_size > 0


def test_healthy_run_has_no_zero_hypergradient_warning(tmp_path: Path) -> None:
    from hpo.app.run import zero_hypergradient_warnings

    result = hpo.run(RunConfig(**SMALL, outer_steps=3, logdir=str(tmp_path / "ok")))
    assert zero_hypergradient_warnings(result.history) == []


def test_ctrl_c_leaves_a_resumable_run_and_says_so(tmp_path: Path) -> None:
    from hpo.core.callbacks import Callbacks
    from hpo.errors import Interrupted

    class StopInSecondStep(Callbacks):
        def on_outer_start(self, k: int, horizon: int) -> None:
            if k == 1:
                raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        hpo.run(RunConfig(**SMALL, outer_steps=3, logdir=str(tmp_path / "i")), callbacks=[StopInSecondStep()])
    assert info.value.done == 1 and str(tmp_path / "i") in str(info.value)
    assert len(hpo.resume(tmp_path / "i", {"task": TASK}).history) == 3


def test_a_run_that_fails_validation_creates_nothing_on_disk(tmp_path: Path) -> None:
    """Options and data are checked before the log directory exists (cwd is a fresh folder here)."""
    r = CliRunner().invoke(cli, ["run", "--task", "cifar10-lenet", "--data-root", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "CIFAR-10 not found" in r.output
    assert not Path("runs").exists() and not (tmp_path / "nowhere").exists()


def test_retrain_clamps_gradients_as_the_search_did(tmp_path: Path) -> None:
    """With the clamp at 1e-12 the weights barely move: the result equals not training at all."""
    from hpo.core.schedule import Schedule
    from hpo.search.retrain import retrain
    from tests.conftest import tiny_task

    task, rule = tiny_task(), hpo.app.registry.resolve_rule("sgd")
    sched = Schedule.constant({"lr": 1.0, "momentum": 0.0, "wd": 0.0})
    still = retrain(task, rule, Schedule.constant({"lr": 0.0, "momentum": 0.0, "wd": 0.0}), 30, 0, torch.float64, "cpu")
    free = retrain(task, rule, sched, 30, 0, torch.float64, "cpu")
    clamped = retrain(task, rule, sched, 30, 0, torch.float64, "cpu", grad_clip=1e-12)
    assert abs(free.test_loss - still.test_loss) > 1e-3
    assert abs(clamped.test_loss - still.test_loss) < 1e-9


def test_schedule_init_whose_counts_exceed_the_horizon_names_it(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"lr": [0.1] * 9, "momentum": [0.5], "wd": [0.0]}))
    with pytest.raises(ConfigError) as info:
        RunConfig(inner_steps=(5,), schedule_init=str(path))
    assert info.value.field == "schedule_init"


def test_the_default_sample_count_typed_out_is_no_resume_conflict(tmp_path: Path) -> None:
    """A stored ``samples`` of None means MNIST-1D's 5000; giving 5000 on resume is the same setting."""
    from hpo.app.run import effective, same_resolved
    from hpo.tasks.mnist1d import DEFAULT_SAMPLES

    saved = RunConfig(task="mnist1d-mlp").to_dict()
    assert effective(saved, "samples") == DEFAULT_SAMPLES == 5000
    assert same_resolved(saved, "counts", {"lr": 7}) and not same_resolved(saved, "counts", {"lr": 6})


def test_resume_does_not_need_the_starting_schedule_file_again(tmp_path: Path) -> None:
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"lr": [0.1, 0.2], "momentum": [0.5], "wd": [0.0]}))
    settings = {k: v for k, v in SMALL.items() if k != "counts"}
    straight = hpo.run(RunConfig(**settings, outer_steps=2, schedule_init=str(start), logdir=str(tmp_path / "a")))
    hpo.run(RunConfig(**settings, outer_steps=1, schedule_init=str(start), logdir=str(tmp_path / "b")))
    start.unlink()  # moved away after the first outer step
    resumed = hpo.resume(tmp_path / "b", {"task": TASK, "outer_steps": 2})
    assert resumed.schedule.to_dict() == straight.schedule.to_dict()
