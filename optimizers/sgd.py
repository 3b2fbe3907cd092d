"""SGD with momentum and L2 weight decay, as ``torch.optim.SGD`` (dampening 0, no Nesterov).

.. math::

    v_{t+1} = \\mu_t v_t + g_t + \\lambda_t \\theta_t, \\qquad
    \\theta_{t+1} = \\theta_t - \\eta_t v_{t+1}

Its tangent (one column, with :math:`\\dot g = H \\dot\\theta`):

.. math::

    \\dot v_{t+1} = \\mu_t \\dot v_t + \\dot\\mu_t v_t + \\dot g_t + \\lambda_t \\dot\\theta_t
                  + \\dot\\lambda_t \\theta_t, \\qquad
    \\dot\\theta_{t+1} = \\dot\\theta_t - \\eta_t \\dot v_{t+1} - \\dot\\eta_t v_{t+1}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from hpo.optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule, zeros_like_params

#: Stand-in for a momentum of exactly 0 in ``torch.optim.SGD`` (see :meth:`SGDMomentum.torch_group`).
TINY_MOMENTUM = 1e-300


@final
class SGDMomentum(UpdateRule):
    """SGD with heavy-ball momentum and L2 weight decay; hyperparameters lr, momentum, wd.

    Example:
        >>> import torch
        >>> rule = SGDMomentum()
        >>> p = {"w": torch.tensor([1.0])}
        >>> s = rule.init(p)
        >>> h = {"lr": torch.tensor(0.1), "momentum": torch.tensor(0.9), "wd": torch.tensor(0.0)}
        >>> p, s = rule.step(p, s, {"w": torch.tensor([2.0])}, h, 0)
        >>> p["w"]
        tensor([0.8000])
    """

    name = "sgd"
    # On divergence (docs/divergence.md): lower lr (lr = 0 never diverges) and momentum (the
    # effective step lr / (1 - momentum) shrinks); hold wd (lr * wd is far too small to matter).
    hyperparameters = (
        HyperSpec("lr", low=0.0, init=0.0, step=0.1, count=7, description="learning rate",
                  search_low=1e-3, search_high=1.0, search_log=True, hyper_lr=0.1),
        HyperSpec("momentum", low=0.0, high=1.0, high_open=True, init=0.0, step=0.1, count=1,
                  description="heavy-ball momentum", search_low=0.0, search_high=0.99, hyper_lr=0.1),
        HyperSpec("wd", low=0.0, init=0.0, step=3e-4, count=1, description="L2 weight decay", on_divergence=0,
                  search_low=1e-6, search_high=1e-2, search_log=True, hyper_lr=1e-3),
    )
    hand_picked: ClassVar[dict[str, float]] = {"lr": 0.1, "momentum": 0.9, "wd": 5e-4}
    hand_tangent = True

    def init(self, params: Params) -> State:
        """Zero momentum buffers."""
        return {"v": zeros_like_params(params)}

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int) -> tuple[Params, State]:
        """``v <- mu v + g + wd theta``; ``theta <- theta - lr v``."""
        lr, mu, wd = hyper["lr"], hyper["momentum"], hyper["wd"]
        v = {k: mu * state["v"][k] + grads[k] + wd * params[k] for k in params}
        new = {k: params[k] - lr * v[k] for k in params}
        return new, {"v": v}

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
        """Hand-derived JVP of :meth:`step` (see the module docstring)."""
        lr, mu, wd = hyper["lr"], hyper["momentum"], hyper["wd"]
        dlr, dmu, dwd = d_hyper["lr"], d_hyper["momentum"], d_hyper["wd"]
        v_old = state["v"]
        d_v: Params = {}
        d_new: Params = {}
        for k in params:
            v_new = mu * v_old[k] + grads[k] + wd * params[k]
            d_v[k] = mu * d_state["v"][k] + dmu * v_old[k] + d_grads[k] + wd * d_params[k] + dwd * params[k]
            d_new[k] = d_params[k] - lr * d_v[k] - dlr * v_new
        return d_new, {"v": d_v}

    def torch_optimizer(self, params: Iterable[Tensor], hyper: dict[str, float]) -> torch.optim.Optimizer:
        """``torch.optim.SGD`` with the same update."""
        return torch.optim.SGD(params, **self.torch_group(hyper))

    def torch_group(self, hyper: dict[str, float]) -> dict[str, Any]:
        """``lr``, ``momentum`` and ``weight_decay`` of a ``torch.optim.SGD`` param group.

        ``torch.optim.SGD`` keeps no momentum buffer while ``momentum == 0`` and restarts it from
        the current gradient when momentum becomes positive, whereas the heavy-ball recursion
        (and its hypergradient) keeps ``v = g + wd theta`` through a zero-momentum segment.  A
        momentum of 0 is therefore passed as ``1e-300``: the buffer is kept, and
        ``1e-300 * v`` vanishes in float32 and is below round-off in float64.
        """
        mu = float(hyper["momentum"])
        return {"lr": float(hyper["lr"]), "momentum": mu if mu > 0 else TINY_MOMENTUM, "weight_decay": float(hyper["wd"])}
