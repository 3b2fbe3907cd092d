"""Summarise ``hpo run`` results of shared against per-group schedules: test accuracy table and heat maps.

Give one ``NAME=GLOB`` per configuration; each glob matches the log directories of its seeds
(each holding the ``schedule.json`` of a finished ``hpo run``).  Prints a Markdown table of the
learned schedule's retrain test accuracy (mean ± sample std over seeds, and every seed), the
hand-picked baseline's, and writes the learned ``lr`` of the first seed of every configuration
as a heat map (groups x segments; a shared type is one row, ``all``) to ``--out``.  With
``--retrain-seeds``, every learned schedule is also retrained from scratch with each of those
seeds (``hpo retrain --seed``), which separates the spread of the search from that of one
retrain::

    python benchmarks/grouped_run_report.py shared='runs/cnn-shared-*' per-layer='runs/cnn-layer-*' \\
        --out docs/results/per-group --retrain-seeds 10,11,12,13,14
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from glob import glob
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.app.retrain import RetrainConfig, retrain_schedule
from hpo.core.schedule import Schedule
from hpo.reporting.schedule_plot import heatmap_figure


def mean_std(xs: list[float]) -> str:
    """``mean ± std`` in percent (sample std; 0 for one value)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="NAME=GLOB of the log directories of one configuration")
    ap.add_argument("--out", type=Path, default=None, help="Folder for the heat maps (<NAME>-lr.png).")
    ap.add_argument("--type", default="lr", help="Hyperparameter type to draw (default lr).")
    ap.add_argument("--retrain-seeds", default="", help="Also retrain every learned schedule with these seeds.")
    a = ap.parse_args()
    retrain_seeds = [int(x) for x in a.retrain_seeds.split(",") if x.strip()]
    pictures = []
    extra = f" learned, {len(retrain_seeds)} retrain seeds each: test acc (%) |" if retrain_seeds else ""
    print(f"| configuration | seeds | learned: test acc (%) | per seed | hand-picked: test acc (%) | search (s) |{extra}")
    print("|---|---|---|---|---|---|" + ("---|" if retrain_seeds else ""))
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
        more = ""
        if retrain_seeds:
            accs = [retrain_schedule(RetrainConfig(schedule=str(r / "schedule.json"), seed=s, device="cpu")).test_acc
                    for r in runs for s in retrain_seeds]
            more = f" {mean_std(accs)} |"
        print(f"| {name} | {len(runs)} | {mean_std(learned)} | {seeds} | {mean_std(hand) if hand else '-'} | "
              f"{seconds:.0f} |{more}", flush=True)
        if a.out is not None:
            a.out.mkdir(parents=True, exist_ok=True)
            d = data[0]
            sched = Schedule.from_dict(d["schedule"], d.get("groups"))
            values = sched.values[a.type]
            if values.dim() == 1:  # a shared type: one row
                sched = Schedule({a.type: values.unsqueeze(0)}, {a.type: ("all",)})
            pictures.append((name, runs[0].name, sched))
    if pictures and a.out is not None:  # one colour scale for every picture, so they compare
        lo = min(float(s.values[a.type].min()) for _, _, s in pictures)
        hi = max(float(s.values[a.type].max()) for _, _, s in pictures)
        for name, run, sched in pictures:
            fig = heatmap_figure(sched, a.type, f"{name}: learned {a.type} ({run})", lo, hi)
            fig.savefig(a.out / f"{name}-{a.type}.png", dpi=100)


if __name__ == "__main__":
    main()
