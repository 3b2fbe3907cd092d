"""``hpo run`` on two processes: torchrun end to end, resume, and every bad launch (one line, exit 2, no hang).

The bad launches start the two ranks by hand with the environment ``torchrun`` would set
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so each rank's own exit status and
output can be checked; torchrun itself reports a failed worker with its own summary and exit 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: A task whose model ends rank 1's process (``os._exit``) after ``DIE_AFTER`` forward passes.
DYING_TASK = '''
import os

import torch
from torch import nn

from hpo.tasks.base import Task, classification_task


class DiesOnRank1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls > int(os.environ.get("DIE_AFTER", "1000000")):
            os._exit(1)
        return self.lin(x)


def task(**options: object) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = x[:, :3].argmax(-1)
    return classification_task("dying", x, y, x[:16], y[:16], DiesOnRank1, batch_size=8)
'''

SMALL = ["--outer-steps", "2", "--inner-steps", "12", "--no-progress"]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(**extra: str) -> dict[str, str]:
    """This environment, one thread, no leftover launch variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def launch_by_hand(args_per_rank: list[list[str]], timeout: float = 120, **extra: str
                   ) -> list[subprocess.CompletedProcess[str]]:
    """Start ``hpo run`` once per rank with torchrun's environment; wait for all; their results."""
    port = str(free_port())
    procs = []
    for rank, args in enumerate(args_per_rank):
        env = environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(args_per_rank)),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra)
        procs.append(subprocess.Popen([sys.executable, "-m", "hpo", "run", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def error_lines(results: list[subprocess.CompletedProcess[str]]) -> list[str]:
    """Every non-empty stderr line of every rank."""
    return [line for r in results for line in r.stderr.splitlines() if line.strip()]


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m hpo run ARGS`` (standalone: it binds a free port itself)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "hpo", "run",
           *args]
    return subprocess.run(cmd, env=environment(), text=True, capture_output=True, timeout=timeout, check=False)


def one_process(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``hpo run ARGS`` in one process."""
    return subprocess.run([sys.executable, "-m", "hpo", "run", *args], env=environment(), text=True,
                          capture_output=True, timeout=300, check=False)


def test_torchrun_two_ranks_match_one_process_in_float64(tmp_path: Path) -> None:
    common = ["--samples", "600", "--dtype", "float64", "--outer-steps", "2", "--inner-steps", "10,16",
              "--no-progress", "--retrain-steps", "10"]
    two = torchrun([*common, "--logdir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout + two.stderr
    one = one_process([*common, "--logdir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stdout + one.stderr
    a = json.loads((tmp_path / "two" / "schedule.json").read_text())
    b = json.loads((tmp_path / "one" / "schedule.json").read_text())
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for name, hg in rb["hypergrad"].items():
            for x, y in zip(ra["hypergrad"][name], hg, strict=True):
                assert abs(x - y) <= 1e-10 * max(abs(y), 1e-8), (name, x, y)
    assert a["schedule"] == b["schedule"]
    assert (a["processes"], b["processes"]) == (2, 1)
    assert two.stdout.count("learned schedule:") == 1  # rank 0 alone reports
    assert "data-parallel over 2 processes" in two.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing anywhere


def test_resume_needs_the_same_number_of_processes(tmp_path: Path) -> None:
    run = torchrun(["--samples", "600", "--outer-steps", "1", "--inner-steps", "12", "--no-progress",
                    "--logdir", str(tmp_path / "r")])
    assert run.returncode == 0, run.stdout + run.stderr
    single = one_process(["--resume", str(tmp_path / "r"), "--outer-steps", "2", "--no-progress"])
    assert single.returncode == 2
    assert single.stderr.strip().splitlines() == [
        ("Error: Invalid value for '--resume': the run was made by 2 process(es) and this launch has 1; resume it "
         "with torchrun --nproc-per-node 2")]
    again = torchrun(["--resume", str(tmp_path / "r"), "--outer-steps", "2", "--no-progress"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout and len(json.loads((tmp_path / "r" / "schedule.json").read_text())["history"]) == 2


@pytest.fixture
def dying_task(tmp_path: Path) -> str:
    path = tmp_path / "dying.py"
    path.write_text(DYING_TASK)
    return f"{path}:task"


def test_mismatched_options_fail_on_every_rank_with_one_line(tmp_path: Path, dying_task: str) -> None:
    args = [["--task", dying_task, *SMALL, "--logdir", str(tmp_path / "m"), "--seed", str(r)] for r in (0, 1)]
    results = launch_by_hand(args)
    assert [r.returncode for r in results] == [2, 2]
    assert error_lines(results) == [("Error: Invalid value for '--seed': rank 1 was launched with 1, rank 0 with 0; "
                                     "every rank must get the same options")]
    assert not (tmp_path / "m").exists()


def test_a_batch_that_does_not_split_evenly_fails_with_one_line(tmp_path: Path, dying_task: str) -> None:
    args = ["--task", dying_task, *SMALL, "--logdir", str(tmp_path / "b"), "--batch-size", "7"]
    results = launch_by_hand([args, args])
    assert [r.returncode for r in results] == [2, 2]
    assert error_lines(results) == [("Error: Invalid value for '--batch-size': a minibatch of 7 does not split evenly "
                                     "over 2 processes; choose a multiple of 2")]


def test_a_backend_without_data_parallel_fails_with_one_line(tmp_path: Path, dying_task: str) -> None:
    args = ["--task", dying_task, *SMALL, "--logdir", str(tmp_path / "g"), "--backend", "greedy"]
    results = launch_by_hand([args, args])
    assert [r.returncode for r in results] == [2, 2]
    assert error_lines(results) == [("Error: Invalid value for '--backend': greedy runs in one process only; a "
                                     "data-parallel run needs auto, forward-manual, forward-jvp or reverse-checkpointed")]


def test_rank0s_own_refusal_reaches_the_other_ranks(tmp_path: Path, dying_task: str) -> None:
    logdir = tmp_path / "taken"
    logdir.mkdir()
    (logdir / "schedule.json").write_text("{}")
    args = ["--task", dying_task, *SMALL, "--logdir", str(logdir)]
    results = launch_by_hand([args, args])
    assert [r.returncode for r in results] == [2, 2]
    assert len(error_lines(results)) == 1 and "holds a finished run" in error_lines(results)[0]


def test_a_rank_that_dies_stops_the_others_within_the_timeout(tmp_path: Path, dying_task: str) -> None:
    args = ["--task", dying_task, *SMALL, "--logdir", str(tmp_path / "d")]
    start = time.monotonic()
    results = launch_by_hand([args, args], timeout=60, DIE_AFTER="20", HPO_DIST_TIMEOUT="30")
    assert time.monotonic() - start < 45
    assert results[1].returncode == 1 and results[1].stderr == ""  # os._exit(1): it says nothing
    assert results[0].returncode == 2
    lines = results[0].stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: rank 0: another process of the data-parallel run "
                                                   "stopped answering"), lines
