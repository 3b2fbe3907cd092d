"""``hpo compare``: hypergradient backends and search baselines at an equal budget of inner steps.

Every method searches on the task's training set minus a fixed hold-out set, spending at most
``B`` inner training steps (one FDS outer step or one search trial costs one horizon ``T``):

* a backend name (``forward-manual``, ``greedy``, ``reverse-truncated``, ...): the FDS sign-based
  outer loop with that backend, ``B // T`` outer steps;
* ``online-greedy``: ``B // T`` runs of online hypergradient descent, each starting from the values
  the last run ended with (its incumbent: the last run's per-segment means);
* ``random-constant`` / ``random-schedule`` / ``tpe`` / ``tpe-schedule``: ``B // T`` trials;
* ``hand-picked``: the rule's constant hand-picked setting (no search, 0 steps).

At each budget point the incumbent schedule is retrained from scratch on the whole training set
for ``retrain_steps`` and tested; at the final budget it is also retrained on the training set
minus the hold-out and scored on the hold-out ("val acc").  Wall-clock time of each search is
reported next to its steps: a forward-mode step costs several plain steps.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import final

import torch

from hpo.app.logdir import default_logdir, ensure_writable_dir
from hpo.app.task_loading import load_task
from hpo.compare_config import CompareConfig
from hpo.retrain import RETRAIN_SEED_OFFSET, retrain
from hpo.schedule import Schedule
from hpo.search.base import Incumbent
from hpo.tasks.base import Task

Log = Callable[[str], None]


@final
@dataclass(frozen=True)
class Row:
    """One retrained result (one method, seed and budget point)."""

    method: str
    seed: int
    budget: int
    steps: int
    search_seconds: float
    cpu_seconds: float
    test_acc: float
    val_acc: float | None
    retrain_steps: int
    diverged: bool
    schedule: dict[str, list[float]]


def split_holdout(task: Task, frac: float) -> tuple[Task, Task]:
    """``(search_task, holdout_task)``: the train set minus a fixed hold-out, and the hold-out as its test set."""
    n = task.train_x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12_345))
    n_hold = max(1, math.ceil(frac * n))
    hold, rest = perm[:n_hold], perm[n_hold:]
    search = replace(task, train_x=task.train_x[rest], train_y=task.train_y[rest])
    holdout = replace(
        task,
        train_x=task.train_x[rest],
        train_y=task.train_y[rest],
        test_x=task.train_x[hold],
        test_y=task.train_y[hold],
    )
    return search, holdout


def incumbent(points: list[Incumbent], budget: int) -> Incumbent | None:
    """The last checkpoint within ``budget`` steps (None if none fits)."""
    fit = [p for p in points if p.steps <= budget]
    return fit[-1] if fit else None


def run_compare(cfg: CompareConfig, task: Task, log: Log = print) -> list[Row]:
    """Search with every method and seed, retrain every incumbent; one :class:`Row` each."""
    rule, settings, steps = cfg.resolved_rule, cfg.settings(), cfg.resolved_retrain_steps
    dtype, device = settings.dtype, settings.device
    search_task, holdout_task = split_holdout(task, cfg.holdout_frac)
    rows: list[Row] = []
    for seed in cfg.seeds:
        for name, method in cfg.resolved_methods.items():
            points = method.search(search_task, rule, settings, seed)
            last = points[-1] if points else None
            log(f"seed {seed}  {name:<18} search: {last.steps if last else 0} inner steps, "
                f"{last.seconds if last else 0.0:.1f}s wall, {last.cpu_seconds if last else 0.0:.1f}s CPU")
            for budget in sorted(cfg.budget):
                point = incumbent(points, budget)
                if point is None:
                    continue
                r = retrain(task, rule, point.schedule, steps, seed + RETRAIN_SEED_OFFSET, dtype, device)
                val = None
                if budget == cfg.max_budget:
                    val = retrain(holdout_task, rule, point.schedule, steps, seed + RETRAIN_SEED_OFFSET,
                                  dtype, device).test_acc
                rows.append(Row(name, seed, budget, point.steps, point.seconds, point.cpu_seconds, r.test_acc, val,
                                steps, r.diverged, point.schedule.to_dict()))
            final = rows[-1]
            log(f"seed {seed}  {name:<18} test_acc={final.test_acc:.4f}  val_acc={final.val_acc:.4f}")
    return rows


def compare(cfg: CompareConfig, log: Log = print) -> tuple[list[Row], dict[str, Path]]:
    """The whole ``hpo compare``: load the task, run every method and seed, write tables and plots."""
    settings = cfg.settings()
    task = load_task(cfg.task, cfg.task_options(), settings.dtype, settings.device)
    logdir = ensure_writable_dir(Path(cfg.logdir) if cfg.logdir is not None else default_logdir("compare"))
    header = (f"task={task.name} optimizer={cfg.resolved_rule.name} budget={','.join(map(str, cfg.budget))} inner "
              f"steps (T={cfg.inner_steps}) retrain={cfg.resolved_retrain_steps} "
              f"seeds={','.join(map(str, cfg.seeds))} device={settings.device} dtype={cfg.dtype}")
    log(header)
    rows = run_compare(cfg, task, log)
    return rows, write_outputs(rows, cfg, logdir, header)


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def summary_table(rows: list[Row], methods: tuple[str, ...], budget: int) -> str:
    """Markdown table at the final budget: mean ± standard deviation over seeds."""
    lines = [
        "| method | val acc | test acc | search wall (s) | search CPU (s) | inner steps | retrain steps | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        rs = [r for r in rows if r.method == m and r.budget == budget]
        if not rs:
            continue
        vals = [r.val_acc for r in rs if r.val_acc is not None]
        secs = statistics.mean(r.search_seconds for r in rs)
        cpu = statistics.mean(r.cpu_seconds for r in rs)
        steps = statistics.mean(r.steps for r in rs)
        div = sum(r.diverged for r in rs)
        flag = f" ({div} diverged)" if div else ""
        lines.append(
            f"| {m} | {_mean_std(vals)} | {_mean_std([r.test_acc for r in rs])}{flag} | {secs:.1f} | {cpu:.1f} | "
            f"{steps:.0f} | {rs[0].retrain_steps} | {len(rs)} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    """Every row (method, seed, budget point) as CSV; the schedule as JSON text."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "seed",
                "budget",
                "steps",
                "search_seconds",
                "cpu_seconds",
                "val_acc",
                "test_acc",
                "retrain_steps",
                "diverged",
                "schedule",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.method,
                    r.seed,
                    r.budget,
                    r.steps,
                    f"{r.search_seconds:.3f}",
                    f"{r.cpu_seconds:.3f}",
                    "" if r.val_acc is None else f"{r.val_acc:.4f}",
                    f"{r.test_acc:.4f}",
                    r.retrain_steps,
                    int(r.diverged),
                    json.dumps(r.schedule),
                ]
            )


