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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from hpo.baselines import SearchSpace, Trial, best_so_far, random_search, tpe_search
from hpo.callbacks import Callbacks, OuterRecord
from hpo.fds import FDSConfig, initial_state, make_problem, run_fds
from hpo.online_greedy import online_greedy
from hpo.optimizers.base import UpdateRule
from hpo.retrain import retrain
from hpo.schedule import Schedule
from hpo.tasks.base import Task

SEARCH_METHODS = ("random-constant", "random-schedule", "tpe", "tpe-schedule")
OTHER_METHODS = ("online-greedy", "hand-picked")

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    """Settings shared by every method of one comparison."""

    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    horizon: int
    seeds: tuple[int, ...]
    retrain_steps: int
    space: SearchSpace
    counts: Mapping[str, int] = field(default_factory=dict)
    hyper_lr: Mapping[str, float] = field(default_factory=dict)
    holdout_frac: float = 0.1
    val_frac: float = 0.05
    batch_size: int | None = None
    grad_clip: float | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @property
    def budget(self) -> int:
        """Total budget in inner steps (the largest budget point)."""
        return max(self.budgets)

    def validate(self) -> None:
        """Raise ``ValueError`` (one line) on an inconsistent setting."""
        if self.horizon < 1:
            raise ValueError(f"--inner-steps must be at least 1, got {self.horizon}")
        if min(self.budgets) < self.horizon:
            raise ValueError(f"--budget {min(self.budgets)} is below one inner run ({self.horizon} steps)")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not 0 < self.holdout_frac < 1:
            raise ValueError(f"--holdout-frac must be in (0, 1), got {self.holdout_frac}")


@dataclass(frozen=True)
class Checkpoint:
    """The incumbent after some search work: its schedule, steps and seconds spent so far."""

    steps: int
    seconds: float
    schedule: Schedule
    search_val_acc: float
    cpu_seconds: float = 0.0


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


def fds_config(cfg: CompareConfig, rule: UpdateRule, seed: int, outer_steps: int) -> FDSConfig:
    """The FDS settings a method uses for ``seed``."""
    return FDSConfig(
        outer_steps=max(1, outer_steps),
        inner_steps=(cfg.horizon,),
        counts=dict(cfg.counts),
        val_frac=cfg.val_frac,
        batch_size=cfg.batch_size,
        seed=seed,
        grad_clip=cfg.grad_clip,
        dtype=cfg.dtype,
        device=cfg.device,
    )


class _Recorder(Callbacks):
    def __init__(self, start: float, cpu0: float) -> None:
        self.start = start
        self.cpu0 = cpu0
        self.steps = 0
        self.points: list[Checkpoint] = []

    def on_outer_step(self, record: OuterRecord) -> None:
        self.steps += record.steps_run
        self.points.append(
            Checkpoint(
                self.steps,
                time.perf_counter() - self.start,
                Schedule.from_dict(record.values),
                record.val_acc,
                time.process_time() - self.cpu0,
            )
        )


def search(
    method: str, task: Task, rule: UpdateRule, cfg: CompareConfig, seed: int, backends: Mapping[str, object]
) -> list[Checkpoint]:
    """Run ``method`` with the whole budget; the incumbent after each unit of work."""
    units = cfg.budget // cfg.horizon
    config = fds_config(cfg, rule, seed, units)
    start, cpu0 = time.perf_counter(), time.process_time()
    if method == "hand-picked":
        if rule.hand_picked is None:
            raise ValueError(f"optimizer {rule.name!r} has no hand-picked setting")
        return [Checkpoint(0, 0.0, Schedule.constant(rule.hand_picked), math.nan)]
    if method in backends:
        rec = _Recorder(start, cpu0)
        run_fds(task, rule, backends[method], config, rec)  # type: ignore[arg-type]
        return rec.points
    if method == "online-greedy":
        counts = config.resolved_counts(rule)
        sched = Schedule(dict(initial_state(rule, config).values))
        points, steps = [], 0
        for k in range(units):  # each run continues from the values the previous run ended with
            out = online_greedy(make_problem(task, rule, config, k), sched, cfg.hyper_lr, counts)
            steps += out.steps
            if not out.diverged:
                sched = Schedule.constant({n: float(v[-1]) for n, v in out.trajectory.items()})
            best = points[-1].schedule if out.diverged and points else out.schedule
            points.append(Checkpoint(steps, time.perf_counter() - start, best, out.val_acc, time.process_time() - cpu0))
        return points
    if method in SEARCH_METHODS:
        counts = config.resolved_counts(rule) if method.endswith("schedule") else None
        fn = random_search if method.startswith("random") else tpe_search
        trials: list[Trial] = fn(task, rule, config, cfg.space, units, counts)
        points, steps = [], 0
        for trial, best in zip(trials, best_so_far(trials)):
            steps += trial.steps
            points.append(Checkpoint(steps, time.perf_counter() - start, best.schedule, best.val_acc))  # times below
        # seconds were not taken per trial; spread the totals evenly over the trials
        total, cpu = time.perf_counter() - start, time.process_time() - cpu0
        return [
            replace(p, seconds=total * (i + 1) / len(points), cpu_seconds=cpu * (i + 1) / len(points))
            for i, p in enumerate(points)
        ]
    raise ValueError(f"unknown method {method!r}")


def incumbent(points: list[Checkpoint], budget: int) -> Checkpoint | None:
    """The last checkpoint within ``budget`` steps (None if none fits)."""
    fit = [p for p in points if p.steps <= budget]
    return fit[-1] if fit else None


def run_compare(
    task: Task, rule: UpdateRule, cfg: CompareConfig, backends: Mapping[str, object], log: Log = print
) -> list[Row]:
    """Search with every method and seed, retrain every incumbent; one :class:`Row` each."""
    cfg.validate()
    search_task, holdout_task = split_holdout(task, cfg.holdout_frac)
    rows: list[Row] = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            points = search(method, search_task, rule, cfg, seed, backends)
            spent = points[-1].steps if points else 0
            secs = points[-1].seconds if points else 0.0
            cpu = points[-1].cpu_seconds if points else 0.0
            log(f"seed {seed}  {method:<18} search: {spent} inner steps, {secs:.1f}s wall, {cpu:.1f}s CPU")
            for budget in sorted(cfg.budgets):
                point = incumbent(points, budget)
                if point is None:
                    continue
                r = retrain(task, rule, point.schedule, cfg.retrain_steps, seed + 7919, cfg.dtype, cfg.device)
                val = None
                if budget == cfg.budget:
                    val = retrain(
                        holdout_task, rule, point.schedule, cfg.retrain_steps, seed + 7919, cfg.dtype, cfg.device
                    ).test_acc
                rows.append(
                    Row(
                        method,
                        seed,
                        budget,
                        point.steps,
                        point.seconds,
                        point.cpu_seconds,
                        r.test_acc,
                        val,
                        cfg.retrain_steps,
                        r.diverged,
                        point.schedule.to_dict(),
                    )
                )
            final = rows[-1]
            log(f"seed {seed}  {method:<18} test_acc={final.test_acc:.4f}  val_acc={final.val_acc:.4f}")
    return rows


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

    table = summary_table(rows, cfg.methods, cfg.budget)
    paths = {
        "md": logdir / "results.md",
        "csv": logdir / "results.csv",
        "schedules": logdir / "schedules.png",
        "accuracy": logdir / "accuracy_vs_budget.png",
    }
    paths["md"].write_text(f"{header}\n\n{table}")
    write_csv(rows, paths["csv"])
    figs = {
        "schedules": schedules_figure(rows, cfg.methods, cfg.budget, cfg.seeds[0]),
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
