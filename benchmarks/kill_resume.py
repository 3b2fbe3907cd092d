"""Kill ``hpo run`` at random moments with SIGKILL, resume it until it finishes, and check the result.

Run by hand (it takes minutes); the count it prints is written up in ``docs/reliability.md``::

    python benchmarks/kill_resume.py --trials 30 --seed 0

First an uninterrupted reference run of a small configuration (MNIST-1D, ``--samples 600
--outer-steps 4 --inner-steps 40``, CPU, one thread) measures two times: ``S``, from the process
start until it holds its log directory (Python and torch imports, the data generated), and ``W``,
from then until it exits (the search, the retrains, the outputs).  Then each trial, in a fresh log
directory (and a fresh data cache):

1. draws how many times to kill (1 to ``--max-kills``);
2. starts ``python -m hpo run`` (or ``hpo run --resume LOGDIR`` once a checkpoint exists) and
   sends SIGKILL at a random moment: with probability ``--startup-frac`` uniformly in ``[0, S]``
   after the start, otherwise uniformly in ``[0, W]`` after the process took the log directory's
   lock (so most kills land in the work, not in the imports); a process that finished first is
   not killed;
3. after the last kill, lets ``--resume`` (or a fresh start, if no checkpoint was written yet)
   run to the end;
4. compares the final ``schedule.json`` with the reference: the learned ``schedule`` (the count
   printed last), and the whole file apart from times, versions and the log directory.

Every random draw comes from ``random.Random(--seed)``, so the kill times are reproducible (what
the process has done by then depends on the machine's speed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ["--samples", "600", "--outer-steps", "4", "--inner-steps", "40", "--no-progress", "--device", "cpu",
          "--threads", "1"]


def environment(data: Path) -> dict[str, str]:
    """One thread per process, the checkout importable, generated data cached in ``data``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HPO_DATA": str(data), "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(logdir: Path) -> list[str]:
    """A fresh run into ``logdir``, or its resume once a checkpoint exists."""
    if (logdir / "checkpoint.pt").exists():
        return [sys.executable, "-m", "hpo", "run", "--resume", str(logdir), "--no-progress", "--threads", "1"]
    return [sys.executable, "-m", "hpo", "run", *CONFIG, "--logdir", str(logdir)]


def completed_steps(logdir: Path) -> int | None:
    """Outer steps the checkpoint in ``logdir`` holds (None: no checkpoint)."""
    path = logdir / "checkpoint.pt"
    if not path.exists():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["k"])


