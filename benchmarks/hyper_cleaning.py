"""Data hyper-cleaning on MNIST-1D: one loss weight per training example, learned over the whole run.

A seeded fraction P of the training labels is replaced by other classes (``label_noise``); a clean
tenth of the training set is the validation set, the test set is clean.  FDS learns one weight
:math:`w_i \\in [0, 1]` per training example of the weighted loss

.. math::  L(\\theta; b) = \\frac1B \\sum_{i \\in b} w_i\\, \\ell_i(\\theta)

so that the validation loss after the whole inner run is lowest.  At equal wall-clock time
(``--budget-seconds``, every method), over ``--seeds``, this prints the test accuracy of:

* FDS with reverse-checkpointed hypergradients (exact, whole horizon), with the authors' sign outer
  update and with each ``--fds-outers`` entry (default: Adam, learning rate 0.1, what ``--outer auto``
  picks for per-example weights);
* ``greedy``: the one-step hypergradient of each inner step (Ren et al. 2018's reweighting);
* ``reverse-truncated`` through the last ``--window`` steps;
* ``hand-picked``: the optimizer's hand-picked setting, every weight 1 (training on everything);
* ``schedule-free`` SGD on the noisy data, its settings searched;
* ``cosine-tpe``: TPE over a cosine schedule's settings, weight decay and a global label smoothing
  (black-box searches draw one shared value per loss kind, so per-example weights are not theirs);
* the oracle: the hand-picked setting with every noisy example's weight 0 (not a search: it knows
  the noise mask).

For the methods that learn per-example weights it prints the precision, recall and F1 of the
examples flagged as noisy (:math:`w_i < 0.5`) against the true mask, the weights' histogram by
clean and noisy examples, and the share of examples whose hypergradient sign after one outer step
points the right way (positive for a noisy example: its weight goes down).

``--outers`` instead compares outer optimizers for FDS on the same setup (one seed each).

Example (the figures on docs/results-hyper-cleaning.md)::

    OMP_NUM_THREADS=1 python benchmarks/hyper_cleaning.py --seeds 0,1,2 --inner-steps 500 --budget-seconds 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo import CompareConfig, RunConfig, compare, run
from hpo.app.task_loading import load_task
from hpo.core.schedule import Schedule
from hpo.search.inner_runs import rule_with_groups
from hpo.search.retrain import RETRAIN_SEED_OFFSET, retrain
from hpo.tasks.mnist1d import load_mnist1d, noisy_split

#: The methods that learn per-example weights (their F1 is reported).
WEIGHTED = ("reverse-checkpointed", "greedy", "reverse-truncated")
#: The hand-picked setting of SGD, where the FDS methods start (the oracle trains with it too).
HAND = {"lr": 0.1, "momentum": 0.9, "wd": 5e-4}

#: The per-example weights' outer step under the sign update, as measured (the kind's default step is Adam's 0.1).
SIGN_STEP = 0.2


def noise_mask(samples: int, noise: float) -> torch.Tensor:
    """Which training examples of the noisy MNIST-1D task had their label replaced (the task's own split)."""
    data = load_mnist1d(samples)
    return noisy_split(data["train_x"], data["train_y"], noise)[2]


def flag_scores(weights: Sequence[Any], noisy: torch.Tensor, cut: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of the examples flagged noisy (weight below ``cut``) against ``noisy``."""
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    flagged = w < cut
    hit = float((flagged & noisy).sum())
    precision = hit / max(1.0, float(flagged.sum()))
    recall = hit / max(1.0, float(noisy.sum()))
    f1 = 0.0 if hit == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": float(flagged.sum())}


def separation(weights: Sequence[Any], noisy: torch.Tensor) -> dict[str, float]:
    """Mean weight of the clean and of the noisy examples, and the AUC of :math:`1 - w_i` as a noisy-example
    score (the chance that a random noisy example weighs less than a random clean one; ties count half)."""
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    wn, wc = w[noisy], w[~noisy]
    less = (wn.unsqueeze(1) < wc.unsqueeze(0)).double().mean() + 0.5 * (wn.unsqueeze(1) == wc.unsqueeze(0)).double().mean()
    return {"clean_mean": float(wc.mean()), "noisy_mean": float(wn.mean()), "auc": float(less)}


def histogram(weights: Sequence[Any], noisy: torch.Tensor, bins: int = 10) -> list[tuple[str, int, int]]:
    """``(bin, clean count, noisy count)`` of the weights over ``bins`` equal bins of [0, 1]."""
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    idx = (w * bins).floor().clamp(0, bins - 1).long()
    return [(f"[{b / bins:.1f}, {(b + 1) / bins:.1f}{']' if b == bins - 1 else ')'}",
             int(((idx == b) & ~noisy).sum()), int(((idx == b) & noisy).sum())) for b in range(bins)]


def mean_std(xs: Sequence[float]) -> str:
    """``mean ± std`` (sample std; 0 for one value)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.3f} ± {sd:.3f}"


def compare_config(a: argparse.Namespace, kinds: tuple[str, ...], methods: Sequence[str], logdir: Path,
                   **extra: Any) -> CompareConfig:
    """The shared settings of every comparison of this benchmark."""
    return CompareConfig(task=f"mnist1d-{a.model}", samples=a.samples, label_noise=a.label_noise, loss_hypers=kinds,
                         methods=tuple(methods), inner_steps=a.inner_steps, budget=(10**7,), seeds=a.seeds,
                         budget_seconds=a.budget_seconds, device="cpu", logdir=str(logdir),
                         window=a.window if "reverse-truncated" in methods else None, **extra)


def fds_extra(a: argparse.Namespace) -> dict[str, Any]:
    """The FDS methods' start (the hand-picked setting), outer steps (``--fds-steps``) and the authors' sign
    outer update, named (``--outer auto`` would pick Adam for per-example weights: that is the ``--fds-outers`` row)."""
    return {"init": dict(HAND), "steps": {"example_weight": SIGN_STEP, **dict(a.fds_steps)}, "outer": "sign"}


def fds_config(a: argparse.Namespace, entry: str) -> CompareConfig:
    """FDS (reverse-checkpointed) with the outer optimizer ``NAME[:STEP][:OPTION=VALUE]``: ``STEP`` the
    per-example weights' outer step (adam: its learning rate), ``OPTION`` one of the optimizer's options."""
    name, step, option = (entry.split(":") + ["", ""])[:3]
    extra = {**fds_extra(a), "outer": name}
    if step:
        extra["steps"] = {**extra["steps"], "example_weight": float(step)}
    tag = entry.replace(":", "-").replace("=", "")
    return compare_config(a, ("example_weight",), ["reverse-checkpointed"], a.logdir / f"outer-{tag}",
                          outer_options=pairs(option), **extra)


def oracle(a: argparse.Namespace, noisy: torch.Tensor) -> list[float]:
    """Test accuracy per seed of the hand-picked setting retrained with the noisy examples' weights at 0."""
    cfg = CompareConfig(task=f"mnist1d-{a.model}", samples=a.samples, label_noise=a.label_noise,
                        loss_hypers=("example_weight",), device="cpu")
    task = load_task(cfg.task, cfg.task_options(), torch.float32, "cpu", cfg.loss_hypers)
    rule = rule_with_groups(task, cfg.resolved_rule, cfg.settings().fds(0))
    values = {k: torch.tensor([v], dtype=torch.float64) for k, v in HAND.items()}
    values["example_weight"] = (~noisy).double().unsqueeze(1)
    return [retrain(task, rule, Schedule(values), a.inner_steps, s + RETRAIN_SEED_OFFSET).test_acc for s in a.seeds]


def one_step_agreement(a: argparse.Namespace, noisy: torch.Tensor, logdir: Path) -> dict[str, float]:
    """After one FDS outer step from weights 1, the share of examples moved the right way.

    The sign update lowers :math:`w_i` exactly where the hypergradient is positive, so a weight
    below 1 marks a positive hypergradient; it should be so for the noisy examples and not for the clean.
    """
    res = run(RunConfig(task=f"mnist1d-{a.model}", samples=a.samples, label_noise=a.label_noise,
                        loss_hypers=("example_weight",),
                        backend="reverse-checkpointed", outer_steps=1, inner_steps=(a.inner_steps,), seed=a.seeds[0],
                        device="cpu", threads=1, logdir=str(logdir), **fds_extra(a)))
    w = res.schedule.values["example_weight"].reshape(-1)
    down = w < 1
    return {"agreement": float((down == noisy).double().mean()), "noisy_down": float(down[noisy].double().mean()),
            "clean_down": float(down[~noisy].double().mean())}


def table(rows: Mapping[str, list[Any]], noisy: torch.Tensor, oracle_accs: list[float]) -> list[str]:
    """Markdown lines: test accuracy, search time and (per-example methods) flag precision/recall/F1 and the
    AUC of :func:`separation`, per method."""
    lines = ["| method | test acc (mean ± std) | search wall s (mean) | flagged | precision | recall | F1 | AUC |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| oracle (noisy weights 0, hand-picked) | {mean_std(oracle_accs)} | 0 | - | - | - | - | - |")
    for name, rs in rows.items():
        acc = mean_std([r.test_acc for r in rs])
        secs = statistics.fmean(r.search_seconds for r in rs)
        if "example_weight" in rs[0].schedule and name.startswith(WEIGHTED):
            sc = [flag_scores(r.schedule["example_weight"], noisy) for r in rs]
            cells = [mean_std([s[k] for s in sc]) for k in ("precision", "recall", "f1")]
            cells.append(mean_std([separation(r.schedule["example_weight"], noisy)["auc"] for r in rs]))
            flagged = f"{statistics.fmean(s['flagged'] for s in sc):.0f}"
            lines.append(f"| {name} | {acc} | {secs:.0f} | {flagged} | {' | '.join(cells)} |")
        else:
            lines.append(f"| {name} | {acc} | {secs:.0f} | - | - | - | - | - |")
    return lines


def by_method(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """The comparison's rows grouped by method (in order)."""
    out: dict[str, list[Any]] = {}
    for r in rows:
        out.setdefault(r.method, []).append(r)
    return out


def showcase(a: argparse.Namespace, noisy: torch.Tensor) -> dict[str, Any]:
    """Every method at equal wall-clock time over the seeds; the table and the FDS diagnostics."""
    start = time.perf_counter()
    quiet = lambda line: print("  " + line, flush=True)
    weighted, _ = compare(compare_config(a, ("example_weight",), a.methods, a.logdir / "weighted", **fds_extra(a)),
                          log=quiet)
    blackbox, _ = compare(compare_config(a, ("label_smoothing",), a.blackbox, a.logdir / "blackbox",
                                         space=a.space), log=quiet)
    variants = []
    for entry in a.fds_outers:  # FDS again with another outer optimizer, under its own name
        rs, _ = compare(fds_config(a, entry), log=quiet)
        variants += [replace(r, method=f"reverse-checkpointed, outer {entry}") for r in rs]
    rows = by_method([*weighted, *variants, *blackbox])
    oracle_accs = oracle(a, noisy)
    print(f"\n## test accuracy at {a.budget_seconds:g} s of search per method, T={a.inner_steps}, "
          f"seeds {','.join(map(str, a.seeds))}\n")
    print("\n".join(table(rows, noisy, oracle_accs)))
    out: dict[str, Any] = {"oracle": oracle_accs,
                           "methods": {m: [{"seed": r.seed, "test_acc": r.test_acc, "seconds": r.search_seconds,
                                            "steps": r.steps} for r in rs] for m, rs in rows.items()}}
    for name in (m for m in rows if m.startswith(WEIGHTED)):
        r = rows[name][0]
        print(f"\n## {name}, seed {r.seed}: weights by clean / noisy example ({r.steps} inner steps searched)\n")
        print("| weight | clean | noisy |\n|---|---|---|")
        for b, c, n in histogram(r.schedule["example_weight"], noisy):
            print(f"| {b} | {c} | {n} |")
        sep = separation(r.schedule["example_weight"], noisy)
        print(f"\nmean weight: clean {sep['clean_mean']:.3f}, noisy {sep['noisy_mean']:.3f}; "
              f"AUC of 1 - w for the noise mask {sep['auc']:.3f}")
        others = {k: v for k, v in r.schedule.items() if k != "example_weight"}
        print(f"\nits optimizer values: {json.dumps({k: [round(float(x), 4) for x in v] for k, v in others.items()})}")
    agree = one_step_agreement(a, noisy, a.logdir / "one-step")
    out["one_step"] = agree
    print(f"\n## one outer step (reverse-checkpointed, seed {a.seeds[0]}): hypergradient sign against the noise mask\n")
    print(f"right sign: {agree['agreement']:.3f} of examples; weight lowered: {agree['noisy_down']:.3f} of noisy, "
          f"{agree['clean_down']:.3f} of clean")
    print(f"\nwall time of the benchmark: {time.perf_counter() - start:.0f} s")
    return out


def outer_study(a: argparse.Namespace, noisy: torch.Tensor) -> dict[str, Any]:
    """FDS (reverse-checkpointed) with each ``--outers`` entry (:func:`fds_config`), ``--seeds`` each."""
    print(f"\n## outer optimizers: reverse-checkpointed, {a.budget_seconds:g} s, T={a.inner_steps}, "
          f"seeds {','.join(map(str, a.seeds))}\n")
    print("| outer[:step][:option] | test acc | outer steps | flagged | precision | recall | F1 | AUC |")
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for entry in a.outers:
        rows, _ = compare(fds_config(a, entry), log=lambda line: print("  " + line, flush=True))
        sc = [flag_scores(r.schedule["example_weight"], noisy) for r in rows]
        cells = [mean_std([s[k] for s in sc]) for k in ("precision", "recall", "f1")]
        outer_steps = statistics.fmean(r.steps for r in rows) / a.inner_steps
        auc = mean_std([separation(r.schedule["example_weight"], noisy)["auc"] for r in rows])
        print(f"| {entry} | {mean_std([r.test_acc for r in rows])} | {outer_steps:.1f} | "
              f"{statistics.fmean(s['flagged'] for s in sc):.0f} | {' | '.join(cells)} | {auc} |", flush=True)
        out[entry] = {"test_acc": [r.test_acc for r in rows], "scores": sc}
    return out


def pairs(text: str) -> dict[str, float]:
    """``lr=1e-9,wd=1e-12`` -> ``{"lr": 1e-9, "wd": 1e-12}``."""
    return {k.strip(): float(v) for k, _, v in (p.partition("=") for p in text.split(",") if p.strip())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the showcase (or ``--outers``), print Markdown tables; returns the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="The MNIST-1D model (mnist1d-mlp or mnist1d-cnn).")
    ap.add_argument("--samples", type=int, default=5000, help="MNIST-1D samples (80%% train, of which a tenth is val).")
    ap.add_argument("--label-noise", type=float, default=0.45)
    ap.add_argument("--inner-steps", type=int, default=500, help="Horizon T of every inner run and retrain.")
    ap.add_argument("--budget-seconds", type=float, default=60.0, help="Wall-clock search time of every method.")
    ap.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=(0, 1, 2))
    ap.add_argument("--window", type=int, default=20, help="reverse-truncated window W.")
    ap.add_argument("--methods", type=lambda s: s.split(","),
                    default=["reverse-checkpointed", "greedy", "reverse-truncated", "schedule-free", "hand-picked"],
                    help="Methods run with per-example weights (black-box ones draw one shared weight).")
    ap.add_argument("--blackbox", type=lambda s: s.split(","), default=["cosine-tpe"],
                    help="Methods run with a global label smoothing instead (over --space).")
    ap.add_argument("--space", default="wd=1e-5:1e-2:log,label_smoothing=0:0.3")
    ap.add_argument("--fds-steps", type=pairs, default=pairs("lr=1e-9,momentum=1e-9,wd=1e-12"),
                    help="Outer steps of the FDS methods (tiny: the optimizer's values stay hand-picked).")
    ap.add_argument("--fds-outers", type=lambda s: [x for x in s.split(",") if x], default=["adam:0.1"],
                    help="Also run FDS (reverse-checkpointed) with these outer optimizers, NAME or NAME:STEP.")
    ap.add_argument("--outers", type=lambda s: [x for x in s.split(",") if x], default=[],
                    help="Compare outer optimizers instead, e.g. sign,adam:0.1,sign-magnitude.")
    ap.add_argument("--logdir", type=Path, default=Path("runs") / f"hyper-cleaning-{int(time.time())}")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    noisy = noise_mask(a.samples, a.label_noise)
    print(f"# hyper-cleaning: MNIST-1D {a.model.upper()}, samples={a.samples}, label noise {a.label_noise:g} "
          f"({int(noisy.sum())} of {noisy.numel()} training labels replaced), T={a.inner_steps}, "
          f"torch={torch.__version__}, CPU (1 thread)")
    out = outer_study(a, noisy) if a.outers else showcase(a, noisy)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
