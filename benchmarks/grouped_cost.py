"""Cost per inner step of per-group schedules against the shared 7/1/1 schedule (reverse-checkpointed).

For each MNIST-1D model (the 1-D CNN and the MLP, the library's own ``CNN1D`` and ``MLP``) and
each grouping, a whole reverse-checkpointed inner run of ``--horizon`` steps (the forward pass,
the recomputation and the reverse sweep, then the per-segment scatter) is timed and divided by
its number of steps.  The groupings:

* ``shared``: 7 learning rates, 1 momentum, 1 weight decay (the FDS default; 9 values);
* ``layer``: 7 learning rates per layer, 1 momentum per layer and 1 weight decay per layer
  (``--groups lr=layer,momentum=layer,wd=layer``; 36 values for the CNN's 4 layers, 27 for the MLP's 3);
* ``param``: the same per parameter tensor (8 tensors of the CNN: 72 values; 6 of the MLP: 54).

Runs alternate between the groupings (``--repeats`` rounds) and the median is reported, so a
slow moment of a shared machine hits every grouping alike.  The ratio is grouped / shared.
Run it on one thread, alone::

    OMP_NUM_THREADS=1 flock /tmp/heavy.lock python benchmarks/grouped_cost.py --horizon 100 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.core.backend import run_inner
from hpo.core.data import TensorRows
from hpo.core.grouping import grouped_rule
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.tasks.base import classification_task, model_functions, split_state
from hpo.tasks.mnist1d import CNN1D, MLP

MODELS = {"cnn": CNN1D, "mlp": MLP}
GROUPINGS = {"shared": {}, "layer": {"lr": "layer", "momentum": "layer", "wd": "layer"},
             "param": {"lr": "param", "momentum": "param", "wd": "param"}}
COUNTS = {"lr": 7, "momentum": 1, "wd": 1}
HYPER = {"lr": 0.05, "momentum": 0.9, "wd": 5e-4}


def problem(model: str, grouping: str, horizon: int, batch: int, seed: int = 0) -> tuple[InnerProblem, Schedule]:
    """A float32 inner problem on synthetic MNIST-1D-shaped data, and its (grouped) schedule."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net: nn.Module = MODELS[model]()
    x = torch.randn(4 * batch, 40, generator=gen)
    y = torch.randint(0, 10, (4 * batch,), generator=gen)
    task = classification_task("synthetic", x, y, x[:batch], y[:batch], lambda: net, batch_size=batch)
    loss_fn, eval_fn = model_functions(net, task)
    params, buffers = split_state(net)
    rule = grouped_rule(SGDMomentum(), GROUPINGS[grouping], params)
    sched = Schedule.constant(HYPER, COUNTS)
    groups = getattr(rule, "grouping", None)
    if groups is not None:
        sched = sched.broadcast_groups(groups.group_counts)
    p = InnerProblem(loss_fn, eval_fn, params, buffers, rule, TensorRows((x, y)), TensorRows((x[:batch], y[:batch])),
                     horizon=horizon, batch_size=batch, eval_batch_size=batch, seed=seed, score_fn=task.score_fn(),
                     model_loss=task.loss)
    return p, sched


def time_run(p: InnerProblem, sched: Schedule) -> float:
    """ms per inner step of one whole reverse-checkpointed run (forward, recomputation, sweep)."""
    start = time.perf_counter()
    res = run_inner(ReverseCheckpointedBackend(), p, sched)
    ms = (time.perf_counter() - start) * 1000 / p.horizon
    assert not res.diverged and all(bool(torch.isfinite(h).all()) for h in res.hypergrad.values())
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--groupings", default="shared,layer,param")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), horizon {a.horizon}, batch {a.batch_size}")
    rows = []
    for model in a.models.split(","):
        names = a.groupings.split(",")
        cases = {g: problem(model, g, a.horizon, a.batch_size) for g in names}
        for g in names:  # warm-up (torch.func's first-call costs)
            p, s = cases[g]
            time_run(problem(model, g, 8, a.batch_size)[0], s)
        times: dict[str, list[float]] = {g: [] for g in names}
        for _ in range(a.repeats):
            for g in names:
                times[g].append(time_run(*cases[g]))
        base = statistics.median(times[names[0]])
        for g in names:
            p, s = cases[g]
            med = statistics.median(times[g])
            cells = len(getattr(p.rule, "cells", ())) or 1
            rows.append({"model": model, "grouping": g, "values": s.size, "cells": cells, "ms_per_step": med,
                         "ratio": med / base, "all_ms": times[g]})
    print(f"{'model':5} {'grouping':8} {'values':>6} {'cells':>5} {'ms/step':>8} {'x shared':>8}")
    for r in rows:
        print(f"{r['model']:5} {r['grouping']:8} {r['values']:6d} {r['cells']:5d} {r['ms_per_step']:8.2f} "
              f"{r['ratio']:8.2f}")
    if a.json is not None:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
