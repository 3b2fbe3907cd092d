"""Time per inner step of ``forward-manual`` vs ``forward-jvp`` (same problem, same columns).

Both backends run the same forward-mode recursion with every tangent column batched in one vmap
call; they differ only in where the tangent update of the optimizer comes from (hand-derived vs
``torch.func.jvp`` of ``rule.step``).  The figure of merit is the ratio jvp / manual.

Usage (from the repository root)::

    python benchmarks/tangent_cost.py --tasks mnist1d-mlp,mnist1d-cnn --device cpu --steps 40 --repeats 5

Prints one row per task and backend: median milliseconds per inner step over ``--repeats`` runs of
``--steps`` steps (backends interleaved, after a warm-up run), and the jvp / manual ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hpo.app.registry import resolve_backend, resolve_rule, resolve_task
from hpo.core.schedule import Schedule
from hpo.search.inner_runs import FDSConfig, make_problem


def time_inner_run(backend_name: str, task_name: str, optimizer: str, steps: int, device: str, dtype: torch.dtype,
                   task_cache: dict, clock=time.perf_counter) -> float:
    """Milliseconds per step of one inner run of ``steps`` steps (rule's default counts, hand-picked values)."""
    rule = resolve_rule(optimizer)
    backend = resolve_backend(backend_name)
    task = task_cache.setdefault(task_name, resolve_task(task_name))
    config = FDSConfig(inner_steps=(steps,), device=device, dtype=dtype)
    problem = make_problem(task, rule, config, 0)
    counts = config.resolved_counts(rule)
    schedule = Schedule.constant(rule.hand_picked or {s.name: s.init for s in rule.hyperparameters}, counts)
    batches = list(problem.batches())
    state = backend.init(problem, schedule)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = clock()
    for t, batch in batches:
        state = backend.step(problem, schedule, state, t, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = clock() - start
    assert torch.isfinite(backend.inner(state).loss)
    return 1000.0 * elapsed / steps


def main() -> None:
    """Parse options, warm up, time both backends interleaved, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="mnist1d-mlp,mnist1d-cnn")
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--backends", default="forward-manual,forward-jvp")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: perf_counter; cpu: process_time (CPU seconds of this process; steadier on a "
                         "shared machine, meaningful with --threads 1 on CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    backends = args.backends.split(",")
    cache: dict = {}
    print(f"# torch {torch.__version__}, device {args.device}, dtype {args.dtype}, optimizer {args.optimizer}, "
          f"{args.steps} steps x {args.repeats} repeats, threads {torch.get_num_threads()}, clock {args.clock}")
    print(f"{'task':<14} {'backend':<16} {'ms/step':>9} {'min':>9}")
    for task in args.tasks.split(","):
        for b in backends:  # warm-up: first use builds torch.func decompositions
            time_inner_run(b, task, args.optimizer, min(args.steps, 10), args.device, dtype, cache)
        times: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(args.repeats):
            for b in backends:
                times[b].append(time_inner_run(b, task, args.optimizer, args.steps, args.device, dtype, cache, clock))
        med = {b: statistics.median(v) for b, v in times.items()}
        for b in backends:
            print(f"{task:<14} {b:<16} {med[b]:>9.2f} {min(times[b]):>9.2f}")
        if len(backends) == 2:
            print(f"{task:<14} {'ratio ' + backends[1] + '/' + backends[0]:<34} {med[backends[1]] / med[backends[0]]:.3f}")


if __name__ == "__main__":
    main()
