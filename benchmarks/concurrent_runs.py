"""Wall time of one ``hpo run`` alone and of two started at once, at a given thread count.

Users run seeds side by side.  With one torch thread per process (hpo's default) two runs on a
2-core machine should each take about as long as one alone; with two threads each they fight for
the cores.  Run by hand on a quiet machine, e.g.::

    python benchmarks/concurrent_runs.py --threads 1 --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start(threads: int, seed: int, root: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """Start one default ``hpo run`` with ``threads`` torch threads in its own log directory."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "hpo", "run", "--no-progress", "--threads", str(threads), "--seed", str(seed),
           "--logdir", str(root / f"t{threads}-s{seed}-{time.monotonic_ns()}"), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def timed(threads: int, copies: int, extra: list[str]) -> list[float]:
    """Seconds each of ``copies`` simultaneous runs took."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        procs = [start(threads, seed, Path(d), extra) for seed in range(copies)]
        out = []
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(err.decode())
            out.append(time.perf_counter() - t0)
        return out


def main() -> None:
    """Print one alone and two at once for each thread count."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, action="append", help="thread counts to try (default: 1)")
    ap.add_argument("extra", nargs="*", help="more 'hpo run' options, after --")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}")
    print("| threads per run | one alone (s) | two at once, each (s) | ratio |")
    print("|---|---|---|---|")
    for threads in args.threads or [1]:
        alone = timed(threads, 1, args.extra)[0]
        pair = timed(threads, 2, args.extra)
        print(f"| {threads} | {alone:.1f} | {pair[0]:.1f}, {pair[1]:.1f} | {max(pair) / alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
