"""One table and one set of pictures from several ``hpo compare`` log directories of the same task.

An equal-time comparison takes more than one ``hpo compare`` call: FDS's steps budget is its ten
outer steps, while the other methods get a steps budget that never binds, so that only the time
stops them.  Give one ``[LABEL=]DIR`` per call (a label renames the methods of that call, as in
``short5=runs/mlp3000-short5`` for its ``auto``), and this prints a Markdown table of each method's
final budget point (test accuracy mean ± sample std over seeds, search wall-clock seconds, inner
steps, seeds), and writes to ``--out`` the merged ``results.csv``, ``accuracy_vs_seconds.png``
(best-so-far test accuracy against search seconds, every budget point) and ``schedules.png``
(the final schedules of ``--seed``, of the ``--draw`` methods or all)::

    python benchmarks/compare_report.py runs/mlp3000-fds runs/mlp3000-base --out docs/results/T3000-mlp
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.app.compare_checkpoint import Row
from hpo.app.compare_outputs import save_figure, schedules_figure, seconds_figure, write_csv

FINAL = -1  # the budget every method's final point is relabelled with, for the schedules figure


def read_rows(spec: str) -> list[Row]:
    """The rows of ``DIR/results.csv``, methods renamed ``LABEL`` (one method) or ``LABEL:method`` when given."""
    label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    rows = []
    with open(Path(path) / "results.csv", newline="") as f:
        for d in csv.DictReader(f):
            rows.append(Row(method=d["method"], seed=int(d["seed"]), budget=int(d["budget"]), steps=int(d["steps"]),
                            search_seconds=float(d["search_seconds"]), cpu_seconds=float(d["cpu_seconds"]),
                            test_acc=float(d["test_acc"]), val_acc=float(d["val_acc"]) if d["val_acc"] else None,
                            retrain_steps=int(d["retrain_steps"]), diverged=d["diverged"] == "1",
                            schedule=json.loads(d["schedule"]),
                            search_val_acc=float(d["search_val_acc"]) if d["search_val_acc"] else None))
    methods = sorted({r.method for r in rows})
    if label:
        rows = [replace(r, method=label if len(methods) == 1 else f"{label}:{r.method}") for r in rows]
    return rows


def final_rows(rows: list[Row]) -> list[Row]:
    """Each (method, seed)'s row at its largest budget point (seeds may come from calls with
    different budget lists, e.g. the hand-picked setting next to FDS in one and a baseline in another)."""
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        last[r.method, r.seed] = max(last.get((r.method, r.seed), r.budget), r.budget)
    return [r for r in rows if r.budget == last[r.method, r.seed]]


def mean_std(xs: list[float]) -> str:
    """``mean ± sample std`` to four places (the value alone for one seed)."""
    return f"{xs[0]:.4f}" if len(xs) == 1 else f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def table(rows: list[Row]) -> str:
    """Markdown: each method's final point, best mean test accuracy first."""
    fin = final_rows(rows)
    methods = sorted({r.method for r in fin}, key=lambda m: -statistics.mean(r.test_acc for r in fin if r.method == m))
    lines = ["| method | test acc (mean ± std) | search wall (s) | inner steps | seeds |", "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in fin if r.method == m]
        lines.append(f"| {m} | {mean_std([r.test_acc for r in rs])} | "
                     f"{statistics.mean(r.search_seconds for r in rs):.1f} | "
                     f"{statistics.mean(r.steps for r in rs):.0f} | {len(rs)} |")
    return "\n".join(lines)


def main() -> None:
    """Read every directory, print the table, write the merged CSV and the two pictures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="[LABEL=]DIR of an hpo compare run (its results.csv)")
    p.add_argument("--out", type=Path, required=True, help="directory for results.csv and the pictures")
    p.add_argument("--seed", type=int, default=0, help="seed whose final schedules are drawn")
    p.add_argument("--draw", default=None, help="comma-separated methods to draw in schedules.png (default: all)")
    args = p.parse_args()
    rows = [r for spec in args.dirs for r in read_rows(spec)]
    keys = [(r.method, r.seed, r.budget) for r in rows]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        p.error(f"method {twice[0][0]!r} (seed {twice[0][1]}) is in more than one directory; label one with LABEL=DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "results.csv")
    methods = tuple(dict.fromkeys(r.method for r in rows))
    save_figure(seconds_figure(rows, methods), args.out / "accuracy_vs_seconds.png")
    relabelled = [replace(r, budget=FINAL) for r in final_rows(rows)]
    drawn = tuple(args.draw.split(",")) if args.draw else methods
    fig = schedules_figure(relabelled, drawn, FINAL, args.seed)
    fig.suptitle(f"final schedules (seed {args.seed})")
    save_figure(fig, args.out / "schedules.png")
    print(table(rows))


if __name__ == "__main__":
    main()
