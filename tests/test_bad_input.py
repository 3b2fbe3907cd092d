"""Bad input never shows a traceback: exit status 2 and exactly one line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hpo.app.checkpoint import Checkpoint, checkpoint_path, save_checkpoint
from hpo.cli import cli
from hpo.core.callbacks import OuterRecord
from hpo.outer.base import OuterState


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bad files and directories the cases below point at."""
    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {}
    f["corrupt_json"] = d / "corrupt.json"
    f["corrupt_json"].write_text('{"lr": [0.1, 0.2,')
    f["wrong_names"] = d / "names.json"
    f["wrong_names"].write_text(json.dumps({"learning_rate": [0.1], "momentum": [0.9], "wd": [0.0]}))
    f["out_of_range"] = d / "range.json"
    f["out_of_range"].write_text(json.dumps({"schedule": {"lr": [0.1, -0.5], "momentum": [0.9], "wd": [0.0]}}))
    f["not_numbers"] = d / "strings.json"
    f["not_numbers"].write_text(json.dumps({"lr": ["fast"], "momentum": [0.9], "wd": [0.0]}))
    f["binary"] = d / "binary.json"
    f["binary"].write_bytes(b"\xff\xfe\x00garbage")
    f["good_schedule"] = d / "good.json"
    f["good_schedule"].write_text(json.dumps({"lr": [0.1, 0.2], "momentum": [0.9], "wd": [0.0]}))
    f["a_directory"] = d / "adir"
    f["a_directory"].mkdir()
    f["regular_file"] = d / "file.txt"
    f["regular_file"].write_text("not a directory")
    f["corrupt_ckpt"] = d / "corrupt_run"
    f["corrupt_ckpt"].mkdir()
    checkpoint_path(f["corrupt_ckpt"]).write_bytes(b"PK\x03\x04 truncated zip")
    f["foreign_ckpt"] = d / "foreign_run"
    f["foreign_ckpt"].mkdir()
    torch.save(torch.nn.Linear(2, 2), checkpoint_path(f["foreign_ckpt"]))
    f["no_ckpt"] = d / "empty_run"
    f["no_ckpt"].mkdir()
    f["good_ckpt"] = d / "good_run"
    f["good_ckpt"].mkdir()
    state = OuterState.start({"lr": torch.zeros(2), "momentum": torch.zeros(1), "wd": torch.zeros(1)},
                             {"lr": 0.1, "momentum": 0.1, "wd": 3e-4})
    state = OuterState(state.values, state.steps, state.signs, 1)
    record = OuterRecord(k=0, horizon=4, steps_run=4, val_loss=2.3, val_acc=0.1, hypergrad={}, values={},
                         step_sizes={}, diverged=False, seconds=0.1)
    options = {"seed": 0, "samples": 100, "counts": {"lr": 2}, "inner_steps": [4], "outer_steps": 2,
               "logdir": str(f["good_ckpt"])}
    save_checkpoint(checkpoint_path(f["good_ckpt"]), Checkpoint(state, (record,), options))
    f["alien_ckpt"] = d / "alien_run"
    f["alien_ckpt"].mkdir()
    save_checkpoint(checkpoint_path(f["alien_ckpt"]), Checkpoint(state, (record,), {**options, "warp_drive": 9}))
    f["plugins"] = d / "plugins.py"
    f["plugins"].write_text(
        "from hpo.optimizers import SGDMomentum\n"
        "class NeedsArgs(SGDMomentum):\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "class NotARule:\n"
        "    pass\n")
    f["corrupt_data"] = d / "corrupt_data"
    raw = f["corrupt_data"] / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"garbage")
    f["unreadable_data"] = d / "unreadable_data"
    (f["unreadable_data"] / "MNIST" / "raw" / "train-images-idx3-ubyte").mkdir(parents=True)  # a folder, not a file
    return f


