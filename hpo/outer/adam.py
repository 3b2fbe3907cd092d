"""``adam``: Adam (Kingma & Ba 2015) on the hypergradient, in each value's coordinate.

With :math:`g_j = h_j\\, d\\lambda_j / du_j` the hypergradient in the coordinate
:math:`u = \\phi(\\lambda)` (:mod:`hpo.outer.coordinates`; :math:`g = h` for additive steps) and
the outer step count :math:`k = 1, 2, \\dots`:

.. math::

    m_j \\leftarrow \\beta_1 m_j + (1 - \\beta_1) g_j, \\qquad
    v_j \\leftarrow \\beta_2 v_j + (1 - \\beta_2) g_j^2, \\qquad
    u_j \\leftarrow u_j - \\alpha_j \\frac{m_j / (1 - \\beta_1^k)}{\\sqrt{v_j / (1 - \\beta_2^k)} + \\epsilon}

then :math:`\\lambda_j = \\Pi(\\phi^{-1}(u_j))`.  The learning rate :math:`\\alpha_j` of a type is its
initial outer step: the rule's :attr:`~hpo.optimizers.base.HyperSpec.step` (``--steps`` overrides
it; ``ln 2`` in a multiplicative coordinate), so Adam's first move has the size of the authors'
first sign step and later ones adapt to the hypergradient's history, per value.  Unlike the sign
updates it uses the hypergradient's magnitude, which thousands of values with very different
scales need.  ``steps`` in the state stay the learning rates, so convergence is judged as for the
sign updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor

from hpo.optimizers.base import HyperSpec
from hpo.outer.base import OuterOptimizer, OuterState


@final
@dataclass(frozen=True)
class Adam(OuterOptimizer):
    """Adam on the hypergradient with a per-type learning rate (the type's outer step)."""

    name: ClassVar[str] = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def update(self, state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """One Adam step per value; a non-finite hypergradient entry counts as 0."""
        k = state.k + 1
        m_old, v_old = state.slots.get("m", {}), state.slots.get("v", {})
        values, signs, m_new, v_new = {}, {}, {}, {}
        for name, val in state.values.items():
            c = state.coordinate(name)
            h = hypergrad[name].detach().to(dtype=val.dtype, device=val.device)
            g = torch.where(torch.isfinite(h), h, torch.zeros_like(h)) * c.direction * c.slope(val)
            m = self.beta1 * m_old.get(name, torch.zeros_like(val)) + (1 - self.beta1) * g
            v = self.beta2 * v_old.get(name, torch.zeros_like(val)) + (1 - self.beta2) * g * g
            move = state.steps[name] * (m / (1 - self.beta1**k)) / ((v / (1 - self.beta2**k)).sqrt() + self.eps)
            values[name] = specs[name].clamp(c.from_u(c.to_u(val) - move))
            signs[name] = torch.where(g != 0, torch.sign(g), state.signs[name])
            m_new[name], v_new[name] = m, v
        return OuterState(values, dict(state.steps), signs, k, state.good, state.kinds, {"m": m_new, "v": v_new})

    def check(self) -> None:
        """Both betas in [0, 1) and a positive ``eps``."""
        for name in ("beta1", "beta2"):
            b = getattr(self, name)
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b:g}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps:g}")
