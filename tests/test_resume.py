"""A run killed with SIGKILL in the middle of an outer step and resumed ends exactly like an
uninterrupted one (same seed, CPU): same learned schedule, same history, same test metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.app.checkpoint import checkpoint_path, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Outer step 0 is short, outer step 1 long enough to be killed in the middle of it.
RUN = ["--samples", "100", "--batch-size", "16", "--outer-steps", "3", "--inner-steps", "6,30,6",
       "--counts", "lr=3", "--retrain-steps", "8", "--seed", "3", "--device", "cpu", "--no-progress"]


def hpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpo", "run", *args]


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    # One thread per process: tiny matrices, and no OpenMP spin-waiting on a busy CI machine.
    return {**os.environ, "PYTHONPATH": str(ROOT), "HPO_DATA": str(tmp_path / "data"),
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def without_timing(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k != "search_seconds"}
    out["config"] = {k: v for k, v in summary["config"].items() if k != "logdir"}  # the runs' own folders
    out["history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in summary["history"]]
    return out


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """Steps of ``tag`` as TensorBoard shows them (after purging what a restart discarded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_sigkill_mid_outer_step_then_resume_matches_uninterrupted_run(tmp_path: Path, env: dict[str, str]) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(hpo(*RUN, "--logdir", str(straight)), env=env, check=True, capture_output=True, timeout=300)

    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(hpo(*RUN, "--logdir", str(killed)), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            # The checkpoint of outer step 0 exists and outer step 1 has started its inner run.
            while not (checkpoint_path(killed).exists() and (killed / "inner" / "outer1").exists()):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "the run never reached outer step 1"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(checkpoint_path(killed)).state.k == 1, "killed in the middle of outer step 1"
    assert not (killed / "schedule.json").exists()

    done = subprocess.run(hpo("--resume", str(killed), "--no-progress"), check=False, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "after outer step 1/3" in done.stdout

    a = json.loads((straight / "schedule.json").read_text())
    b = json.loads((killed / "schedule.json").read_text())
    assert b["schedule"] == a["schedule"]  # exact: the same floats
    assert without_timing(b) == without_timing(a)
    assert load_checkpoint(checkpoint_path(killed)).state.k == 3

    # TensorBoard: whatever the killed process logged after its checkpoint was purged, so no
    # outer step and no inner step appears twice.
    assert scalar_steps(killed, "outer/val_loss") == [0, 1, 2]
    inner = scalar_steps(killed / "inner", "inner/train_loss")
    assert inner == sorted(set(inner)) == scalar_steps(straight / "inner", "inner/train_loss")
    assert scalar_steps(killed / "inner" / "outer1", "inner/train_loss_by_step") == list(range(0, 30, 10))

    # Resuming a finished run runs no outer step again; it only retrains (in-process, to save time).
    from click.testing import CliRunner

    from hpo.cli import cli

    again = CliRunner().invoke(cli, ["run", "--resume", str(killed)], env={"HPO_DATA": env["HPO_DATA"]})
    assert again.exit_code == 0, again.output
    assert "after outer step 3/3" in again.stdout and "outer 3/3" not in again.stdout
    c = json.loads((killed / "schedule.json").read_text())
    assert c["schedule"] == a["schedule"] and c["history"] == b["history"]
