"""Sophia with Hutchinson's estimator (Liu et al. 2023, "SophiaH"), as ``pytorch_optimizer.SophiaH``.

A curvature rule (:class:`~hpo.optimizers.base.Curvature`): every ``every`` steps the library passes
the Hutchinson estimate :math:`\\hat D_t = \\mathrm{mean}_i\\, z_i \\odot H_t z_i` of the Hessian's
diagonal on step ``t``'s own minibatch.  With the hyperparameters of step :math:`t`
(:math:`\\eta, \\beta_1, \\beta_2, \\rho, \\lambda`):

.. math::

    m_{t+1} &= \\beta_1 m_t + (1-\\beta_1) g_t \\\\
    h_{t+1} &= \\beta_2 h_t + (1-\\beta_2) \\hat D_t \\;\\; (t \\bmod k = 0), \\qquad
    h_{t+1} = h_t \\;\\; (\\text{otherwise}) \\\\
    u &= \\operatorname{clip}\\Big(\\frac{m_{t+1}}{\\max(h_{t+1}, \\epsilon)}, -\\rho, \\rho\\Big) \\\\
    \\theta_{t+1} &= \\theta_t (1 - \\eta\\lambda) - \\eta\\, u

The clip bounds every coordinate's move by :math:`\\eta\\rho` and is what keeps Sophia stable where
the estimate is small or negative (non-convex directions: :math:`\\max(h, \\epsilon)` with a tiny
``eps`` makes the ratio huge and the clip turns the step into a sign step).  No bias correction.
``rho`` is ``pytorch-optimizer``'s ``p``; the paper writes the same step as
:math:`\\eta' \\operatorname{clip}(m / \\max(\\gamma h, \\epsilon), 1)`.  The probes are Rademacher
(``pytorch-optimizer`` defaults to Gaussian probes for SophiaH; both are unbiased).

The update is piecewise smooth: its derivative in ``rho`` is :math:`-\\eta\\,\\mathrm{sign}(\\cdot)` on clipped
coordinates, and the derivative through :math:`m` and :math:`h` is zero there.  Exact
hypergradients include the derivative of :math:`\\hat D_t` with respect to the weights (a third
derivative of the loss).
"""

from __future__ import annotations

from typing import ClassVar, final

import torch

from hpo.optimizers.base import Curvature, Hyper, HyperSpec, Params, State, UpdateRule, zeros_like_params


@final
class Sophia(UpdateRule):
    """SophiaH: clipped Newton-like steps with a Hutchinson diagonal; ``lr``, ``beta1``, ``beta2``, ``rho``, ``wd``.

    ``every`` (``update_period``, 10 as in the reference) and ``probes`` (``num_samples``, 1) set
    the estimate; ``eps`` (``1e-12``) floors the curvature.  Hand-picked baseline: the reference
    defaults ``lr=0.06, beta1=0.96, beta2=0.99, rho=0.01, wd=0``.

    Example:
        >>> import torch
        >>> rule = Sophia()
        >>> rule.curvature
        Curvature(every=10, probes=1)
        >>> p = {"w": torch.tensor([1.0, 1.0])}
        >>> h = {k: torch.tensor(v) for k, v in rule.hand_picked.items()}
        >>> p, s = rule.step(p, rule.init(p), {"w": torch.tensor([2.0, 2.0])}, h, 0,
        ...                  hess_diag={"w": torch.tensor([1000.0, -1.0])})
        >>> p["w"]  # coordinate 0: 1 - 0.06 * 0.08 / 10; coordinate 1 (negative curvature): clipped, 1 - 0.06 * 0.01
        tensor([0.9995, 0.9994])
    """

    name = "sophia"
    hyperparameters = (
        HyperSpec("lr", low=0.0, init=0.0, step=0.01, count=7, description="learning rate", on_divergence=-1,
                  search_low=1e-3, search_high=1.0, search_log=True),
        HyperSpec("beta1", low=0.0, high=1.0, high_open=True, init=0.96, step=0.02, count=1,
                  description="decay of the gradient's moving average", on_divergence=0,
                  search_low=0.5, search_high=0.99),
        HyperSpec("beta2", low=0.0, high=1.0, high_open=True, init=0.99, step=3e-3, count=1, margin=1e-4,
                  description="decay of the Hessian-diagonal moving average", on_divergence=0,
                  search_low=0.9, search_high=0.999),
        HyperSpec("rho", low=0.0, low_open=True, margin=1e-6, init=0.01, step=3e-3, count=1,
                  description="clip of the preconditioned step (max move lr * rho)", on_divergence=-1,
                  search_low=1e-3, search_high=0.1, search_log=True),
        HyperSpec("wd", low=0.0, init=0.0, step=3e-3, count=1, description="decoupled weight decay", on_divergence=0,
                  search_low=1e-4, search_high=1e-1, search_log=True),
    )
    hand_picked: ClassVar[dict[str, float] | None] = {"lr": 0.06, "beta1": 0.96, "beta2": 0.99, "rho": 0.01, "wd": 0.0}

    def __init__(self, every: int = 10, probes: int = 1, eps: float = 1e-12) -> None:
        if not eps > 0:
            raise ValueError(f"Sophia needs eps > 0, got {eps}")
        self.curvature = Curvature(every, probes)
        self.eps = float(eps)

    def init(self, params: Params) -> State:
        """Zero gradient average ``m`` and Hessian-diagonal average ``h``."""
        return {"m": zeros_like_params(params), "h": zeros_like_params(params)}

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int,
             hess_diag: Params | None = None) -> tuple[Params, State]:
        """One SophiaH update; ``hess_diag`` is the fresh estimate, or None between refreshes."""
        lr, b1, b2, rho, wd = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["rho"], hyper["wd"]
        new_p: Params = {}
        m: Params = {}
        h: Params = {}
        for k, p in params.items():
            m[k] = b1 * state["m"][k] + (1 - b1) * grads[k]
            h[k] = state["h"][k] if hess_diag is None else b2 * state["h"][k] + (1 - b2) * hess_diag[k]
            ratio = m[k] / h[k].clamp(min=self.eps)
            u = torch.minimum(torch.maximum(ratio, -rho), rho)
            new_p[k] = p * (1 - lr * wd) - lr * u
        return new_p, {"m": m, "h": h}
