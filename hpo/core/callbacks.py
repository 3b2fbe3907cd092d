"""Callbacks through which the outer loop reports progress; backends never see the logger.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import final

from torch import Tensor

from hpo.core.problem import MetricLabel


@final
@dataclass(frozen=True)
class OuterRecord:
    """What one outer step measured and decided.

    ``hypergrad``, ``values`` and ``step_sizes`` hold a list of floats per type, or a list of lists
    (one per group) for a grouped type; ``groups`` names the groups of every grouped type.
    ``val_acc`` is the validation score searches rank by (larger is better); ``metric`` and
    ``higher`` name the problem's ranking metric and its direction, so that :attr:`val_metric`
    shows it in its own units (the accuracy of a classifier, the RMSE of a regression).
    """

    k: int
    horizon: int
    steps_run: int
    val_loss: float
    val_acc: float
    hypergrad: dict[str, list[float]]
    values: dict[str, list[float]]
    step_sizes: dict[str, list[float]]
    diverged: bool
    seconds: float
    converged: bool = False
    extra: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    metric: str = "acc"
    higher: bool = True

    @property
    def label(self) -> MetricLabel:
        """The ranking metric's name and direction."""
        return MetricLabel(self.metric, self.higher)

    @property
    def val_metric(self) -> float:
        """The validation value of the ranking metric, :math:`m = s` or :math:`-s` of the score :math:`s`."""
        return self.label.value(self.val_acc)

    def to_json(self) -> dict:
        """The record as written to ``schedule.json``: the score shown as ``val_<metric>`` in the metric's
        units (``val_acc`` for a classifier, as always; no second entry when the metric is the loss)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("metric", "higher", "val_acc")}
        if not self.label.is_loss:
            d = {**{k: v for k, v in d.items() if k in ("k", "horizon", "steps_run", "val_loss")},
                 f"val_{self.metric}": self.val_metric, **d}
        return d


class Callbacks(ABC):
    """No-op base class: override what you need."""

    def on_run_start(self, horizons: tuple[int, ...]) -> None:
        """A run starts (or resumes): outer step ``k`` will run ``horizons[k]`` inner steps."""

    def on_outer_start(self, k: int, horizon: int) -> None:
        """Outer step ``k`` is about to run ``horizon`` inner steps."""

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Inner step ``t`` of outer step ``k`` finished with minibatch ``loss`` (a tensor; no sync)."""

    def on_outer_step(self, record: OuterRecord) -> None:
        """Outer step ``record.k`` finished."""

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """Step ``t`` of ``steps`` of the final retrain called ``name`` finished."""

    def on_message(self, text: str) -> None:
        """A line of the run's report (the header, a resume notice, the final results)."""


@final
class CallbackList(Callbacks):
    """Forward every event to each of several callbacks."""

    def __init__(self, *callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def on_run_start(self, horizons: tuple[int, ...]) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_run_start(horizons)

    def on_outer_start(self, k: int, horizon: int) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_outer_start(k, horizon)

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_inner_step(k, t, loss)

    def on_outer_step(self, record: OuterRecord) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_outer_step(record)

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_retrain_step(name, t, steps, loss)

    def on_message(self, text: str) -> None:
        """Forward to all."""
        for c in self.callbacks:
            c.on_message(text)
