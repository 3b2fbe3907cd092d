"""``rprop``: sign steps that also grow while the hypergradient's sign holds (Riedmiller & Braun 1993).

.. math::

    s_j \\leftarrow \\gamma s_j \\text{ after a flip}, \\qquad
    s_j \\leftarrow \\eta s_j \\text{ after a held sign}, \\qquad
    \\lambda_j \\leftarrow \\operatorname{clamp}(\\lambda_j - \\operatorname{sign}(h_j)\\, s_j)

with decay :math:`\\gamma` (0.5) and growth :math:`\\eta \\ge 1` (1.2, Rprop's usual value; no cap
on the step), so a value still far from its optimum after a few outer steps gets there in fewer.
With :math:`\\eta = 1` it is :mod:`hpo.outer.sign`.
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
class Rprop(OuterOptimizer):
    """Sign steps shrunk by ``decay`` on a flip and grown by ``grow`` while the sign holds."""

    name: ClassVar[str] = "rprop"
    decay: float = 0.5
    grow: float = 1.2

    def update(self, state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """:func:`hpo.outer.base.sign_move` with growth ``grow``."""
        return sign_move(state, hypergrad, specs, self.decay, self.grow)

    def check(self) -> None:
        """``decay`` in (0, 1) and ``grow`` at least 1."""
        super().check()
        if not self.grow >= 1.0:
            raise ValueError(f"grow must be at least 1, got {self.grow:g}")
