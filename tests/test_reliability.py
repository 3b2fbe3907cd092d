"""Reliability: each fault a user can run into, and what hpo does about it (docs/reliability.md).

Bad input is exit status 2 and one ``Error:`` line, never a traceback; a crash, kill or full disk
never loses finished work; two processes never share a log directory.  The kill/resume loop over
many random kill times is ``benchmarks/kill_resume.py`` (run by hand).
"""

from __future__ import annotations

import csv
import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import hpo
from hpo import CompareConfig, ConfigError, RunConfig
from hpo.app.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from hpo.app.compare import resume_compare
from hpo.app.compare_checkpoint import (
    CompareCheckpoint,
    compare_checkpoint_path,
    load_compare_checkpoint,
    save_compare_checkpoint,
)
from hpo.app.lock import LOCK_NAME, LogdirLock
from hpo.app.logdir import default_logdir
from hpo.cli import cli
from hpo.cli.main import SigtermStop
from hpo.outer.base import OuterState

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"
BASE = ["run", "--task", TASK, "--inner-steps", "6", "--val-frac", "0.25", "--device", "cpu", "--retrain-steps", "6",
        "--outer-steps", "2", "--no-progress"]
RUN = [*BASE, "--counts", "lr=2"]
COMPARE = ["compare", "--task", TASK, "--methods", "forward-manual,greedy,random-schedule,tpe,hand-picked",
           "--budget", "8,16", "--inner-steps", "4", "--seeds", "0,1", "--counts", "lr=2", "--retrain-steps", "6",
           "--val-frac", "0.25", "--device", "cpu"]
