"""``sign``: the authors' outer update, and the default.

For every shared value :math:`\\lambda_j` with hypergradient :math:`h_j` and step :math:`s_j`:

.. math::

    s_j \\leftarrow \\gamma s_j \\;\\text{ if } \\operatorname{sign}(h_j) \\ne
    \\operatorname{sign}(h_j^{prev}), \\qquad
    \\lambda_j \\leftarrow \\operatorname{clamp}(\\lambda_j - \\operatorname{sign}(h_j)\\, s_j)

with decay :math:`\\gamma` (default 0.5): steps only shrink.  The search has converged when every
:math:`s_j / |\\lambda_j|` is below a fraction (default 0.05, :func:`hpo.outer.base.converged`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, final

from torch import Tensor

from hpo.optimizers.base import HyperSpec
from hpo.outer.base import OuterOptimizer, OuterState, sign_move


@final
@dataclass(frozen=True)
class SignDescent(OuterOptimizer):
    """Sign steps that halve (``decay``) on a sign flip (Micaelli & Storkey's FDS update)."""

    name: ClassVar[str] = "sign"
    decay: float = 0.5

    def update(self, state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """:func:`hpo.outer.base.sign_move` with growth 1."""
        return sign_move(state, hypergrad, specs, self.decay, 1.0)
