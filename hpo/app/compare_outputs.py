"""The outputs of ``hpo compare``: table, CSV, three figures and TensorBoard events, each written atomically.

Every file is rendered to bytes (or into a temporary file in the same directory) and renamed over
its name with :func:`hpo.runtime.files.atomic_write`, so a full disk or a kill never leaves a torn
``results.csv`` or a 0-byte PNG.  The table and the CSV are the results: failing to write them is a
:class:`~hpo.errors.WriteError` (the rows stay in the compare checkpoint).  A picture or the
TensorBoard events are not worth a result: a failure there is one warning line.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.app.compare_checkpoint import Row
from hpo.app.compare_config import CompareConfig
from hpo.core.problem import ACCURACY, MetricLabel
from hpo.core.schedule import Schedule
from hpo.errors import WriteError
from hpo.runtime.files import atomic_write

Log = Callable[[str], None]


PICTURES = {"schedules": "schedules.png", "accuracy": "accuracy_vs_budget.png", "seconds": "accuracy_vs_seconds.png"}


CSV_COLUMNS = ("method", "seed", "budget", "steps", "search_seconds", "cpu_seconds", "search_val_acc", "val_acc",
               "test_acc", "retrain_steps", "diverged", "schedule")


def csv_columns(label: MetricLabel = ACCURACY) -> tuple[str, ...]:
    """:data:`CSV_COLUMNS` with ``acc`` replaced by the ranking metric's name (``test_rmse``, ...)."""
    return tuple(c.replace("_acc", f"_{label.name}") for c in CSV_COLUMNS)


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def summary_table(rows: list[Row], methods: tuple[str, ...], budget: int, label: MetricLabel = ACCURACY) -> str:
    """Markdown table at the final budget: mean ± standard deviation over seeds of the ranking metric
    in its own units (``label``: accuracy by default; an RMSE shown as ``test rmse``, lower is better)."""
    lines = [
        (f"| method | val {label.name} | test {label.name} | search wall (s) | search CPU (s) | inner steps | "
         f"retrain steps | seeds |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        rs = [r for r in rows if r.method == m and r.budget == budget]
        if not rs:
            continue
        vals = [label.value(r.val_acc) for r in rs if r.val_acc is not None]
        secs = statistics.mean(r.search_seconds for r in rs)
        cpu = statistics.mean(r.cpu_seconds for r in rs)
        steps = statistics.mean(r.steps for r in rs)
        div = sum(r.diverged for r in rs)
        flag = f" ({div} diverged)" if div else ""
        lines.append(
            f"| {m} | {_mean_std(vals)} | {_mean_std([label.value(r.test_acc) for r in rs])}{flag} | {secs:.1f} | {cpu:.1f} | "
            f"{steps:.0f} | {rs[0].retrain_steps} | {len(rs)} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(rows: list[Row], label: MetricLabel = ACCURACY) -> str:
    """Every row (method, seed, budget point) as CSV; the schedule as JSON text.

    Against ``search_seconds`` each row gives the incumbent's validation accuracy as the search
    measured it (``search_val_acc``) and its test accuracy after retraining (``test_acc``); for
    another ranking metric (``label``) the columns are named after it and hold it in its own units
    (``search_val_rmse``, ``val_rmse``, ``test_rmse``).
    """
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(csv_columns(label))

    def text(score: float | None) -> str:
        return "" if score is None else f"{label.value(score):.4f}"

    for r in rows:
        w.writerow([r.method, r.seed, r.budget, r.steps, f"{r.search_seconds:.3f}", f"{r.cpu_seconds:.3f}",
                    text(r.search_val_acc), text(r.val_acc), text(r.test_acc), r.retrain_steps,
                    int(r.diverged), json.dumps(r.schedule)])
    return out.getvalue()


def write_csv(rows: list[Row], path: Path, label: MetricLabel = ACCURACY) -> None:
    """Atomically write :func:`csv_text` of ``rows`` to ``path``."""
    data = csv_text(rows, label).encode()
    atomic_write(path, lambda f: f.write(data))


def schedules_figure(rows: list[Row], methods: tuple[str, ...], budget: int, seed: int) -> Any:
    """One panel per hyperparameter type: each method's final schedule (one seed) over the horizon.

    The panels are every type any method has (schedule-free adds ``warmup``); a method is drawn in
    the panels of its own types, a grouped type as the mean over its groups.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = {r.method: r for r in rows if r.budget == budget and r.seed == seed}
    names = list(dict.fromkeys(name for m in methods if m in final for name in final[m].schedule))
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for m in methods:
            if m not in final or name not in final[m].schedule:
                continue
            dense = Schedule.from_dict(final[m].schedule).dense(1000)[name]
            if dense.dim() == 2:  # grouped (per layer, class or example): the mean over its groups
                dense = dense.mean(0)
                ax.set_title(f"{name} (mean over groups)")
            ax.plot([i / 1000 for i in range(1000)], dense.numpy(), drawstyle="steps-post", label=m)
        if not ax.get_title():
            ax.set_title(name)
        ax.set_xlabel("fraction of training")
    if names:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"learned schedules (seed {seed}, budget {budget} inner steps)")
    fig.tight_layout()
    return fig


def accuracy_figure(rows: list[Row], methods: tuple[str, ...], label: MetricLabel = ACCURACY) -> Any:
    """Test accuracy (mean ± sample std over seeds) against the budget in inner steps, one line per method
    (another ranking metric, ``label``, in its own units)."""
    return accuracy_plot(rows, methods, lambda rs: float(rs[0].budget), "search budget (inner training steps)",
                         f"test {label.describe()} after retraining", label)


def seconds_figure(rows: list[Row], methods: tuple[str, ...], label: MetricLabel = ACCURACY) -> Any:
    """Best-so-far test accuracy against search seconds: one line per method through its budget points.

    At each budget point, x is the mean search wall-clock time at which the incumbent was found
    and y the mean ± sample std of its test accuracy after retraining, over seeds.
    """
    return accuracy_plot(rows, methods, lambda rs: statistics.mean(r.search_seconds for r in rs),
                         "search wall-clock time (s)", f"best-so-far test {label.describe()} after retraining", label)


def accuracy_plot(rows: list[Row], methods: tuple[str, ...], x_of: Callable[[list[Row]], float], xlabel: str,
                  ylabel: str, label: MetricLabel = ACCURACY) -> Any:
    """Mean ± sample std of test accuracy at each budget point of each method, at ``x_of(rows of the point)``.

    The hand-picked setting (no search; ``LABEL:hand-picked`` in a merged report) is a dashed
    horizontal line at its mean.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        rs = [r for r in rows if r.method == m]
        budgets = sorted({r.budget for r in rs})
        if not budgets:
            continue
        if m == "hand-picked" or m.endswith(":hand-picked"):  # a merged report labels it LABEL:hand-picked
            ax.axhline(statistics.mean(label.value(r.test_acc) for r in rs if r.budget == budgets[-1]), ls="--",
                       color="gray",
                       label=m)
            continue
        points = [[r for r in rs if r.budget == b] for b in budgets]
        ax.errorbar([x_of(p) for p in points], [statistics.mean(label.value(r.test_acc) for r in p) for p in points],
                    yerr=[_std([r.test_acc for r in p]) for p in points], marker="o", capsize=3, label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Render ``fig`` as PNG into a temporary file next to ``path``, then rename it over ``path``."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def write_outputs(rows: list[Row], cfg: CompareConfig, logdir: Path, header: str,
                  log: Log = print, label: MetricLabel = ACCURACY) -> dict[str, Path]:
    """``results.md``, ``results.csv``, the three pictures of :data:`PICTURES` and TensorBoard events.

    Every figure and column shows the task's ranking metric (``label``) in its own units.  Returns
    the paths written; a picture that could not be written is left out (and logged).
    """
    table = summary_table(rows, cfg.methods, cfg.max_budget, label)
    paths = {"md": logdir / "results.md", "csv": logdir / "results.csv"}
    text = f"{header}\n\n{table}".encode()
    try:
        atomic_write(paths["md"], lambda f: f.write(text))
        write_csv(rows, paths["csv"], label)
    except OSError as e:
        raise WriteError(f"cannot write the results in {logdir}: {e.strerror or e} (the rows are kept in the "
                         f"compare checkpoint; resuming writes them again)") from None
    makers = {
        "schedules": lambda: schedules_figure(rows, cfg.methods, cfg.max_budget, cfg.seeds[0]),
        "accuracy": lambda: accuracy_figure(rows, cfg.methods, label),
        "seconds": lambda: seconds_figure(rows, cfg.methods, label),
    }
    figs = {}
    for key, make in makers.items():
        path = logdir / PICTURES[key]
        try:
            figs[key] = make()
            save_figure(figs[key], path)
            paths[key] = path
        except (OSError, ValueError, RuntimeError) as e:  # a picture is not worth losing the results over
            log(f"warning: could not write {path}: {getattr(e, 'strerror', None) or e}")
    try:
        write_events(rows, cfg, logdir, f"{header}\n\n{table}", figs, label)
    except OSError as e:
        log(f"warning: could not write TensorBoard events in {logdir}: {e.strerror or e}")
    finally:
        close_figures(figs.values())
    return paths


def write_events(rows: list[Row], cfg: CompareConfig, logdir: Path, text: str, figs: dict[str, Any],
                 label: MetricLabel = ACCURACY) -> None:
    """The figures, ``compare/test_<metric>/<method>`` against the budget and the table, as TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    try:
        for key, fig in figs.items():
            writer.add_figure(f"compare/{key}", fig, close=False)
        for m in cfg.methods:
            for b in sorted({r.budget for r in rows if r.method == m}):
                accs = [label.value(r.test_acc) for r in rows if r.method == m and r.budget == b]
                writer.add_scalar(f"compare/test_{label.name}/{m}", statistics.mean(accs), b)
        writer.add_text("compare/table", text)
    finally:
        writer.close()


def close_figures(figs: Any) -> None:
    """Free matplotlib's memory of ``figs``."""
    figs = list(figs)
    if not figs:
        return
    import matplotlib.pyplot as plt

    for fig in figs:
        plt.close(fig)
