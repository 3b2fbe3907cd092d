"""The ``hpo run`` command: a tiny end-to-end run, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpo.cli import cli

TINY = ["--outer-steps", "2", "--inner-steps", "10,14", "--retrain-steps", "15", "--samples", "400",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    old = os.environ.get("HPO_DATA")
    os.environ["HPO_DATA"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HPO_DATA")
    else:
        os.environ["HPO_DATA"] = old


def test_default_run_on_a_tiny_budget(tmp_path, data_cache):
    logdir = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", *TINY, "--logdir", str(logdir)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "outer 1/2  T=10" in out and "outer 2/2  T=14" in out
    assert out.count("hypergrad  lr=[") == 2 and "schedule   lr=[" in out
    assert "learned schedule   test_acc=" in out
    assert "hand-picked (lr 0.1, momentum 0.9, wd 0.0005)  test_acc=" in out
    saved = json.loads((logdir / "schedule.json").read_text())
    sched = saved["schedule"]
    assert len(sched["lr"]) == 7 and len(sched["momentum"]) == 1 and len(sched["wd"]) == 1
    # all values start at 0; the first outer step can move only the learning rates (up by 0.1,
    # or clamped at 0 where the hypergradient is positive)
    first = saved["history"][0]
    assert first["hypergrad"]["momentum"] == [0.0] and first["hypergrad"]["wd"] == [0.0]
    assert first["values"]["momentum"] == [0.0] and first["values"]["wd"] == [0.0]
    for h, v in zip(first["hypergrad"]["lr"], first["values"]["lr"]):
        assert v == pytest.approx(0.1 if h < 0 else 0.0)
    assert any(v > 0 for v in first["values"]["lr"])
    assert saved["results"]["learned"]["steps"] == 15
    assert 0.0 <= saved["results"]["learned"]["test_acc"] <= 1.0
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir())


def test_tensorboard_has_the_promised_tags(tmp_path, data_cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", *TINY, "--logdir", str(logdir), "--counts", "lr=2"])
    assert res.exit_code == 0, res.output
    def tags(sub):
        acc = EventAccumulator(str(logdir / sub), size_guidance={"images": 0}).Reload()
        return acc, set(acc.Tags()["scalars"])

    acc, outer = tags(".")
    for tag in ("outer/val_loss", "outer/val_acc", "hypergrad/lr/0", "hypergrad/lr/1", "hyper/lr/1",
                "hyper/momentum/0", "hyper/wd/0", "step/lr/0"):
        assert tag in outer, tag
    assert "inner/train_loss" in tags("inner")[1]
    assert "inner/train_loss_by_step" in tags("inner/outer1")[1]
    assert "retrain/learned/train_loss" in tags("retrain")[1]
    assert "schedule" in acc.Tags()["images"]
    assert [e.step for e in acc.Scalars("outer/val_acc")] == [0, 1]


BAD = [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["--counts", "lr=-1"], "must be in 1.."),
    (["--counts", "lr=20", "--inner-steps", "10"], "20 shared lr values need at least 20 inner steps"),
    (["--counts", "nope=2"], "has no hyperparameter 'nope'"),
    (["--counts", "lr=two"], "is not an integer"),
    (["--inner-steps", "0"], "positive integers"),
    (["--outer-steps", "-3"], "must be at least 1"),
    (["--init", "momentum=1.5"], "out of range"),
    (["--steps", "lr=-0.1"], "must be positive"),
    (["--outer-option", "decay=2"], "'--outer-option': sign: decay must be in (0, 1)"),
    (["--val-frac", "1.5"], "'--val-frac': must be in (0, 1)"),
    (["--device", "tpu"], "'tpu' is not one of"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    res = CliRunner().invoke(cli, ["run", *args, "--logdir", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in res.output


def test_unwritable_logdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = CliRunner().invoke(cli, ["run", "--logdir", str(blocker / "sub")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "cannot write to" in res.output


def test_console_script_error_has_no_traceback(tmp_path):
    """The real entry point (a subprocess) prints one line on stderr and exits 2."""
    proc = subprocess.run([sys.executable, "-m", "hpo", "run", "--task", "nope", "--logdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--task': unknown task 'nope'; choose from ")
    assert "Traceback" not in proc.stderr
