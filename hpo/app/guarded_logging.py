"""Logging that cannot cost a run: a failed write turns the logger off with one warning line.

The checkpoint is written before any logger sees an outer step, so when TensorBoard's disk fills
up the finished step is already safe; the run reports the failure once and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

from torch import Tensor

from hpo.core.callbacks import Callbacks, OuterRecord


@final
class GuardedLogger(Callbacks):
    """Forwards every event to ``inner`` until it raises ``OSError``; then ``report`` one line and stop."""

    def __init__(self, inner: Any, report: Callable[[str], None], name: str = "TensorBoard logging") -> None:
        self.inner = inner
        self.report = report
        self.name = name

    def call(self, method: str, *args: Any) -> None:
        """``inner.method(*args)``, unless a previous call failed."""
        if self.inner is None:
            return
        try:
            getattr(self.inner, method)(*args)
        except OSError as e:
            self.inner = None
            self.report(f"warning: {self.name} failed ({e.strerror or e}); it stops here, the run goes on "
                        f"(checkpoints are unaffected)")

    def on_run_start(self, horizons: tuple[int, ...]) -> None:
        """Forward."""
        self.call("on_run_start", horizons)

    def on_outer_start(self, k: int, horizon: int) -> None:
        """Forward."""
        self.call("on_outer_start", k, horizon)

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Forward."""
        self.call("on_inner_step", k, t, loss)

    def on_outer_step(self, record: OuterRecord) -> None:
        """Forward."""
        self.call("on_outer_step", record)

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """Forward."""
        self.call("on_retrain_step", name, t, steps, loss)

    def add_text(self, tag: str, text: str, step: int | None = None) -> None:
        """Forward."""
        self.call("add_text", tag, text, step)

    def close(self) -> None:
        """Forward."""
        self.call("close")
