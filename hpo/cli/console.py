"""Console output of an FDS run: a progress bar per outer step and a summary line after it."""

from __future__ import annotations

import sys
from typing import TextIO, final

import click
from torch import Tensor
from tqdm import tqdm

from hpo.callbacks import Callbacks, OuterRecord
from hpo.report import divergence_text, format_values


@final
class ConsoleReporter(Callbacks):
    """tqdm bars on stderr while training; one block per outer step on stdout."""

    def __init__(self, show_progress: bool = True, out: TextIO | None = None, outer_steps: int = 0) -> None:
        self.outer_steps = outer_steps
        self.show_progress = show_progress
        self.out = out
        self.bar: tqdm | None = None

    def on_run_start(self, outer_steps: int) -> None:
        """Remember how many outer steps the run has."""
        self.outer_steps = outer_steps

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
        """Close the bar and print validation metrics, hypergradients and the new schedule."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        click.echo(f"outer {r.k + 1}/{self.outer_steps}  T={r.horizon}  val_loss={r.val_loss:.4f}  "
                   f"val_acc={r.val_acc:.4f}  ({r.seconds:.1f}s)", file=self.out)
        if r.diverged:
            click.echo(f"  {divergence_text(r)}", file=self.out)
        click.echo(f"  hypergrad  {format_values(r.hypergrad, '{:+.3g}')}", file=self.out)
        click.echo(f"  schedule   {format_values(r.values)}", file=self.out)
        if r.converged:
            click.echo("  converged: every step/|value| is below the threshold", file=self.out)

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """A progress bar for each retrain."""
        if not self.show_progress:
            return
        if t == 0:
            self.bar = tqdm(total=steps, desc=f"retrain {name}", unit="step", leave=False, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        if self.bar is not None:
            self.bar.update(1)
            if t + 1 >= steps:
                self.bar.close()
                self.bar = None