def schedules_figure(rows: list[Row], methods: tuple[str, ...], budget: int, seed: int):  # type: ignore[no-untyped-def]
    """One panel per hyperparameter type: each method's final schedule (one seed) over the horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = {r.method: r for r in rows if r.budget == budget and r.seed == seed}
    names = list(next(iter(final.values())).schedule) if final else []
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for m in methods:
            if m not in final:
                continue
            dense = Schedule.from_dict(final[m].schedule).dense(1000)[name]
            ax.plot([i / 1000 for i in range(1000)], dense.numpy(), drawstyle="steps-post", label=m)
        ax.set_title(name)
        ax.set_xlabel("fraction of training")
    if names:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"learned schedules (seed {seed}, budget {budget} inner steps)")
    fig.tight_layout()
    return fig


def accuracy_figure(rows: list[Row], methods: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """Test accuracy (mean ± sample std over seeds) against the budget in inner steps, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        rs = [r for r in rows if r.method == m]
        budgets = sorted({r.budget for r in rs})
        if m == "hand-picked":
            accs = [r.test_acc for r in rs if r.budget == budgets[-1]]
            ax.axhline(statistics.mean(accs), ls="--", color="gray", label=m)
            continue
        means = [statistics.mean(r.test_acc for r in rs if r.budget == b) for b in budgets]
        stds = [_std([r.test_acc for r in rs if r.budget == b]) for b in budgets]
        ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=m)
    ax.set_xlabel("search budget (inner training steps)")
    ax.set_ylabel("test accuracy after retraining")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_outputs(rows: list[Row], cfg: CompareConfig, logdir: Path, header: str) -> dict[str, Path]:
    """``results.md``, ``results.csv``, ``schedules.png``, ``accuracy_vs_budget.png`` and TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    table = summary_table(rows, cfg.methods, cfg.max_budget)
    paths = {
        "md": logdir / "results.md",
        "csv": logdir / "results.csv",
        "schedules": logdir / "schedules.png",
        "accuracy": logdir / "accuracy_vs_budget.png",
    }
    paths["md"].write_text(f"{header}\n\n{table}")
    write_csv(rows, paths["csv"])
    figs = {
        "schedules": schedules_figure(rows, cfg.methods, cfg.max_budget, cfg.seeds[0]),
        "accuracy": accuracy_figure(rows, cfg.methods),
    }
    writer = SummaryWriter(str(logdir))
    for key, fig in figs.items():
        fig.savefig(paths[key], dpi=120)
        writer.add_figure(f"compare/{key}", fig)
    for m in cfg.methods:
        for b in sorted({r.budget for r in rows if r.method == m}):
            accs = [r.test_acc for r in rows if r.method == m and r.budget == b]
            writer.add_scalar(f"compare/test_acc/{m}", statistics.mean(accs), b)
    writer.add_text("compare/table", f"{header}\n\n{table}")
    writer.close()
    return paths
