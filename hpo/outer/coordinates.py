"""Coordinates of the outer update: additive steps on the value, or multiplicative ones.

The sign update moves a coordinate :math:`u = \\phi(\\lambda)` of each value by its step,
:math:`u \\leftarrow u - \\operatorname{sign}(\\partial L / \\partial u)\\, s`, then maps back,
:math:`\\lambda = \\phi^{-1}(u)`.  Three coordinates:

* ``linear``, :math:`u = \\lambda`: the authors' additive steps;
* ``log``, :math:`u = \\log \\lambda` for a positive value of a type in :math:`[0, \\infty)` (learning
  rate, weight decay): a step :math:`s` multiplies the value by :math:`e^{\\pm s}` (``ln 2``:
  doubles or halves it), so the search covers decades in a few outer steps and moves a small value
  as much, relatively, as a large one;
* ``log1m``, :math:`u = \\log(1 - \\lambda)` for a type in :math:`[0, 1)` (momentum, Adam's betas):
  the distance to 1 doubles or halves, so 0.9 moves to 0.8 or 0.95, never past 1.

Since :math:`\\partial L / \\partial u = \\partial L / \\partial \\lambda \\cdot d\\lambda / du` and
:math:`d\\lambda / du` is :math:`\\lambda > 0` for ``log`` and :math:`-(1 - \\lambda) < 0` for
``log1m``, the sign in :math:`u` is the hypergradient's sign times :attr:`Coordinate.direction`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from hpo.optimizers.base import HyperSpec

#: Values of ``--outer-space``: additive steps everywhere, or multiplicative ones where they fit.
OUTER_SPACES = ("linear", "log")


#: The coordinates a type's steps can be taken in.
KINDS = ("linear", "log", "log1m")


#: The initial step of a ``log`` or ``log1m`` coordinate: doubles or halves the value (or 1 - value).
LOG_STEP = math.log(2.0)


@final
@dataclass(frozen=True)
class Coordinate:
    """One type's coordinate :math:`u = \\phi(\\lambda)`: ``linear``, ``log`` or ``log1m``."""

    kind: str = "linear"

    @property
    def direction(self) -> float:
        """The sign of :math:`d u / d \\lambda`: -1 for ``log1m``, else +1."""
        return -1.0 if self.kind == "log1m" else 1.0

    def to_u(self, x: Tensor) -> Tensor:
        """:math:`\\phi(\\lambda)`."""
        if self.kind == "log":
            return torch.log(x)
        if self.kind == "log1m":
            return torch.log1p(-x)
        return x

    def from_u(self, u: Tensor) -> Tensor:
        """:math:`\\phi^{-1}(u)`."""
        if self.kind == "log":
            return torch.exp(u)
        if self.kind == "log1m":
            return -torch.expm1(u)
        return u

    def slope(self, x: Tensor) -> Tensor:
        """:math:`|d\\lambda / du|`: 1 for ``linear``, :math:`\\lambda` for ``log``, :math:`1 - \\lambda` for
        ``log1m`` (so :math:`|\\partial L / \\partial u| = |h| \\cdot` this)."""
        if self.kind == "log":
            return x.abs()
        if self.kind == "log1m":
            return 1.0 - x
        return torch.ones_like(x)

    def relative_step(self, step: Tensor, value: Tensor) -> Tensor:
        """The step as a fraction of the value (what convergence is judged on): ``step / |value|``
        for ``linear``, the step itself for the multiplicative coordinates."""
        return step / value.abs() if self.kind == "linear" else step


LINEAR = Coordinate("linear")


def coordinate(spec: HyperSpec, space: str, start: Tensor) -> Coordinate:
    """The coordinate of type ``spec`` in ``space`` for starting values ``start``.

    ``log`` space gives ``log`` to a type in :math:`[0, \\infty)` whose every starting value is
    positive (a value at 0 cannot move multiplicatively, so such a type keeps additive steps),
    ``log1m`` to a type in :math:`[0, 1)` and ``linear`` to any other.
    """
    if space != "log" or spec.low != 0.0 or spec.low_open:
        return LINEAR
    if math.isinf(spec.high) and bool((start > 0).all()):
        return Coordinate("log")
    if spec.high == 1.0 and spec.high_open:
        return Coordinate("log1m")
    return LINEAR


def kinds_of(specs: Mapping[str, HyperSpec], space: str, start: Mapping[str, Tensor]) -> dict[str, str]:
    """``{type: kind}`` of every type in ``start``."""
    return {n: coordinate(specs[n], space, v).kind for n, v in start.items()}
