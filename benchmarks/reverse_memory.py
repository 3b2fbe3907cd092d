"""Memory of ``reverse-truncated`` against its window W (and of forward mode, for reference).

Each configuration runs in a fresh subprocess, which reports

* ``graph MiB``: bytes of the distinct tensor storages autograd saved for the backward pass during
  the window's steps (counted with ``torch.autograd.graph.saved_tensors_hooks``): the memory the
  window's tape holds (forward mode keeps no tape: "-");
* ``peak RSS MiB``: the process's peak resident set size (``ru_maxrss``), CPU;
* ``CUDA peak MiB``: ``torch.cuda.max_memory_allocated`` (with ``--device cuda``);
* the wall-clock seconds of one inner run plus its hypergradient (noisy on a shared machine).

Run by hand, e.g.::

    PYTHONPATH=$PWD python benchmarks/reverse_memory.py --task mnist1d-mlp --horizon 200 --windows 1,25,50,100,200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings


def measure(task_name: str, horizon: int, window: int | None, backend_name: str, device: str, samples: int) -> dict:
    """One inner run + hypergradient; returns the memory and time figures."""
    import torch

    from hpo.app.registry import resolve_rule, resolve_task
    from hpo.backends.forward import ForwardManualBackend
    from hpo.backends.reverse_truncated import ReverseTruncatedBackend
    from hpo.core.backend import run_inner
    from hpo.core.schedule import Schedule
    from hpo.search.fds import initial_state
    from hpo.search.inner_runs import FDSConfig, make_problem

    rule = resolve_rule("sgd")
    task = resolve_task(task_name, samples=samples)
    config = FDSConfig(inner_steps=(horizon,), device=device)
    problem = make_problem(task, rule, config, 0)
    sched = Schedule({k: torch.full_like(v, 0.05) for k, v in initial_state(rule, config).values.items()})
    backend = ReverseTruncatedBackend(window) if backend_name == "reverse-truncated" else ForwardManualBackend()
    saved: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        saved[key] = t.untyped_storage().nbytes()
        return t

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if backend_name == "reverse-truncated":  # torch.func (steps before the window) refuses saved-tensor hooks
        state = backend.init(problem, sched)
        for t, batch in problem.batches():
            if t >= state.window_start:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    state = backend.step(problem, sched, state, t, batch)
            else:
                state = backend.step(problem, sched, state, t, batch)
        result = backend.hypergradient(problem, sched, state)
    else:
        result = run_inner(backend, problem, sched)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {
        "backend": backend_name,
        "window": window,
        "horizon": horizon,
        "seconds": seconds,
        "graph_mib": sum(saved.values()) / 2**20 if backend_name == "reverse-truncated" else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hypergrad_lr0": float(result.hypergrad["lr"][-1]),
    }
    if device == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    """Run every window in its own subprocess and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="mnist1d-mlp")
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--windows", default="1,25,50,100,200")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--forward", action="store_true", help="also measure forward-manual")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if a.single is not None:
        backend, _, w = a.single.partition(":")
        print(json.dumps(measure(a.task, a.horizon, int(w) if w else None, backend, a.device, a.samples)))
        return
    jobs = [f"reverse-truncated:{w}" for w in a.windows.split(",")] + (["forward-manual:"] if a.forward else [])
    rows = []
    for job in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--task",
            a.task,
            "--horizon",
            str(a.horizon),
            "--samples",
            str(a.samples),
            "--device",
            a.device,
            "--single",
            job,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    cuda = a.device == "cuda"
    print(f"task={a.task} T={a.horizon} device={a.device}")
    print("| backend | W | graph MiB | peak RSS MiB |" + (" CUDA peak MiB |" if cuda else "") + " seconds |")
    print("|---|---|---|---|" + ("---|" if cuda else "") + "---|")
    for r in rows:
        w = "-" if r["window"] is None else r["window"]
        extra = f" {r['cuda_peak_mib']:.1f} |" if cuda else ""
        graph = "-" if r["graph_mib"] is None else f"{r['graph_mib']:.1f}"
        print(f"| {r['backend']} | {w} | {graph} | {r['peak_rss_mib']:.0f} |{extra} {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
