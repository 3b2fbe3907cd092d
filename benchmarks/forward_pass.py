"""The forward pass of ``reverse-checkpointed`` against a plain training step, and where the difference goes.

Each row trains the same model for ``--steps`` steps and reports the fastest of ``--rounds`` rounds
(process CPU time, one thread by default), in ms per step and as a multiple of the plain step.  The
rows take turns within each round, so a slow spell of a shared machine hits all of them alike:

* ``plain step``: the ``nn.Module``, ``loss.backward()`` and ``torch.optim.SGD(..., foreach=True)``
  on one fixed batch (the yardstick of ``benchmarks/step_cost.py``);
* ``gradient, nn.Module``: only ``autograd.grad`` of the module's loss;
* ``gradient, loss_fn``: the same through the task's pure ``loss_fn`` (weights swapped into the
  module's slots, :class:`hpo.tasks.tensor_swap.TensorSwap`);
* ``autograd_plain_step``: that gradient and the update rule on dicts of tensors;
* ``forward pass, k = 10`` / ``k = 1``: the backend's own steps, storing a checkpoint every 10
  steps / every step, with ``problem.batch(t)`` fetched as a run does;
* ``forward pass, whole run taped``: the backend's steps when the whole run is taped (each step's
  gradient with ``create_graph=True``; the graph is kept, so this row holds ``--steps`` graphs).

Example::

    OMP_NUM_THREADS=1 python benchmarks/forward_pass.py --model mlp --input mnist1d --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import HYPER, INPUTS, MODELS, build, problem_for, schedule_for

from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend, autograd_plain_step
from hpo.core.step import hyper_at_step
from hpo.tasks.base import cross_entropy


def fastest(runs: list[Callable[[], None]], steps: int, rounds: int) -> list[float]:
    """ms per step of each of ``runs`` (``steps`` steps a call): the fastest of ``rounds`` rounds, each
    calling every run once in turn; process CPU time."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.process_time()
            run()
            best[i] = min(best[i], (time.process_time() - start) * 1000 / steps)
    return best


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    """Print the table; return ``(row, ms per step)`` pairs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--input", choices=sorted(INPUTS), default="mnist1d")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200, help="Steps per round.")
    ap.add_argument("--rounds", type=int, default=7, help="Rounds per row; the fastest is kept.")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    net, x, y = build(a.model, INPUTS[a.input], a.batch_size, torch.float32, torch.device("cpu"))
    problem = problem_for(net, x, y, a.steps, a.batch_size)
    sched = schedule_for({"lr": 7, "momentum": 1, "wd": 1}, x.dtype, x.device)
    opt = torch.optim.SGD(net.parameters(), lr=HYPER["lr"], momentum=HYPER["momentum"], weight_decay=HYPER["wd"],
                          foreach=True)
    leaves = {k: v.detach().requires_grad_() for k, v in problem.params.items()}
    hyper = hyper_at_step(sched.values, 0, a.steps)
    state0 = problem.rule.init(problem.params)

    def plain() -> None:
        for _ in range(a.steps):
            opt.zero_grad(set_to_none=True)
            cross_entropy(net(x), y).backward()
            opt.step()

    def grad_module() -> None:
        for _ in range(a.steps):
            torch.autograd.grad(cross_entropy(net(x), y), tuple(net.parameters()))

    def grad_loss_fn() -> None:
        for _ in range(a.steps):
            loss, _ = problem.loss_fn(leaves, problem.buffers, (x, y), hyper)
            torch.autograd.grad(loss, tuple(leaves.values()))

    def rule_step() -> None:
        p, s = problem.params, state0
        for t in range(a.steps):
            out = autograd_plain_step(problem.rule, problem.loss_fn, None, p, problem.buffers, s, hyper, t, (x, y))
            p, s = out.params, out.opt_state

    def backend_pass(every: int | None, budget: int | None) -> Callable[[], None]:
        def run() -> None:
            backend = ReverseCheckpointedBackend(every=every, memory_budget=budget)
            state = backend.init(problem, sched)
            for t, batch in problem.batches():
                state = backend.step(problem, sched, state, t, batch)
            assert every is not None or state.tape is not None
        return run

    rows = [("plain step: nn.Module, backward(), torch.optim.SGD(foreach=True)", plain),
            ("gradient only, nn.Module", grad_module),
            ("gradient only, the task's loss_fn", grad_loss_fn),
            ("autograd_plain_step (gradient + rule.step on dicts)", rule_step),
            ("backend forward pass, k = 10 (+ batch, checkpoints)", backend_pass(10, None)),
            ("backend forward pass, k = 1 (+ every state kept)", backend_pass(1, None)),
            ("backend forward pass, whole run taped", backend_pass(None, None))]
    for _, run in rows:
        run()  # warm-up
    out = list(zip([name for name, _ in rows], fastest([run for _, run in rows], a.steps, a.rounds)))
    base = out[0][1]
    print(f"\n{a.model}, {a.input}-shaped batches of {a.batch_size}: fastest of {a.rounds} rounds of {a.steps} "
          f"steps, process CPU time, {a.threads} thread(s)\n")
    print("| what | ms per step | x plain step |\n|---|---|---|")
    for name, ms in out:
        print(f"| {name} | {ms:.3f} | {ms / base:.2f} |")
    return out


if __name__ == "__main__":
    main()
