"""``sign-magnitude``: sign steps whose moves scale with the hypergradient's size within its type.

.. math::

    \\lambda_j \\leftarrow \\lambda_j - \\operatorname{sign}(h_j)\\, s_j\\, r_j, \\qquad
    r_j = \\operatorname{clamp}\\bigl(|g_j| / \\operatorname{median}_k |g_k|,\\; 1/C,\\; C\\bigr)

(:math:`g` the hypergradient in the step's coordinate), so a segment whose hypergradient is far
larger than the rest moves further; the step sizes :math:`s_j` and their halving on a flip are
those of :mod:`hpo.outer.sign`.  The cap :math:`C \\ge 1` (default 2) bounds every move to
:math:`[s_j / C, C s_j]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor

from hpo.optimizers.base import HyperSpec
from hpo.outer.base import OuterOptimizer, OuterState, sign_move


def relative_magnitude(g: Tensor, cap: float) -> Tensor:
    """:math:`r_j = \\operatorname{clamp}(|g_j| / \\operatorname{median}_k |g_k|, 1/C, C)` over the finite,
    nonzero entries of one type's hypergradient :math:`g`; 1 for the others and for a type with none.

    The median (not the mean) is the reference since a hypergradient's entries span decades: half
    of them move further than their step, half less, and no move exceeds :math:`C` steps.
    """
    a = g.abs()
    usable = torch.isfinite(a) & (a > 0)
    if not bool(usable.any()):
        return torch.ones_like(g)
    ref = a[usable].median()
    return torch.where(usable, (a / ref).clamp(1.0 / cap, cap), torch.ones_like(g))


@final
@dataclass(frozen=True)
class SignMagnitude(OuterOptimizer):
    """Sign steps halved on a flip, each move scaled by :func:`relative_magnitude` with cap ``cap``."""

    name: ClassVar[str] = "sign-magnitude"
    decay: float = 0.5
    cap: float = 2.0

    def update(self, state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """:func:`hpo.outer.base.sign_move` with growth 1 and moves scaled by the relative magnitude."""
        scale = {}
        for name, v in state.values.items():
            h = hypergrad[name].detach().to(dtype=v.dtype, device=v.device)
            scale[name] = relative_magnitude(h * state.coordinate(name).slope(v), self.cap)
        return sign_move(state, hypergrad, specs, self.decay, 1.0, scale)

    def check(self) -> None:
        """``decay`` in (0, 1) and ``cap`` at least 1."""
        super().check()
        if not self.cap >= 1.0:
            raise ValueError(f"cap must be at least 1, got {self.cap:g}")
