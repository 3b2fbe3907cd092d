"""Adam (L2 weight decay, as ``torch.optim.Adam``) and AdamW (decoupled, as ``torch.optim.AdamW``).

With step count :math:`s = t + 1` and the hyperparameters of step :math:`t`
(:math:`\\eta, \\beta_1, \\beta_2, \\lambda`):

.. math::

    g' &= g + \\lambda\\theta \\;\\;(\\text{Adam}), \\qquad g' = g \\;\\;(\\text{AdamW}) \\\\
    m_{t+1} &= \\beta_1 m_t + (1-\\beta_1) g', \\qquad
    v_{t+1} = \\beta_2 v_t + (1-\\beta_2) g'^2 \\\\
    \\hat m &= m_{t+1} / (1-\\beta_1^{s}), \\qquad \\hat v = v_{t+1} / (1-\\beta_2^{s}) \\\\
    u &= \\hat m / (\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon) \\\\
    \\theta_{t+1} &= \\theta_t - \\eta u \\;\\;(\\text{Adam}), \\qquad
    \\theta_{t+1} = \\theta_t (1 - \\eta\\lambda) - \\eta u \\;\\;(\\text{AdamW})

**Bias correction under a schedule.**  The correction uses the *current* :math:`\\beta` raised to
the step count, :math:`1-\\beta_t^{s}`, exactly as ``torch.optim.Adam`` does when a scheduler
rewrites ``param_group["betas"]``; it is exact for a constant :math:`\\beta` and differentiable in
:math:`\\beta` (:math:`\\partial(1-\\beta^s)/\\partial\\beta = -s\\beta^{s-1}`).

**eps_root.**  :math:`\\sqrt{x}` has derivative :math:`1/(2\\sqrt{x})`, infinite at ``x = 0``, and
:math:`\\hat v` is exactly 0 wherever the gradient has always been 0 (dead units, unused
embeddings), so the tangent would be ``inf * 0 = nan``.  The small ``eps_root`` inside the root
keeps the derivative finite there.  The default ``1e-30`` is chosen so that the rule stays equal
to ``torch.optim.Adam`` (which has no ``eps_root``) to float64 precision: the step differs by at
most about :math:`\\eta\\,\\epsilon_{root} / (2\\epsilon^2) = 5\\cdot 10^{-15}\\eta` per coordinate,
and ``1e-30`` is still a normal float32 number (the derivative at 0, :math:`5\\cdot 10^{14}`, is
finite in float32 and is multiplied by an exactly-zero tangent there).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterable
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from hpo.optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule, zeros_like_params

#: FDS defaults shared by both forms.  Betas start at Kingma & Ba's 0.9 / 0.999 rather than 0: a
#: sign-based search moves by fixed steps, and from 0 it would need ~10 outer steps of one sign to
#: reach the usual beta1 and could never resolve beta2's scale near 1.  beta2's margin (1e-4) lets
#: it reach 0.9999; its step (1e-3) is small because only 1 - beta2 matters.  The learning rate
#: starts at 0 (so, as with FDS's SGD, the first outer step moves only the learning rates: every
#: other tangent is zero while lr = 0) with step 1e-3, Adam's usual scale.
# Default search ranges of the black-box baselines: the usual ones for Adam (lr 1e-4..1e-1 log,
# beta1 0.5..0.99, beta2 0.9..0.9999); online hypergradient descent moves lr by 1e-3 per unit.
_LR = HyperSpec("lr", low=0.0, init=0.0, step=1e-3, count=7, description="learning rate", on_divergence=-1,
                search_low=1e-4, search_high=1e-1, search_log=True)
_BETA1 = HyperSpec("beta1", low=0.0, high=1.0, high_open=True, init=0.9, step=0.05, count=1,
                   description="decay of the first moment (momentum)", on_divergence=0,
                   search_low=0.5, search_high=0.99)
_BETA2 = HyperSpec("beta2", low=0.0, high=1.0, high_open=True, init=0.999, step=1e-3, count=1, margin=1e-4,
                   description="decay of the second moment", on_divergence=0, search_low=0.9, search_high=0.9999)


class AdamFamily(UpdateRule, ABC):
    """Shared code of :class:`Adam` and :class:`AdamW` (abstract: ``decoupled`` picks the form).

    ``eps`` (outside the root, as in torch) and ``eps_root`` (inside it) are fixed constants, not
    learned hyperparameters.
    """

    decoupled: ClassVar[bool]
    hand_tangent = True

    def __init__(self, eps: float = 1e-8, eps_root: float = 1e-30) -> None:
        if not (eps >= 0 and eps_root > 0):
            raise ValueError(f"Adam needs eps >= 0 and eps_root > 0, got eps={eps}, eps_root={eps_root}")
        self.eps = float(eps)
        self.eps_root = float(eps_root)

    def init(self, params: Params) -> State:
        """Zero first and second moments ``m`` and ``v``."""
        return {"m": zeros_like_params(params), "v": zeros_like_params(params)}

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int) -> tuple[Params, State]:
        """One Adam/AdamW update at step ``t`` (bias correction with step count ``t + 1``)."""
        lr, b1, b2, wd = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["wd"]
        s = t + 1
        c1, c2 = 1 - b1 ** s, 1 - b2 ** s
        new_p: Params = {}
        m: Params = {}
        v: Params = {}
        for k, p in params.items():
            g = grads[k] if self.decoupled else grads[k] + wd * p
            m[k] = b1 * state["m"][k] + (1 - b1) * g
            v[k] = b2 * state["v"][k] + (1 - b2) * g * g
            u = (m[k] / c1) / (torch.sqrt(v[k] / c2 + self.eps_root) + self.eps)
            base = p * (1 - lr * wd) if self.decoupled else p
            new_p[k] = base - lr * u
        return new_p, {"m": m, "v": v}

    def tangent(
        self,
        params: Params,
        state: State,
        grads: Params,
        hyper: Hyper,
        t: int,
        d_params: Params,
        d_state: State,
        d_grads: Params,
        d_hyper: Hyper,
    ) -> tuple[Params, State]:
        """Hand-derived JVP of :meth:`step` for one tangent column.

        .. math::

            \\dot m' &= \\beta_1\\dot m + \\dot\\beta_1 (m - g') + (1-\\beta_1)\\dot g', \\quad
            \\dot v' = \\beta_2\\dot v + \\dot\\beta_2 (v - g'^2) + 2(1-\\beta_2) g'\\dot g' \\\\
            \\dot c_i &= -s\\beta_i^{s-1}\\dot\\beta_i, \\quad
            \\dot{\\hat m} = \\dot m'/c_1 - \\hat m\\,\\dot c_1/c_1, \\quad
            \\dot{\\hat v} = \\dot v'/c_2 - \\hat v\\,\\dot c_2/c_2 \\\\
            \\dot u &= \\dot{\\hat m}/D - u\\,\\dot{\\hat v}/(2 r D), \\quad r = \\sqrt{\\hat v + \\epsilon_{root}},
            \\; D = r + \\epsilon \\\\
            \\dot\\theta' &= \\dot\\theta - \\dot\\eta u - \\eta\\dot u \\;(\\text{Adam}), \\quad
            \\dot\\theta' = (1-\\eta\\lambda)\\dot\\theta - (\\dot\\eta\\lambda + \\eta\\dot\\lambda)\\theta
            - \\dot\\eta u - \\eta\\dot u \\;(\\text{AdamW})

        with :math:`\\dot g' = \\dot g + \\lambda\\dot\\theta + \\dot\\lambda\\theta` (Adam) or
        :math:`\\dot g` (AdamW).
        """
        lr, b1, b2, wd = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["wd"]
        dlr, db1, db2, dwd = d_hyper["lr"], d_hyper["beta1"], d_hyper["beta2"], d_hyper["wd"]
        s = t + 1
        c1, c2 = 1 - b1 ** s, 1 - b2 ** s
        dc1, dc2 = -s * b1 ** (s - 1) * db1, -s * b2 ** (s - 1) * db2
        d_p: Params = {}
        dm_new: Params = {}
        dv_new: Params = {}
        for k, p in params.items():
            dp = d_params[k]
            if self.decoupled:
                g, dg = grads[k], d_grads[k]
            else:
                g, dg = grads[k] + wd * p, d_grads[k] + wd * dp + dwd * p
            m_old, v_old = state["m"][k], state["v"][k]
            m = b1 * m_old + (1 - b1) * g
            v = b2 * v_old + (1 - b2) * g * g
            dm_new[k] = b1 * d_state["m"][k] + db1 * (m_old - g) + (1 - b1) * dg
            dv_new[k] = b2 * d_state["v"][k] + db2 * (v_old - g * g) + 2 * (1 - b2) * g * dg
            m_hat, v_hat = m / c1, v / c2
            dm_hat = dm_new[k] / c1 - m_hat * dc1 / c1
            dv_hat = dv_new[k] / c2 - v_hat * dc2 / c2
            r = torch.sqrt(v_hat + self.eps_root)
            den = r + self.eps
            u = m_hat / den
            du = dm_hat / den - u * dv_hat / (2 * r * den)
            if self.decoupled:
                d_p[k] = dp * (1 - lr * wd) - (dlr * wd + lr * dwd) * p - dlr * u - lr * du
            else:
                d_p[k] = dp - dlr * u - lr * du
        return d_p, {"m": dm_new, "v": dv_new}

    def torch_group(self, hyper: dict[str, float]) -> dict[str, Any]:
        """``lr``, ``betas``, ``weight_decay`` and ``eps`` of a torch Adam/AdamW param group."""
        return {"lr": float(hyper["lr"]), "betas": (float(hyper["beta1"]), float(hyper["beta2"])),
                "weight_decay": float(hyper["wd"]), "eps": self.eps}


@final
class Adam(AdamFamily):
    """Adam with L2 weight decay added to the gradient (``torch.optim.Adam``'s ``weight_decay``).

    Hyperparameters ``lr``, ``beta1``, ``beta2``, ``wd``.  Hand-picked baseline: Kingma & Ba's
    ``lr=1e-3, beta1=0.9, beta2=0.999`` with ``wd=0`` (torch's default).

    Example:
        >>> import torch
        >>> rule = Adam()
        >>> p = {"w": torch.tensor([1.0])}
        >>> h = {"lr": torch.tensor(0.1), "beta1": torch.tensor(0.9), "beta2": torch.tensor(0.999),
        ...      "wd": torch.tensor(0.0)}
        >>> p, s = rule.step(p, rule.init(p), {"w": torch.tensor([2.0])}, h, 0)
        >>> p["w"]  # the first Adam step is lr * sign(g)
        tensor([0.9000])
    """

    name = "adam"
    decoupled = False
    hyperparameters = (
        _LR, _BETA1, _BETA2,
        HyperSpec("wd", low=0.0, init=0.0, step=1e-4, count=1, description="L2 weight decay", on_divergence=0,
                  search_low=1e-6, search_high=1e-2, search_log=True),
    )
    hand_picked: ClassVar[dict[str, float]] = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "wd": 0.0}

    def torch_optimizer(self, params: Iterable[Tensor], hyper: dict[str, float]) -> torch.optim.Optimizer:
        """``torch.optim.Adam`` with the same update (no ``eps_root``: equal to float64 precision)."""
        return torch.optim.Adam(params, **self.torch_group(hyper))


@final
class AdamW(AdamFamily):
    """Adam with decoupled weight decay ``theta <- theta (1 - lr wd)`` (``torch.optim.AdamW``).

    Hyperparameters ``lr``, ``beta1``, ``beta2``, ``wd``.  Hand-picked baseline: ``lr=1e-3,
    beta1=0.9, beta2=0.999`` and torch's default ``wd=1e-2``.
    """

    name = "adamw"
    decoupled = True
    hyperparameters = (
        _LR, _BETA1, _BETA2,
        HyperSpec("wd", low=0.0, init=0.0, step=3e-3, count=1, description="decoupled weight decay", on_divergence=0,
                  search_low=1e-4, search_high=1e-1, search_log=True),
    )
    hand_picked: ClassVar[dict[str, float]] = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "wd": 1e-2}

    def torch_optimizer(self, params: Iterable[Tensor], hyper: dict[str, float]) -> torch.optim.Optimizer:
        """``torch.optim.AdamW`` with the same update (no ``eps_root``: equal to float64 precision)."""
        return torch.optim.AdamW(params, **self.torch_group(hyper))
