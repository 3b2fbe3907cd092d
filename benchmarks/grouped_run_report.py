"""Summarise ``hpo run`` results of shared against per-group schedules: test accuracy table and heat maps.

Give one ``NAME=GLOB`` per configuration; each glob matches the log directories of its seeds
(each holding the ``schedule.json`` of a finished ``hpo run``).  Prints a Markdown table of the
learned schedule's retrain test accuracy (mean ± sample std over seeds, and every seed), the
hand-picked baseline's, and writes the learned ``lr`` of the first seed of every configuration
as a heat map (groups x segments; a shared type is one row, ``all``) to ``--out``::

    python benchmarks/grouped_run_report.py shared='runs/cnn-shared-*' per-layer='runs/cnn-layer-*' \\
        --out docs/results/per-group
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from glob import glob
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.schedule import Schedule
from hpo.schedule_plot import heatmap_figure


def mean_std(xs: list[float]) -> str:
    """``mean ± std`` in percent (sample std; 0 for one value)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="NAME=GLOB of the log directories of one configuration")
    ap.add_argument("--out", type=Path, default=None, help="Folder for the heat maps (<NAME>-lr.png).")
    ap.add_argument("--type", default="lr", help="Hyperparameter type to draw (default lr).")
    a = ap.parse_args()
    print("| configuration | seeds | learned: test acc (%) | per seed | hand-picked: test acc (%) | search (s) |")
    print("|---|---|---|---|---|---|")
    for spec in a.configs:
        name, _, pattern = spec.partition("=")
        runs = sorted(Path(p) for p in glob(pattern) if (Path(p) / "schedule.json").exists())
        if not runs:
            raise SystemExit(f"no finished run matches {pattern!r}")
        data = [json.loads((r / "schedule.json").read_text()) for r in runs]
        learned = [d["results"]["learned"]["test_acc"] for d in data]
        hand = [d["results"]["hand_picked"]["test_acc"] for d in data if "hand_picked" in d["results"]]
        seconds = statistics.mean(d["search_seconds"] for d in data)
        seeds = ", ".join(f"{100 * x:.1f}" for x in learned)
        print(f"| {name} | {len(runs)} | {mean_std(learned)} | {seeds} | {mean_std(hand) if hand else '-'} | "
              f"{seconds:.0f} |")
        if a.out is not None:
            a.out.mkdir(parents=True, exist_ok=True)
            d = data[0]
            sched = Schedule.from_dict(d["schedule"], d.get("groups"))
            values = sched.values[a.type]
            if values.dim() == 1:  # a shared type: one row
                sched = Schedule({a.type: values.unsqueeze(0)}, {a.type: ("all",)})
            fig = heatmap_figure(sched, a.type, f"{name}: learned {a.type} ({runs[0].name})")
            fig.savefig(a.out / f"{name}-{a.type}.png", dpi=100)


if __name__ == "__main__":
    main()