# (arguments after the command, a piece of the expected message); {name} is a path from ``files``.
CASES = [
    (["run", "--outer-steps", "0"], "--outer-steps"),
    (["run", "--inner-steps", "abc"], "--inner-steps"),
    (["run", "--inner-steps", "10,0"], "--inner-steps"),
    (["run", "--inner-steps", "5", "--counts", "lr=7"], "need at least 7 inner steps"),
    (["run", "--counts", "lr=0"], "must be in 1.."),
    (["run", "--counts", "learning_rate=3"], "no hyperparameter 'learning_rate'"),
    (["run", "--counts", "lr=two"], "--counts"),
    (["run", "--init", "lr=-1"], "out of range"),
    (["run", "--init", "momentum=1"], "out of range"),
    (["run", "--init", "lr=nan"], "finite"),
    (["run", "--steps", "lr=0"], "must be positive"),
    (["run", "--decay", "1.5"], "--decay"),
    (["run", "--converged-frac", "0"], "--converged-frac"),
    (["run", "--val-frac", "1"], "--val-frac"),
    (["run", "--batch-size", "0"], "--batch-size"),
    (["run", "--samples", "3"], "--samples"),
    (["run", "--retrain-steps", "-5"], "--retrain-steps"),
    (["run", "--seed", "-1"], "--seed"),
    (["run", "--seed", "99999999999999999999"], "--seed"),
    (["run", "--grad-clip", "-1"], "--grad-clip"),
    (["run", "--hz-clip", "inf"], "--hz-clip"),
    (["run", "--baseline", "lr=-0.1"], "--baseline"),
    (["run", "--baseline", "speed=3"], "--baseline"),
    (["run", "--task", "imagenet"], "unknown task"),
    (["run", "--task", "no_such_module_xyz:make"], "cannot import"),
    (["run", "--backend", "magic"], "unknown backend"),
    (["run", "--optimizer", "adamw9"], "unknown optimizer"),
    (["run", "--optimizer", "torch.optim:SGD"], "is a torch.optim.sgd.SGD, not a UpdateRule"),
    (["run", "--optimizer", "{plugins}:NeedsArgs"], "cannot build optimizer"),
    (["run", "--optimizer", "{plugins}"], "a file needs :ClassName"),
    (["run", "--backend", "torch.optim:SGD"], "not a HypergradientBackend"),
    (["run", "--task", "torch.optim:SGD"], "not a Problem"),
    (["optimizers", "{plugins}:NotARule"], "not a UpdateRule"),
    (["check-rule", "{plugins}:NotARule"], "not a UpdateRule"),
    (["run", "--init", "lr=1e39"], "does not fit in float32"),
    (["run", "--device", "tpu"], "--device"),
    (["run", "--dtype", "float16"], "--dtype"),
    (["run", "--no-such-option"], "No such option"),
    (["run", "--logdir", "{regular_file}/sub"], "--logdir"),
    (["run", "--logdir", "{good_ckpt}"], "already holds a run"),
    (["run", "--schedule-init", "{corrupt_json}"], "not valid JSON"),
    (["run", "--schedule-init", "{wrong_names}"], "needs"),
    (["run", "--schedule-init", "{out_of_range}"], "out of range"),
    (["run", "--schedule-init", "{not_numbers}"], "list of numbers"),
    (["run", "--schedule-init", "{binary}"], "cannot read"),
    (["run", "--schedule-init", "{a_directory}"], "cannot read"),
    (["run", "--schedule-init", "{good_schedule}", "--counts", "lr=3"], "not both"),
    (["run", "--schedule-init", "{good_schedule}", "--inner-steps", "1"], "need at least 2 inner steps"),
    (["run", "--samples", "20", "--val-frac", "0.99", "--logdir", "{a_directory}/x"], "leaves none"),
    (["run", "--resume", "{a_directory}/missing"], "not a directory"),
    (["run", "--resume", "{no_ckpt}"], "no checkpoint in"),
    (["run", "--resume", "{corrupt_ckpt}"], "cannot read checkpoint"),
    (["run", "--resume", "{foreign_ckpt}"], "cannot read checkpoint"),
    (["run", "--resume", "{alien_ckpt}"], "warp_drive"),
    (["run", "--resume", "{good_ckpt}", "--seed", "5"], "conflicts with the run being resumed"),
    (["run", "--resume", "{good_ckpt}", "--logdir", "{a_directory}"], "a run resumes in its own directory"),
    (["retrain", "--schedule", "{corrupt_json}", "--steps", "5"], "not valid JSON"),
    (["retrain", "--schedule", "{a_directory}/nothing.json", "--steps", "5"], "cannot read"),
    (["retrain", "--schedule", "{good_schedule}", "--steps", "0"], "--steps"),
    (["retrain", "--schedule", "{good_schedule}"], "no valid retrain_steps"),
    (["retrain"], "--schedule"),
    (["run", "--task", "mnist-lenet", "--data-root", "{a_directory}"], "MNIST not found"),
    (["run", "--task", "cifar10-lenet", "--data-root", "{regular_file}"], "CIFAR-10 not found"),
    (["run", "--task", "mnist-lenet", "--data-root", "{corrupt_data}"], "is not an unsigned-byte IDX file"),
    (["run", "--task", "mnist-lenet", "--data-root", "{unreadable_data}"], "train-images-idx3-ubyte"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2(args: list[str], expected: str, files: dict[str, Path], tmp_path: Path) -> None:
    argv = [a.format(**files) for a in args]
    result = CliRunner().invoke(cli, argv, env={"HPO_DATA": str(tmp_path / "data")})
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.output, result.exc_info)
    assert "Traceback" not in result.output
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: ") and expected in err, err
    assert result.stdout == "" or "resuming" not in result.stdout


def test_there_are_at_least_15_distinct_bad_inputs() -> None:
    assert len({tuple(a) for a, _ in CASES}) >= 15
