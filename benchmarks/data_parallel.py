"""Seconds per inner step of the exact backends on 1 process and on N data-parallel processes (gloo).

The global minibatch is fixed; with N processes each takes ``batch / N`` rows.  Every process runs
with one thread, so N processes on N cores are compared with one process on one core.  Also times
the ``all_reduce`` alone for the buffer each backend sends per step.  Run by hand on a quiet machine::

    python benchmarks/data_parallel.py --model mlp --batch-size 128 --processes 1 --processes 2
    python benchmarks/data_parallel.py --model cnn --batch-size 256 --processes 1 --processes 2
    python benchmarks/data_parallel.py --device cuda --model cnn --batch-size 1024   # NCCL, one GPU per process
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpo.backends.forward import ForwardManualBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.core.backend import run_inner
from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.runtime.distributed import Communicator, end_process
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.tasks.mnist1d import mnist1d_task

BACKENDS = {"forward-manual": ForwardManualBackend, "reverse-checkpointed": ReverseCheckpointedBackend}


def measure(rank: int, world: int, store: str, out: str, args: dict[str, Any]) -> None:
    """One process: seconds per inner step of each backend, and of one all_reduce of its buffer."""
    torch.set_num_threads(1)
    cuda = args["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    comm = None
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        comm = Communicator(rank, world)
    task = mnist1d_task(args["model"], num_samples=args["samples"])
    rule = SGDMomentum()
    config = FDSConfig(inner_steps=(args["horizon"],), batch_size=args["batch_size"], comm=comm,
                       device=args["device"])
    problem = make_problem(task, rule, config, 0)
    n_params = sum(p.numel() for p in problem.params.values())
    schedule = Schedule.initial(rule, {"lr": 7}, {"lr": 0.1, "momentum": 0.9})
    rows = {}
    for name, cls in BACKENDS.items():
        run_inner(cls(), dataclasses.replace(problem, horizon=min(10, args["horizon"])), schedule)  # warm-up
        sync(cuda)
        t0 = time.perf_counter()
        run_inner(cls(), problem, schedule)
        sync(cuda)
        rows[name] = (time.perf_counter() - t0) / args["horizon"]
    comm_s = {}
    if comm is not None:
        columns = sum(schedule.counts.values())
        for label, size in (("gradient", n_params), (f"gradient + {columns} columns", n_params * (1 + columns))):
            buf = [torch.zeros(size, device=next(iter(problem.params.values())).device)]
            comm.mean(buf)
            sync(cuda)
            t0 = time.perf_counter()
            for _ in range(50):
                comm.mean(buf)
            sync(cuda)
            comm_s[label] = (time.perf_counter() - t0) / 50
        dist.destroy_process_group()
    if rank == 0:
        torch.save({"rows": rows, "comm": comm_s, "params": n_params}, Path(out) / f"n{world}.pt")
    end_process(0)  # gloo can abort the interpreter's shutdown after torch.func (hpo.runtime.distributed.end_process)


def sync(cuda: bool) -> None:
    """Wait for queued GPU work (timings on CUDA)."""
    if cuda:
        torch.cuda.synchronize()


def main() -> None:
    """Print one table row per (backend, number of processes)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--processes", type=int, action="append", help="process counts (default: 1 and 2)")
    args = ap.parse_args()
    counts = args.processes or [1, 2]
    settings = {"device": args.device, "model": args.model, "batch_size": args.batch_size, "horizon": args.horizon, "samples": args.samples}
    os.environ["OMP_NUM_THREADS"] = "1"
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            mp.start_processes(measure, args=(n, str(Path(d) / f"store{n}"), d, settings), nprocs=n,
                               start_method="spawn")
            results[n] = torch.load(Path(d) / f"n{n}.pt")
    first = results[counts[0]]
    print(f"cores: {os.cpu_count()}; torch {torch.__version__}; model {args.model} ({first['params']} weights), "
          f"global batch {args.batch_size}, T = {args.horizon}, 7/1/1 schedule, one thread per process")
    print("| backend | processes | rows per process | ms per inner step | speed-up |")
    print("|---|---|---|---|---|")
    for name in BACKENDS:
        base = results[counts[0]]["rows"][name]
        for n in counts:
            s = results[n]["rows"][name]
            print(f"| {name} | {n} | {args.batch_size // n} | {1000 * s:.2f} | {base / s:.2f}x |")
    for n in counts:
        for label, s in results[n]["comm"].items():
            print(f"all_reduce, {n} processes, {label}: {1e6 * s:.0f} us")


if __name__ == "__main__":
    main()
