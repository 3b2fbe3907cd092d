"""Text of an FDS run's records, shared by the console, TensorBoard and the summary files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpo.core.callbacks import OuterRecord

#: A grouped type with more groups than this (per-example or per-class weights) is shown as a summary.
MANY_GROUPS = 12


def summary_text(name: str, xs: Sequence[float], fmt: str = "{:.4g}") -> str:
    """``example_weight[3600 values]: min 0 mean 0.61 max 1, 38% < 0.5``: a large table in one phrase."""
    n = len(xs)
    low = sum(1 for x in xs if x < 0.5)
    return (f"{name}[{n} values]: min {fmt.format(min(xs))} mean {fmt.format(sum(xs) / n)} "
            f"max {fmt.format(max(xs))}, {100 * low / n:.0f}% < 0.5")


def format_values(values: Mapping[str, Sequence[Any]], fmt: str = "{:.4g}",
                  groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """``lr=[0.1 0.2] momentum=[0.5]`` on one line; a grouped type as ``lr[conv1]=[...] lr[fc]=[...]``.

    ``groups[name]`` names the groups of a grouped type (a list of lists); ``0, 1, ...`` without it.
    A type with more than :data:`MANY_GROUPS` groups is summarised (:func:`summary_text`).
    """
    pieces = []
    for k, v in values.items():
        if v and isinstance(v[0], (list, tuple)) and len(v) > MANY_GROUPS:
            pieces.append(summary_text(k, [x for row in v for x in row], fmt))
        elif v and isinstance(v[0], (list, tuple)):
            names = list((groups or {}).get(k) or [])
            names = names if len(names) == len(v) else [str(g) for g in range(len(v))]
            pieces += [f"{k}[{g}]=[{' '.join(fmt.format(x) for x in row)}]" for g, row in zip(names, v)]
        else:
            pieces.append(f"{k}=[{' '.join(fmt.format(x) for x in v)}]")
    return " ".join(pieces)


def divergence_text(r: OuterRecord) -> str:
    """One line saying where an inner run diverged and which values the outer step moved."""
    e = r.extra or {}

    def which(d: dict[str, list[int]]) -> str:
        return ", ".join(f"{n}[{','.join(str(j) for j in js)}]" for n, js in d.items()) or "nothing"

    where = (f"DIVERGED: non-finite {e.get('divergence', 'values')} at inner step "
             f"{e.get('diverged_at', r.steps_run)}/{r.horizon}; stopped early")
    if "backtracked" in e:
        return f"{where}, moved {which(e['backtracked'])} halfway back to the last values that trained; other values held"
    moved = f"lowered {which(e.get('lowered', {}))}"
    if e.get("raised"):
        moved += f", raised {which(e['raised'])}"
    return f"{where}, {moved} (safe direction); other values held"
