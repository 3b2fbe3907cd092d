"""Per-class loss weights on an imbalanced MNIST-1D, learned by FDS against a clean balanced validation set.

The training set keeps a tenth of the examples of ``--minority`` classes (5..9 by default) and all
of the others; a balanced validation set (``--val-per-class`` examples of each class, taken before
the cut) is the problem's own (``Problem(val=...)``); the test set is MNIST-1D's, untouched.  The loss is

.. math::  L(\\theta; b) = \\frac1B \\sum_{i \\in b} c_{y_i}\\, \\ell_i(\\theta)

and, over ``--seeds``, this prints the test accuracy, the balanced accuracy
:math:`\\frac1C \\sum_c \\mathrm{acc}_c` and the minority classes' accuracy of

* equal weights (:math:`c_y = 1`, the hand-picked setting);
* inverse-frequency weights :math:`c_y = n / (C\\, n_y)` (retrained, fixed);
* FDS (reverse-checkpointed) learning :math:`c_y` over the whole run from 1, the optimizer at its
  hand-picked setting, ``--outer-steps`` outer steps.

Example (the figures on docs/results-hyper-cleaning.md)::

    OMP_NUM_THREADS=1 python benchmarks/imbalanced.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo import Metric, Problem, RunConfig, run
from hpo.core.schedule import Schedule
from hpo.optimizers.loss_hypers import WithLossHypers
from hpo.optimizers.sgd import SGDMomentum
from hpo.search.retrain import RETRAIN_SEED_OFFSET, retrain
from hpo.tasks.base import classification_task
from hpo.tasks.loss_hypers import with_loss_hypers
from hpo.tasks.mnist1d import MLP, load_mnist1d

CLASSES = 10
#: SGD's hand-picked setting: every method trains with it (FDS learns only the class weights).
HAND = {"lr": 0.1, "momentum": 0.9, "wd": 5e-4}


def class_metric(scale: Tensor) -> Callable[[nn.Module, Any], Tensor]:
    """A batch mean of :math:`[\\hat y_i = y_i]\\, s_{y_i}`: with :math:`s_c = n/(C n_c)` over the test set it is
    the balanced accuracy; with :math:`s_c = n / n_{minority}` on minority classes (0 elsewhere) their accuracy."""

    def fn(model: nn.Module, batch: Any) -> Tensor:
        x, y = batch
        correct = (model(x).argmax(-1) == y).to(x.dtype)
        return (correct * scale.to(x.device, x.dtype)[y]).mean()

    return fn


def imbalanced_problem(samples: int, minority: Sequence[int], keep: float, val_per_class: int) -> Problem:
    """MNIST-1D with ``minority`` classes cut to a fraction ``keep`` of their training examples, a balanced
    validation set and balanced-accuracy and minority-accuracy metrics on the test set."""
    d = load_mnist1d(samples)
    x, y = d["train_x"], d["train_y"]
    gen = torch.Generator().manual_seed(11)
    val, train = [], []
    for c in range(CLASSES):
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        val.append(idx[:val_per_class])
        rest = idx[val_per_class:]
        train.append(rest[:max(1, round(keep * rest.numel()))] if c in minority else rest)
    tr, va = torch.cat(train), torch.cat(val)
    test_y = d["test_y"]
    counts = torch.bincount(test_y, minlength=CLASSES).double()
    is_min = torch.zeros(CLASSES, dtype=torch.bool)
    is_min[list(minority)] = True
    balanced = test_y.numel() / (CLASSES * counts)
    minority_scale = torch.where(is_min, test_y.numel() / counts[is_min].sum(), torch.zeros(()))
    task = classification_task("mnist1d-mlp-imbalanced", x[tr], y[tr], d["test_x"], test_y, lambda: MLP())
    metrics = {**task.metrics, "balanced_acc": Metric(class_metric(balanced), "higher"),
               "minority_acc": Metric(class_metric(minority_scale), "higher")}
    return replace(task, val=(x[va], y[va]), metrics=metrics)


def fixed_class_weights(problem: Problem, weights: Tensor, steps: int, seed: int) -> dict[str, float]:
    """Test metrics of the hand-picked setting retrained with the fixed class weights ``weights`` (one per class)."""
    task = with_loss_hypers(problem, ("class_weight",))
    rule = WithLossHypers(SGDMomentum(), task.hypers, task.hyper_groups())
    values = {k: torch.tensor([v], dtype=torch.float64) for k, v in HAND.items()}
    values["class_weight"] = weights.double().reshape(CLASSES, 1)
    r = retrain(task, rule, Schedule(values), steps, seed + RETRAIN_SEED_OFFSET)
    return {"acc": r.test_acc, **{k: v for k, v in r.metrics.items() if k != "loss"}}


def mean_std(xs: Sequence[float]) -> str:
    """``mean ± std`` (sample std; 0 for one value)."""
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every seed, print the table and the learned weights; returns the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--minority", type=lambda s: [int(c) for c in s.split(",")], default=[5, 6, 7, 8, 9])
    ap.add_argument("--keep", type=float, default=0.1, help="Fraction of a minority class's training examples kept.")
    ap.add_argument("--val-per-class", type=int, default=40)
    ap.add_argument("--inner-steps", type=int, default=500)
    ap.add_argument("--outer-steps", type=int, default=10)
    ap.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=(0, 1, 2))
    ap.add_argument("--logdir", type=Path, default=Path("runs") / f"imbalanced-{int(time.time())}")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    problem = imbalanced_problem(a.samples, a.minority, a.keep, a.val_per_class)
    y = problem.train_rows.data[1]  # type: ignore[attr-defined]
    n_c = torch.bincount(y, minlength=CLASSES).double()
    inverse = y.numel() / (CLASSES * n_c)
    print(f"# imbalanced MNIST-1D: train per class {n_c.long().tolist()}, val {a.val_per_class} per class, "
          f"test {len(problem.test_rows)}, T={a.inner_steps}, {a.outer_steps} outer steps, "
          f"torch={torch.__version__}, CPU (1 thread)")
    res: dict[str, list[dict[str, float]]] = {"equal weights (hand-picked)": [], "inverse frequency": [],
                                              "FDS class weights (reverse-checkpointed)": []}
    learned = []
    for seed in a.seeds:
        r = run(RunConfig(task=problem, loss_hypers=("class_weight",), backend="reverse-checkpointed",
                          outer_steps=a.outer_steps, inner_steps=(a.inner_steps,), init=dict(HAND),
                          steps={"lr": 1e-9, "momentum": 1e-9, "wd": 1e-12}, seed=seed, device="cpu", threads=1,
                          logdir=str(a.logdir / f"seed{seed}")))
        assert r.learned is not None and r.baseline is not None
        res["FDS class weights (reverse-checkpointed)"].append({"acc": r.learned.test_acc, **r.learned.metrics})
        res["equal weights (hand-picked)"].append({"acc": r.baseline.test_acc, **r.baseline.metrics})
        res["inverse frequency"].append(fixed_class_weights(problem, inverse, a.inner_steps, seed))
        learned.append(r.schedule.values["class_weight"].reshape(-1))
        print(f"seed {seed}: FDS search {r.search_seconds:.0f} s, class weights "
              f"{[round(float(w), 2) for w in learned[-1]]}", flush=True)
    print(f"\n## test metrics, seeds {','.join(map(str, a.seeds))}\n")
    print("| class weights | test acc | balanced acc | minority-class acc |\n|---|---|---|---|")
    for name, rows in res.items():
        cells = [mean_std([row[k] for row in rows]) for k in ("acc", "balanced_acc", "minority_acc")]
        print(f"| {name} | {' | '.join(cells)} |")
    mean_w = torch.stack(learned).mean(0)
    print(f"\ninverse-frequency weights: {[round(float(w), 2) for w in inverse]}")
    print(f"FDS weights, mean over seeds: {[round(float(w), 2) for w in mean_w]}")
    print(f"\nwall time of the benchmark: {time.perf_counter() - start:.0f} s")
    return {"results": res, "learned": [w.tolist() for w in learned], "inverse": inverse.tolist()}


if __name__ == "__main__":
    main()
