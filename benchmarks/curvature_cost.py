"""Cost of the related-work rules (exadam, sophia, adahessian) against a plain SGD step.

For each rule and model (the MNIST-1D MLP and 1-D CNN, synthetic MNIST-1D-shaped batches), prints
milliseconds per step and the multiple of a plain SGD step (:func:`hpo.core.step.train_step` with
``sgd``, no graph) for

* ``plain``: one :func:`~hpo.core.step.train_step` of the rule without a graph (for a curvature
  rule, averaged over ``every`` steps, so the refresh steps count in proportion);
* ``plain, refresh``: a curvature rule's step on a refresh step only (gradient + ``probes``
  Hessian-vector products);
* ``reverse-checkpointed``: a whole run of ``--horizon`` steps (forward pass, recomputation and
  reverse sweep; :class:`~hpo.backends.reverse_checkpointed.ReverseCheckpointedBackend`) divided by
  its number of steps.

The rules run with their defaults (sophia: estimate every 10 steps; adahessian: every step), and
``--every`` overrides both.  Example (one thread)::

    OMP_NUM_THREADS=1 python benchmarks/curvature_cost.py --models mlp,cnn --steps 30 --horizon 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.core.backend import run_inner
from hpo.core.data import TensorRows
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.core.step import train_step
from hpo.optimizers import AdaHessian, EXAdam, SGDMomentum, Sophia, UpdateRule
from hpo.tasks.base import classification_task, model_functions, split_state
from hpo.tasks.mnist1d import CNN1D, MLP

MODELS = {"mlp": MLP, "cnn": CNN1D}


def rules(every: int | None) -> list[UpdateRule]:
    """sgd, then the three rules (with ``every`` for the curvature rules when given)."""
    sophia = Sophia() if every is None else Sophia(every=every)
    ada = AdaHessian() if every is None else AdaHessian(every=every)
    return [SGDMomentum(), EXAdam(), sophia, ada]


def problem(rule: UpdateRule, model: str, batch: int, horizon: int) -> InnerProblem:
    """``horizon`` steps of ``rule`` on a seeded model and a pool of 8 synthetic batches."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MODELS[model]()
    x = torch.randn(8 * batch, 40, generator=gen)
    y = torch.randint(0, 10, (8 * batch,), generator=gen)
    task = classification_task("synthetic", x, y, x[:batch], y[:batch], lambda: net, batch_size=batch)
    loss_fn, eval_fn = model_functions(net, task)
    params, buffers = split_state(net)
    return InnerProblem(loss_fn, eval_fn, params, buffers, rule, TensorRows((x, y)), TensorRows((x[:batch], y[:batch])),
                        horizon=horizon, batch_size=batch, eval_batch_size=batch, score_fn=task.score_fn())


def time_plain(p: InnerProblem, steps: int, warmup: int, only_refresh: bool = False) -> float:
    """ms per :func:`train_step` (no graph) over ``steps`` steps (refresh steps only if ``only_refresh``)."""
    rule = p.rule
    hyper = {k: torch.tensor(v) for k, v in (rule.hand_picked or {}).items()}
    params, buffers, state = p.params, p.buffers, rule.init(p.params)
    every = rule.curvature.every if rule.curvature is not None else 1
    ts = [t * every for t in range(warmup + steps)] if only_refresh else list(range(warmup + steps))
    with torch.no_grad():
        for i, t in enumerate(ts):
            if i == warmup:
                start = time.perf_counter()
            out = train_step(rule, p.loss_fn, params, buffers, state, hyper, t, p.batch(t % 8), seed=p.seed)
            params, state, buffers = out.params, out.opt_state, out.buffers
    return (time.perf_counter() - start) * 1e3 / steps


def time_reverse(p: InnerProblem) -> float:
    """ms per step of a whole reverse-checkpointed run (forward, recompute, sweep) at the hand-picked setting."""
    schedule = Schedule.constant(p.rule.hand_picked or {})
    run_inner(ReverseCheckpointedBackend(), p, schedule)  # warm-up
    start = time.perf_counter()
    run_inner(ReverseCheckpointedBackend(), p, schedule)
    return (time.perf_counter() - start) * 1e3 / p.horizon


def main(argv: list[str] | None = None) -> None:
    """Print one table per model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--every", type=int, default=None, help="refresh interval of both curvature rules")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# curvature cost: batch={args.batch_size} threads={args.threads} steps={args.steps} "
          f"horizon={args.horizon} torch={torch.__version__}")
    for model in args.models.split(","):
        print(f"\n## {model} (x = multiple of a plain SGD train_step)")
        print("| rule | curvature | plain ms (x) | plain, refresh step ms (x) | reverse-checkpointed ms/step (x) |")
        print("|---|---|---|---|---|")
        base = None
        for rule in rules(args.every):
            p = problem(rule, model, args.batch_size, args.horizon)
            plain = time_plain(p, args.steps, args.warmup)
            base = plain if base is None else base
            curv = rule.curvature
            refresh = time_plain(p, args.steps, args.warmup, only_refresh=True) if curv is not None else None
            rev = time_reverse(p)
            what = "-" if curv is None else f"every {curv.every}, {curv.probes} probe"
            ref = "-" if refresh is None else f"{refresh:.2f} ({refresh / base:.1f})"
            print(f"| {rule.name} | {what} | {plain:.2f} ({plain / base:.1f}) | {ref} | {rev:.2f} ({rev / base:.1f}) |")


if __name__ == "__main__":
    main()