#: Columns of results.csv that are measured times, not results.
TIMING = ("search_seconds", "cpu_seconds")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_line(result: Result, expected: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, exactly one ``Error:`` line on stderr holding ``expected``."""
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.output, result.exc_info)
    assert "Traceback" not in result.output
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    return lines[0]


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv without the timing columns."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(path.read_text().splitlines())]


def one_pair_compare(logdir: Path | None) -> CompareConfig:
    """A comparison of one method and one seed (the hand-picked setting: no search)."""
    return CompareConfig(task=TASK, methods=("hand-picked",), budget=(8,), inner_steps=4, seeds=(0,), counts={"lr": 2},
                         retrain_steps=4, device="cpu", logdir=None if logdir is None else str(logdir))


def start_state() -> OuterState:
    return OuterState.start({"lr": torch.zeros(2), "momentum": torch.zeros(1), "wd": torch.zeros(1)},
                            {"lr": 0.1, "momentum": 0.1, "wd": 3e-4})


# --- one process per log directory ---------------------------------------------------------------


def test_a_second_run_in_a_held_logdir_is_refused(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    logdir.mkdir()
    with LogdirLock(logdir):  # this process stands for a first run still working in the directory
        line = assert_one_line(invoke(*RUN, "--logdir", str(logdir)), "is in use by a running process")
    assert f"pid {os.getpid()}" in line and "--logdir" in line
    assert not checkpoint_path(logdir).exists()


def test_a_second_compare_in_a_held_logdir_is_refused(tmp_path: Path) -> None:
    logdir = tmp_path / "cmp"
    logdir.mkdir()
    with LogdirLock(logdir):
        assert_one_line(invoke(*COMPARE, "--logdir", str(logdir)), "is in use by a running process")
    assert not compare_checkpoint_path(logdir).exists()


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / LOCK_NAME).write_text("999999")  # the lock file of a process that died: nobody holds it
    r = invoke(*RUN, "--logdir", str(logdir))
    assert r.exit_code == 0, r.output
    assert load_checkpoint(checkpoint_path(logdir)).state.k == 2 and (logdir / "schedule.json").exists()


def test_default_logdirs_started_in_the_same_second_differ() -> None:
    names = [default_logdir("hpo") for _ in range(200)]
    assert len(set(names)) == 200
    assert len({n.name.rsplit("-", 1)[0] for n in names}) <= 2  # same date-time stamp (a second may tick over)


# --- a logging failure loses no finished step -----------------------------------------------------


def test_a_logging_failure_after_the_checkpoint_keeps_the_finished_step(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.reporting.tensorboard_log import TensorBoardLogger

    logdir = tmp_path / "run"
    seen: list[int] = []

    def disk_full(self: Any, record: Any) -> None:
        seen.append(load_checkpoint(checkpoint_path(logdir)).state.k)  # what is on disk when logging fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TensorBoardLogger, "on_outer_step", disk_full)
    r = invoke(*RUN, "--logdir", str(logdir))
    assert r.exit_code == 0, r.output
    assert seen == [1]  # outer step 0 was checkpointed before the logger saw it; the logger is off after
    assert load_checkpoint(checkpoint_path(logdir)).state.k == 2
    warnings = [line for line in r.output.splitlines() if "TensorBoard logging failed" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert "Traceback" not in r.output and (logdir / "schedule.json").exists()


# --- a checkpoint never makes hpo import code -------------------------------------------------------


def test_cli_resume_never_imports_code_a_checkpoint_names(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    payload = tmp_path / "payload.py"
    payload.write_text(f"open({str(marker)!r}, 'w').close()\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"task": TASK, "inner_steps": [6], "counts": {"lr": 2}, "optimizer": f"{payload}:rule"}
    save_checkpoint(checkpoint_path(run_dir), Checkpoint(start_state(), (), config))
    assert_one_line(invoke("run", "--resume", str(run_dir)), "name it again")
    assert not marker.exists()

    cmp_dir = tmp_path / "cmp"
    cmp_dir.mkdir()
    stored = one_pair_compare(None).to_dict()
    save_compare_checkpoint(compare_checkpoint_path(cmp_dir),
                            CompareCheckpoint({**stored, "task": f"{payload}:make"}, (), ()))
    line = assert_one_line(invoke("compare", "--resume", str(cmp_dir)), "name it again")
    assert "--task" in line and not marker.exists()


# --- values and settings the run cannot use -------------------------------------------------------


def test_a_value_the_dtype_cannot_hold_is_refused(tmp_path: Path) -> None:
    assert_one_line(invoke(*RUN, "--init", "lr=1e39", "--logdir", str(tmp_path / "r")), "does not fit in float32")
    with pytest.raises(ConfigError) as info:
        RunConfig(init={"lr": 1e39}, dtype="float32")
    assert info.value.field == "init"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("stored", "flag"), [({"seed": "0"}, "--seed"), ({"dtype": "float16"}, "--dtype"),
                                              ({"inner_steps": 6}, "--inner-steps")])
def test_ill_typed_stored_settings_make_resume_one_line(tmp_path: Path, stored: dict, flag: str) -> None:
    config = {"samples": 100, "inner_steps": [6], "counts": {"lr": 2}, "val_frac": 0.25, "device": "cpu", **stored}
    save_checkpoint(checkpoint_path(tmp_path), Checkpoint(start_state(), (), config))
    assert_one_line(invoke("run", "--resume", str(tmp_path)), f"Invalid value for '{flag}'")


def hostile_file(tmp_path: Path, kind: str) -> str:
    """A schedule file built to break a reader."""
    good = {"lr": [0.1], "momentum": [0.9], "wd": [0.0]}
    path = tmp_path / f"{kind}.json"
    if kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "bigint":
        path.write_text(json.dumps({**good, "lr": [0]}).replace("[0]", "[" + "9" * 400 + "]"))
    elif kind == "huge_lr":
        path.write_text(json.dumps({"schedule": {**good, "lr": [3.5e38]}, "retrain_steps": 5}))
    else:
        return "/dev/zero"
    return str(path)


HOSTILE = [("deep", "not a schedule file"), ("bigint", "too large"), ("huge_lr", "does not fit in float32"),
           ("dev_zero", "larger than 16 MiB")]


@pytest.mark.parametrize(("kind", "expected"), HOSTILE, ids=[k for k, _ in HOSTILE])
def test_hostile_schedule_files_for_run(tmp_path: Path, kind: str, expected: str) -> None:
    path = hostile_file(tmp_path, kind)
    line = assert_one_line(invoke(*BASE, "--schedule-init", path, "--logdir", str(tmp_path / "r")), expected)
    assert "--schedule-init" in line and not (tmp_path / "r").exists()


@pytest.mark.parametrize(("kind", "expected"), [
    *[h for h in HOSTILE if h[0] != "huge_lr"],
    pytest.param("huge_lr", "does not fit in float32"),
], ids=[k for k, _ in HOSTILE if k != "huge_lr"] + ["huge_lr"])
def test_hostile_schedule_files_for_retrain(tmp_path: Path, kind: str, expected: str) -> None:
    path = hostile_file(tmp_path, kind)
    line = assert_one_line(invoke("retrain", "--schedule", path, "--task", TASK, "--steps", "5", "--device", "cpu"),
                           expected)
    assert "--schedule" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--inner-steps", "1000000000000"], "must be in 1..100000000"),
    (["--counts", "lr=10000000"], "must be in 1..100000"),
    (["--samples", "1000000000"], "must be in 10..100000000"),
])
def test_absurd_sizes_are_refused_at_once(tmp_path: Path, args: list[str], expected: str) -> None:
    start = time.perf_counter()
    assert_one_line(invoke("run", *args, "--device", "cpu", "--logdir", str(tmp_path / "r")), expected)
    assert time.perf_counter() - start < 5.0
    assert not (tmp_path / "r").exists()


def test_a_fresh_run_into_a_finished_run_is_refused(tmp_path: Path) -> None:
    done = tmp_path / "done"
    assert invoke(*RUN, "--logdir", str(done)).exit_code == 0
    before = (done / "schedule.json").read_bytes()
    assert_one_line(invoke(*RUN, "--logdir", str(done)), "already holds a run")
    only_result = tmp_path / "copied"
    only_result.mkdir()
    shutil.copy(done / "schedule.json", only_result / "schedule.json")  # a finished run without its checkpoint
    assert_one_line(invoke(*RUN, "--logdir", str(only_result)), "holds a finished run")
    assert (done / "schedule.json").read_bytes() == before
    assert (only_result / "schedule.json").read_bytes() == before


# --- hpo compare: no overwriting, a checkpoint per (seed, method), atomic outputs -----------------


@pytest.fixture(scope="module")
def finished_compare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished uninterrupted comparison (the reference)."""
    logdir = tmp_path_factory.mktemp("compare") / "straight"
    r = invoke(*COMPARE, "--logdir", str(logdir))
    assert r.exit_code == 0, r.output
    return logdir


def test_compare_refuses_to_overwrite_results(finished_compare: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in finished_compare.iterdir() if p.is_file()}
    line = assert_one_line(invoke(*COMPARE, "--logdir", str(finished_compare)), "already holds a comparison")
    assert "--logdir" in line
    assert {p.name: p.read_bytes() for p in finished_compare.iterdir() if p.is_file()} == before
    old = tmp_path / "old"  # results of an hpo that wrote no checkpoint
    old.mkdir()
    (old / "results.md").write_text("table")
    with pytest.raises(ConfigError) as info:
        hpo.compare(one_pair_compare(old), log=lambda _: None)
    assert info.value.field == "logdir" and "results.md" in info.value.message
    assert (old / "results.md").read_text() == "table"


def test_compare_checkpoints_every_pair_and_resumes_to_the_same_rows(finished_compare: Path, tmp_path: Path) -> None:
    logdir = tmp_path / "killed"
    shutil.copytree(finished_compare, logdir)
    ck = load_compare_checkpoint(compare_checkpoint_path(logdir))
    assert len(ck.done) == 2 * 5 and ck.config["budget"] == [8, 16]
    keep = ck.done[:3]  # as if killed during the fourth pair: its rows and all outputs are not there yet
    save_compare_checkpoint(compare_checkpoint_path(logdir), CompareCheckpoint(
        ck.config, keep, tuple(r for r in ck.rows if (r.seed, r.method) in keep)))
    for name in ("results.csv", "results.md", "schedules.png", "accuracy_vs_budget.png"):
        (logdir / name).unlink()
    r = invoke("compare", "--resume", str(logdir), "--task", TASK)
    assert r.exit_code == 0, r.output
    assert r.output.count("finished before (rows from the checkpoint)") == 3
    assert r.output.count(" search: ") == 2 * 5 - 3
    assert csv_rows(logdir / "results.csv") == csv_rows(finished_compare / "results.csv")
    assert load_compare_checkpoint(compare_checkpoint_path(logdir)).done == ck.done
    assert (logdir / "schedules.png").stat().st_size > 1000


def test_compare_resume_refuses_a_changed_setting(finished_compare: Path) -> None:
    line = assert_one_line(invoke("compare", "--resume", str(finished_compare), "--task", TASK, "--budget", "8"),
                           "conflicts with the comparison being resumed")
    assert "--budget" in line
    with pytest.raises(ConfigError) as info:
        resume_compare(finished_compare, {"task": TASK, "seeds": (0, 1, 2)}, log=lambda _: None)
    assert info.value.field == "seeds" and "--" not in info.value.message


def test_compare_interrupted_says_how_to_resume_and_resumes(finished_compare: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("hpo.search.base")  # every method's default retrain calls retrain from here
    real, calls = module.retrain, []

    def ctrl_c_in_third_pair(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2 * 3 + 1:  # three retrains a pair (budget 8; budget 16 and its hold-out score)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "retrain", ctrl_c_in_third_pair)
    logdir = tmp_path / "c"
    r = invoke(*COMPARE, "--logdir", str(logdir))
    assert r.exit_code == 130
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"Interrupted after 2 finished (seed, method) pairs; continue with: hpo compare --resume {logdir}"]
    assert len(load_compare_checkpoint(compare_checkpoint_path(logdir)).done) == 2
    assert not (logdir / "results.csv").exists()
    monkeypatch.setattr(module, "retrain", real)
    again = invoke("compare", "--resume", str(logdir), "--task", TASK)
    assert again.exit_code == 0, again.output
    assert csv_rows(logdir / "results.csv") == csv_rows(finished_compare / "results.csv")


def test_compare_pictures_are_atomic_and_a_failure_is_one_warning(finished_compare: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def disk_full(self: Any, f: Any, **kwargs: Any) -> None:
        f.write(b"\x89PNG half a picture")
        raise OSError(errno.ENOSPC, "No space left on device")

    logdir = tmp_path / "c"
    shutil.copytree(finished_compare, logdir)
    pictures = {p.name: p.read_bytes() for p in logdir.glob("*.png")}
    assert len(pictures) == 3
    monkeypatch.setattr(Figure, "savefig", disk_full)
    log: list[str] = []
    rows, paths = resume_compare(logdir, {"task": TASK}, log=log.append)  # every pair finished: outputs only
    warnings = [line for line in log if line.startswith("warning:")]
    assert len(warnings) == 3 and all("No space left on device" in w for w in warnings), warnings
    assert set(paths) == {"md", "csv"} and len(rows) == 2 * 5 * 2
    assert {p.name: p.read_bytes() for p in logdir.glob("*.png")} == pictures  # the old pictures, whole
    assert not list(logdir.glob(".*.tmp"))
    fresh = tmp_path / "fresh"
    hpo.compare(one_pair_compare(fresh), log=log.append)
    assert not list(fresh.glob("*.png")) and not list(fresh.glob(".*.tmp"))  # no 0-byte or torn picture
    assert (fresh / "results.csv").exists()


def test_compare_results_failing_to_write_keep_the_old_ones(finished_compare: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.app.compare_outputs

    logdir = tmp_path / "c"
    shutil.copytree(finished_compare, logdir)
    before = (logdir / "results.csv").read_bytes()

    def torn_write(rows: Any, path: Path, *label: Any) -> None:
        def write(f: Any) -> None:
            f.write(b"method,seed\n")
            raise OSError(errno.ENOSPC, "No space left on device")

        hpo.app.compare_outputs.atomic_write(path, write)

    monkeypatch.setattr(hpo.app.compare_outputs, "write_csv", torn_write)
    r = invoke("compare", "--resume", str(logdir), "--task", TASK)
    assert_one_line(r, "cannot write the results", code=1)
    assert "resuming writes them again" in r.stderr
    assert (logdir / "results.csv").read_bytes() == before and not list(logdir.glob(".*.tmp"))


# --- SIGTERM ------------------------------------------------------------------------------------------


def test_sigterm_stops_a_run_with_130_and_says_how_to_resume(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_DATA": str(tmp_path / "data"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "hpo", "run", "--task", TASK, "--inner-steps", "100", "--counts", "lr=2",
            "--val-frac", "0.25", "--outer-steps", "100000", "--converged-frac", "1e-12", "--device", "cpu",
            "--no-progress", "--logdir", str(logdir)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not checkpoint_path(logdir).exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"continue with: hpo run --resume {logdir}" in lines[0], err
    done = load_checkpoint(checkpoint_path(logdir)).state.k
    assert done >= 1 and f"Interrupted after {done} completed outer steps" in lines[0]
    assert not (logdir / "schedule.json").exists()


def test_sigterm_dropped_in_a_finalizer_still_stops_and_a_second_one_spares_the_cleanup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    before = signal.getsignal(signal.SIGTERM)

    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # handled in here, where Python drops what the handler raises

    try:
        SigtermStop().install()
        with pytest.raises(KeyboardInterrupt):
            Finalized()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the stop is raised again here
                time.sleep(0.01)
        signal.raise_signal(signal.SIGTERM)  # the stop is under way: its cleanup goes on
    finally:
        signal.signal(signal.SIGTERM, before)
