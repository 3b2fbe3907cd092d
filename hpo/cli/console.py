"""Console output of an FDS run: a progress bar per outer step and a summary line after it."""

from __future__ import annotations

import sys
import time
from typing import TextIO, final

import click
from torch import Tensor
from tqdm import tqdm

from hpo.core.callbacks import Callbacks, OuterRecord
from hpo.reporting.report import divergence_text, format_values


@final
class ConsoleReporter(Callbacks):
    """Progress bars on a terminal; one block per outer step on stdout, with elapsed time and ETA.

    Bars are drawn only when stderr is a terminal: piped into a log, the output is plain lines
    (no carriage-return updates).  The ETA is the remaining outer steps' inner steps at the speed
    (seconds per inner step) measured so far.
    """

    def __init__(self, show_progress: bool = True, out: TextIO | None = None, outer_steps: int = 0) -> None:
        self.outer_steps = outer_steps
        self.show_progress = show_progress and sys.stderr.isatty()
        self.out = out
        self.bar: tqdm | None = None
        self.start = time.perf_counter()
        self.horizons: tuple[int, ...] = ()
        self.steps_done = 0

    def on_run_start(self, horizons: tuple[int, ...]) -> None:
        """Remember the horizon of every outer step; start the clock."""
        self.horizons = horizons
        self.outer_steps = len(horizons)
        self.start = time.perf_counter()

    def eta_text(self, k: int) -> str:
        """``elapsed 12s, ETA 40s`` after outer step ``k`` (0-based)."""
        elapsed = time.perf_counter() - self.start
        left = sum(self.horizons[k + 1:])
        eta = elapsed / self.steps_done * left if self.steps_done else 0.0
        return f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s"

    def on_message(self, text: str) -> None:
        """Print a report line."""
        click.echo(text, file=self.out)

    def on_outer_start(self, k: int, horizon: int) -> None:
        """Open a progress bar for the inner run."""
        if self.show_progress:
            self.bar = tqdm(total=horizon, desc=f"outer {k + 1}/{self.outer_steps}", unit="step",
                            leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Advance the bar; show the loss every 25 steps (one host sync)."""
        if self.bar is not None:
            self.bar.update(1)
            if t % 25 == 0:
                self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

    def on_outer_step(self, r: OuterRecord) -> None:
        """Close the bar and print the validation loss and ranking metric (in its own units, e.g.
        ``val_acc=0.8125`` or ``val_rmse=56.7669``), hypergradients and the new schedule."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.steps_done += r.steps_run
        metric = "" if r.label.is_loss else f"val_{r.metric}={r.val_metric:.4f}  "
        click.echo(f"outer {r.k + 1}/{self.outer_steps}  T={r.horizon}  val_loss={r.val_loss:.4f}  "
                   f"{metric}({r.seconds:.1f}s; {self.eta_text(r.k)})", file=self.out)
        if r.diverged:
            click.echo(f"  {divergence_text(r)}", file=self.out)
        click.echo(f"  hypergrad  {format_values(r.hypergrad, '{:+.3g}', r.groups)}", file=self.out)
        click.echo(f"  schedule   {format_values(r.values, groups=r.groups)}", file=self.out)
        if r.converged:
            click.echo("  converged: every step/|value| is below the threshold", file=self.out)

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """A progress bar for each retrain."""
        if not self.show_progress:
            return
        if t == 0:
            if self.bar is not None:  # the previous retrain stopped early (diverged)
                self.bar.close()
            self.bar = tqdm(total=steps, desc=f"retrain {name}", unit="step", leave=False, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        if self.bar is not None:
            self.bar.update(1)
            if t + 1 >= steps:
                self.bar.close()
                self.bar = None
