"""A picture of a schedule: each type's value over the fraction of training, with honest axes.

Segment ``j`` of ``n`` covers the fraction ``[j/n, (j+1)/n)`` of training, whatever the horizon,
so the x axis is that fraction.  A flat schedule keeps a y range around its value (matplotlib
would otherwise blow a constant up to fill the panel) and says its value in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.checkpoint import atomic_write
from hpo.schedule import Schedule


def schedule_figure(schedule: Schedule, title: str = "learned schedule") -> Any:
    """A matplotlib figure, one panel per hyperparameter type: value against the fraction of training.

    Built without pyplot, so the caller's matplotlib backend (e.g. in a notebook) is left alone.
    """
    from matplotlib.figure import Figure

    names = schedule.names
    fig = Figure(figsize=(4 * len(names), 3))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
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


def save_schedule_figure(schedule: Schedule, path: str | Path, title: str) -> None:
    """Write :func:`schedule_figure` to ``path`` (PNG), atomically."""
    import io

    buf = io.BytesIO()
    schedule_figure(schedule, title).savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
