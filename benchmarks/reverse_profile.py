"""Where a reverse-checkpointed run spends its time: a ``torch.profiler`` table of one whole run.

One inner run of ``--horizon`` steps (forward pass, then the sweep) on synthetic batches, as in
``benchmarks/step_cost.py``, profiled once after a warm-up; prints the operators by self CPU
time, and the share of the run spent outside operators (Python, dispatch).  Example::

    python benchmarks/reverse_profile.py --model mlp --input mnist1d --regime all --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_cost import INPUTS, MODELS, REGIMES, build, parse_counts, problem_for, schedule_for
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, profile one run, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--input", choices=sorted(INPUTS), default="mnist1d")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--counts", type=parse_counts, default=parse_counts("7,1,1"))
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--regime", choices=sorted(REGIMES), default="all")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    net, x, y = build(a.model, INPUTS[a.input], a.batch_size, torch.float32, torch.device("cpu"))
    sched = schedule_for(a.counts, x.dtype, x.device)
    every, budget = REGIMES[a.regime][0](a.horizon), REGIMES[a.regime][1]

    def run(horizon: int) -> tuple[float, float]:
        backend = ReverseCheckpointedBackend(every=every, **({} if budget is None else {"memory_budget": budget}))
        problem = problem_for(net, x, y, horizon, a.batch_size)
        state = backend.init(problem, sched)
        start = time.process_time()
        for t, batch in problem.batches():
            state = backend.step(problem, sched, state, t, batch)
        mid = time.process_time()
        backend.hypergradient(problem, sched, state)
        return mid - start, time.process_time() - mid

    run(10)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fwd, rev = run(a.horizon)
    events = prof.key_averages()
    calls = sum(e.count for e in events if not e.key.startswith(("autograd::", "ProfilerStep")))
    print(f"# operator calls per step: {calls / a.horizon:.0f}")
    print(f"# {a.model} {a.regime} (k={a.horizon if every is None else every}) T={a.horizon}: forward pass {fwd * 1e3 / a.horizon:.2f} ms/step, "
          f"sweep {rev * 1e3 / a.horizon:.2f} ms/step (CPU time, under the profiler)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
