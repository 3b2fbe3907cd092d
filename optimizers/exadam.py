"""EXAdam (Adhikari 2024, "EXAdam: The Power of Adaptive Cross-Moments"), as ``pytorch_optimizer.EXAdam``.

With step count :math:`s = t + 1`, the hyperparameters of step :math:`t`
(:math:`\\eta, \\beta_1, \\beta_2, \\lambda`), bias corrections :math:`c_i = 1 - \\beta_i^{s}` and
decoupled weight decay:

.. math::

    m_{t+1} &= \\beta_1 m_t + (1-\\beta_1) g, \\qquad v_{t+1} = \\beta_2 v_t + (1-\\beta_2) g^2 \\\\
    d_1 &= 1 + \\beta_2^{s}\\, \\frac{v_{t+1}}{v_{t+1} + \\epsilon}, \\qquad
    d_2 = 1 + \\beta_1^{s}\\, \\frac{m_{t+1}^2}{m_{t+1}^2 + \\epsilon}
    \\qquad (\\text{cross-moment debiasing}) \\\\
    \\tilde m &= \\frac{m_{t+1}}{c_1} d_1, \\qquad \\tilde g = \\frac{g}{c_1} d_1
    \\qquad (\\text{gradient acceleration}), \\qquad
    \\tilde v = \\frac{v_{t+1}}{c_2} d_2 \\\\
    \\theta_{t+1} &= \\theta_t (1 - \\eta\\lambda) - \\eta\\,
    \\frac{\\tilde m + \\tilde g}{\\sqrt{\\tilde v + \\epsilon_{root}} + \\epsilon}

Each corrected moment is scaled up by a factor in ``[1, 1 + beta^s]`` that depends on the *other*
moment (hence "cross-moments"); as :math:`s \\to \\infty`, :math:`d_1, d_2 \\to 1` and the step is
Adam's plus the extra gradient term :math:`\\tilde g`.  The paper's optional logarithmic growth of
the step size with :math:`s` is left out, as in ``pytorch-optimizer``: a learned learning-rate
schedule takes its place.  ``eps_root`` (inside the root, ``1e-30``) keeps the derivative finite where
:math:`v = 0`, as for :class:`hpo.optimizers.adam.Adam`.
"""

from __future__ import annotations

from typing import ClassVar, final

import torch

from hpo.optimizers.adam import _BETA1, _BETA2, _LR
from hpo.optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule, zeros_like_params


@final
class EXAdam(UpdateRule):
    """EXAdam with decoupled weight decay; hyperparameters ``lr``, ``beta1``, ``beta2``, ``wd``.

    ``eps`` (in the cross-moment ratios and the denominator, ``1e-8`` as in the reference) and
    ``eps_root`` are fixed constants.  Hand-picked baseline: the reference defaults ``lr=1e-3,
    beta1=0.9, beta2=0.999, wd=0``.  No hand-derived tangent (``forward-jvp`` derives it).

    Example:
        >>> import torch
        >>> rule = EXAdam()
        >>> p = {"w": torch.tensor([1.0], dtype=torch.float64)}
        >>> h = {k: torch.tensor(v, dtype=torch.float64) for k, v in rule.hand_picked.items()}
        >>> p, s = rule.step(p, rule.init(p), {"w": torch.tensor([2.0], dtype=torch.float64)}, h, 0)
        >>> round(float(p["w"]), 6)  # 1 - lr (m + g) d1 / c1 / sqrt(v d2 / c2) = 1 - lr * 22 * 2.0 / 2.76
        0.984048
    """

    name = "exadam"
    hyperparameters = (
        _LR, _BETA1, _BETA2,
        HyperSpec("wd", low=0.0, init=0.0, step=3e-3, count=1, description="decoupled weight decay", on_divergence=0,
                  search_low=1e-4, search_high=1e-1, search_log=True),
    )
    hand_picked: ClassVar[dict[str, float] | None] = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "wd": 0.0}

    def __init__(self, eps: float = 1e-8, eps_root: float = 1e-30) -> None:
        if not (eps > 0 and eps_root > 0):
            raise ValueError(f"EXAdam needs eps > 0 and eps_root > 0, got eps={eps}, eps_root={eps_root}")
        self.eps = float(eps)
        self.eps_root = float(eps_root)

    def init(self, params: Params) -> State:
        """Zero first and second moments ``m`` and ``v``."""
        return {"m": zeros_like_params(params), "v": zeros_like_params(params)}

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int) -> tuple[Params, State]:
        """One EXAdam update at step ``t`` (see the module docstring)."""
        lr, b1, b2, wd = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["wd"]
        s = t + 1
        p1, p2 = b1 ** s, b2 ** s
        c1, c2 = 1 - p1, 1 - p2
        eps = self.eps
        new_p: Params = {}
        m: Params = {}
        v: Params = {}
        for k, p in params.items():
            g = grads[k]
            m[k] = b1 * state["m"][k] + (1 - b1) * g
            v[k] = b2 * state["v"][k] + (1 - b2) * g * g
            d1 = 1 + p2 * v[k] / (v[k] + eps)
            m2 = m[k] * m[k]
            d2 = 1 + p1 * m2 / (m2 + eps)
            num = (m[k] + g) * d1 / c1
            den = torch.sqrt(v[k] * d2 / c2 + self.eps_root) + eps
            new_p[k] = p * (1 - lr * wd) - lr * num / den
        return new_p, {"m": m, "v": v}
