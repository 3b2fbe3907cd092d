"""A picture of a schedule: each type's value over the fraction of training, with honest axes.

Segment ``j`` of ``n`` covers the fraction ``[j/n, (j+1)/n)`` of training, whatever the horizon,
so the x axis is that fraction.  A flat schedule keeps a y range around its value (matplotlib
would otherwise blow a constant up to fill the panel) and says its value in the title.  A grouped
type (a ``(groups, segments)`` table) is drawn as a heat map: one row per group, one column per
segment, the value as colour (:func:`draw_heatmap`); one with more than
:data:`~hpo.reporting.report.MANY_GROUPS` groups (a weight per training example) as the histogram
of its values (:func:`draw_histogram`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.core.schedule import Schedule
from hpo.reporting.report import MANY_GROUPS
from hpo.runtime.files import atomic_write


def schedule_figure(schedule: Schedule, title: str = "learned schedule") -> Any:
    """A matplotlib figure, one panel per hyperparameter type: value against the fraction of training.

    Built without pyplot, so the caller's matplotlib backend (e.g. in a notebook) is left alone.
    """
    from matplotlib.figure import Figure

    names = schedule.names
    fig = Figure(figsize=(4 * len(names), 3))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        if schedule.values[name].dim() == 2 and schedule.values[name].shape[0] > MANY_GROUPS:
            draw_histogram(ax, schedule, name)
            continue
        if schedule.values[name].dim() == 2:
            draw_heatmap(fig, ax, schedule, name)
            continue
        values = [float(v) for v in schedule.values[name]]
        n = len(values)
        xs = [j / n for j in range(n)] + [1.0]
        ax.step(xs, values + values[-1:], where="post")
        lo, hi = min(values), max(values)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            pad = abs(hi) * 0.5 if hi != 0 else 1.0
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"{name} = {hi:.4g} (constant)")
        else:
            ax.set_title(name)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("fraction of training")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_histogram(ax: Any, schedule: Schedule, name: str) -> None:
    """A type with many groups (one weight per training example) on ``ax``: the histogram of its values."""
    table = schedule.values[name].detach().cpu().double().flatten().numpy()
    ax.hist(table, bins=40)
    ax.set_xlabel(name)
    ax.set_ylabel("count")
    ax.set_title(f"{name}: {table.size} values")


def draw_heatmap(fig: Any, ax: Any, schedule: Schedule, name: str, vmin: float | None = None,
                 vmax: float | None = None) -> None:
    """Grouped type ``name`` on ``ax``: groups (rows, named) x segments (fraction of training), value as colour.

    ``vmin``/``vmax`` fix the colour scale (e.g. to compare two schedules); by default the table's range.
    """
    table = schedule.values[name].detach().cpu().double().numpy()
    groups = schedule.group_names(name)
    n = table.shape[1]
    lo = float(table.min()) if vmin is None else vmin
    hi = float(table.max()) if vmax is None else vmax
    image = ax.imshow(table, aspect="auto", interpolation="nearest", cmap="viridis", extent=(0.0, 1.0, len(groups), 0),
                      vmin=lo, vmax=hi)
    ax.set_yticks([g + 0.5 for g in range(len(groups))])
    ax.set_yticklabels(groups)
    ax.set_xlabel("fraction of training")
    ax.set_title(f"{name} per group ({len(groups)} x {n})")
    if table.size <= 64:  # small tables also show their numbers
        for g in range(table.shape[0]):
            for j in range(n):
                bright = hi > lo and (table[g, j] - lo) / (hi - lo) > 0.6  # viridis is light at the top
                ax.text((j + 0.5) / n, g + 0.5, f"{table[g, j]:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if bright else "white")
    fig.colorbar(image, ax=ax)


def heatmap_figure(schedule: Schedule, name: str, title: str = "", vmin: float | None = None,
                   vmax: float | None = None) -> Any:
    """A figure of grouped type ``name`` alone as a heat map of groups x segments (for TensorBoard and the docs)."""
    from matplotlib.figure import Figure

    groups = int(schedule.values[name].shape[0])
    fig = Figure(figsize=(6.5, 1.9 + 0.4 * groups))
    ax = fig.subplots()
    draw_heatmap(fig, ax, schedule, name, vmin, vmax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_schedule_figure(schedule: Schedule, path: str | Path, title: str) -> None:
    """Write :func:`schedule_figure` to ``path`` (PNG), atomically."""
    import io

    buf = io.BytesIO()
    schedule_figure(schedule, title).savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