def start(logdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the next process of a trial, its output appended to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(command(logdir), env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_for_lock(proc: subprocess.Popen[bytes], logdir: Path) -> bool:
    """Wait until ``proc`` holds ``logdir`` (its pid is in the lock file); False if it exited first."""
    lock = logdir / ".hpo.lock"
    while proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return True
        except OSError:
            pass
        time.sleep(0.005)
    return False


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """``schedule.json`` without what differs between two identical runs (times, versions, log directory)."""
    out = {k: v for k, v in summary.items() if k not in ("search_seconds", "versions")}
    out["config"] = {k: v for k, v in summary["config"].items() if k != "logdir"}
    out["history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in summary["history"]]
    return out


def state_after_kill(logdir: Path) -> str:
    """What a killed process left: no checkpoint, a checkpoint after k outer steps, or the finished result."""
    if (logdir / "schedule.json").exists():
        return "after schedule.json"
    k = completed_steps(logdir)
    return "no checkpoint" if k is None else f"checkpoint k={k}"


def kill_at_random(proc: subprocess.Popen[bytes], logdir: Path, rng: random.Random, times: tuple[float, float],
                   startup_frac: float, states: Counter[str]) -> str:
    """SIGKILL ``proc`` at a random moment of its start-up or of its work; what it left, as a note."""
    in_startup = rng.random() < startup_frac
    delay = rng.uniform(0.0, times[0] if in_startup else times[1])
    where = "after start" if in_startup else "into the work"
    if in_startup or wait_for_lock(proc, logdir):
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            state = state_after_kill(logdir)
            states[state] += 1
            return f"{delay:.2f}s {where} ({state})"
    return f"{delay:.2f}s {where} (finished first)"


def trial(i: int, rng: random.Random, times: tuple[float, float], args: argparse.Namespace, work: Path,
          states: Counter[str]) -> tuple[dict[str, Any], str]:
    """One killed-and-resumed run; its ``schedule.json`` and a line describing the kills (counted in ``states``)."""
    logdir, data = work / f"trial-{i}", work / f"data-{i}"
    env, log = environment(data), work / f"trial-{i}.log"
    kills, notes, processes = rng.randint(1, args.max_kills), [], 0
    while not (logdir / "schedule.json").exists():
        proc = start(logdir, env, log)
        processes += 1
        if len(notes) < kills:
            notes.append(kill_at_random(proc, logdir, rng, times, args.startup_frac, states))
            if proc.returncode not in (0, -signal.SIGKILL):
                raise SystemExit(f"trial {i}: a process failed; see {log}")
            continue
        if proc.wait() != 0:
            raise SystemExit(f"trial {i}: a process failed; see {log}")
        if processes > args.max_kills + 3:
            raise SystemExit(f"trial {i}: no schedule.json after {processes} processes; see {log}")
    return json.loads((logdir / "schedule.json").read_text()), f"{processes} processes, killed " + ", ".join(notes)


def reference_run(work: Path) -> tuple[dict[str, Any], tuple[float, float]]:
    """The uninterrupted run: its ``schedule.json``, and the seconds until it held its log directory and after."""
    logdir = work / "reference"
    t0 = time.perf_counter()
    proc = start(logdir, environment(work / "data-reference"), work / "reference.log")
    if not wait_for_lock(proc, logdir):
        raise SystemExit(f"the reference run ended before it held its log directory; see {work / 'reference.log'}")
    t1 = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed; see {work / 'reference.log'}")
    t2 = time.perf_counter()
    return json.loads((logdir / "schedule.json").read_text()), (t1 - t0, t2 - t1)


def main() -> None:
    """Parse the options, run the reference and the trials, print the counts."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seed", type=int, default=0, help="Seed of the kill counts and kill times.")
    p.add_argument("--max-kills", type=int, default=3, help="Kills per trial: 1 to this many.")
    p.add_argument("--startup-frac", type=float, default=0.2,
                   help="Fraction of kills aimed at the process start (imports, data) rather than its work.")
    p.add_argument("--workdir", type=Path, default=None, help="Where the runs go (default: a temporary folder).")
    p.add_argument("--keep", action="store_true", help="Keep the runs' folders.")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    reference, times = reference_run(work)
    print(f"reference: {times[0]:.1f}s until it held its log directory, then {times[1]:.1f}s of work; "
          f"schedule {reference['schedule']}", flush=True)

    same_schedule = same_file = 0
    states: Counter[str] = Counter()
    for i in range(args.trials):
        result, notes = trial(i, rng, times, args, work, states)
        a, b = result["schedule"] == reference["schedule"], comparable(result) == comparable(reference)
        same_schedule += a
        same_file += b
        print(f"trial {i + 1:3d}: {'identical' if a else 'DIFFERENT'} schedule, "
              f"{'identical' if b else 'DIFFERENT'} schedule.json; {notes}", flush=True)
        if not args.keep and a and b:
            shutil.rmtree(work / f"trial-{i}")
            shutil.rmtree(work / f"data-{i}", ignore_errors=True)
            (work / f"trial-{i}.log").unlink()
    print(f"{sum(states.values())} SIGKILLs, what each left: "
          + ", ".join(f"{state} {n}" for state, n in sorted(states.items())))
    print(f"schedule.json identical apart from times: {same_file} / {args.trials}")
    print(f"learned schedule identical: {same_schedule} / {args.trials}")
    if not args.keep and same_schedule == same_file == args.trials:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
