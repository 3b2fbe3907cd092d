"""AdaHessian (Yao et al. 2021), as ``pytorch_optimizer.AdaHessian``, with the paper's spatial averaging.

A curvature rule (:class:`~hpo.optimizers.base.Curvature`): every ``every`` steps the library passes
the Hutchinson estimate :math:`\\hat D_t = \\mathrm{mean}_i\\, z_i \\odot H_t z_i` of the Hessian's
diagonal on step ``t``'s own minibatch.  With step count :math:`s = t + 1`, the hyperparameters of
step :math:`t` (:math:`\\eta, \\beta_1, \\beta_2, \\lambda`), bias corrections
:math:`c_i = 1 - \\beta_i^{s}` and the fixed Hessian power :math:`k` (1 by default):

.. math::

    \\bar D_t &= \\hat D_t \\;\\; (\\text{weights and biases}), \\qquad
    \\bar D_t[o, i, \\cdot] = \\mathrm{mean}_{\\text{spatial}} |\\hat D_t[o, i, \\cdot]|
    \\;\\; (\\text{conv kernels, } \\dim \\ge 3) \\\\
    m_{t+1} &= \\beta_1 m_t + (1-\\beta_1) g_t \\\\
    v_{t+1} &= \\beta_2 v_t + (1-\\beta_2) \\bar D_t^2 \\;\\; (t \\bmod k_{every} = 0), \\qquad
    v_{t+1} = v_t \\;\\; (\\text{otherwise}) \\\\
    \\theta_{t+1} &= \\theta_t (1 - \\eta\\lambda) - \\frac{\\eta}{c_1}\\,
    \\frac{m_{t+1}}{(v_{t+1} / c_2 + \\epsilon_{root})^{k/2} + \\epsilon}

The spatial averaging is the paper's (Sec. 3.3, "spatial averaging"): a conv kernel's
Hessian-diagonal estimate is replaced by the mean of its absolute value over the kernel's spatial
positions (dims 2, 3 of a 2-D kernel; dim 2 of a 1-D one), which smooths the noisy per-entry
estimate.  ``pytorch-optimizer`` 4.x no longer averages; its parity is tested with the averaged
estimate fed to it.  ``eps_root`` (``1e-30``) keeps :math:`v^{k/2}` differentiable at :math:`v = 0`.
"""

from __future__ import annotations

from typing import ClassVar, final

from torch import Tensor

from hpo.optimizers.adam import _BETA1, _BETA2
from hpo.optimizers.base import Curvature, Hyper, HyperSpec, Params, State, UpdateRule, zeros_like_params


def spatial_average(d: Tensor) -> Tensor:
    """``d`` for a tensor of at most 2 dims; for a conv kernel ``(out, in, *spatial)`` the mean of
    ``|d|`` over the spatial dims, broadcast back to ``d``'s shape.

    Example:
        >>> import torch
        >>> spatial_average(torch.tensor([[[1.0, -3.0]]]))
        tensor([[[2., 2.]]])
    """
    if d.dim() <= 2:
        return d
    dims = tuple(range(2, d.dim()))
    return d.abs().mean(dim=dims, keepdim=True).expand_as(d)


@final
class AdaHessian(UpdateRule):
    """AdaHessian with decoupled weight decay; hyperparameters ``lr``, ``beta1``, ``beta2``, ``wd``.

    ``every`` (``update_period``, 1) and ``probes`` (``num_samples``, 1) set the estimate;
    ``hessian_power`` (:math:`k`, in ``(0, 1]``) and ``eps`` (``1e-16``, the reference's) are fixed
    constants.  Hand-picked baseline: the reference defaults ``lr=0.1, beta1=0.9, beta2=0.999, wd=0``.

    Example:
        >>> import torch
        >>> rule = AdaHessian()
        >>> p = {"w": torch.tensor([1.0])}
        >>> h = {k: torch.tensor(v) for k, v in rule.hand_picked.items()}
        >>> p, s = rule.step(p, rule.init(p), {"w": torch.tensor([2.0])}, h, 0, hess_diag={"w": torch.tensor([4.0])})
        >>> p["w"]  # first step: lr * g / |D| = 0.1 * 2 / 4
        tensor([0.9500])
    """

    name = "adahessian"
    hyperparameters = (
        HyperSpec("lr", low=0.0, init=0.0, step=0.01, count=7, description="learning rate", on_divergence=-1,
                  search_low=1e-3, search_high=1.0, search_log=True),
        _BETA1,
        _BETA2,
        HyperSpec("wd", low=0.0, init=0.0, step=3e-3, count=1, description="decoupled weight decay", on_divergence=0,
                  search_low=1e-4, search_high=1e-1, search_log=True),
    )
    hand_picked: ClassVar[dict[str, float] | None] = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "wd": 0.0}

    def __init__(self, every: int = 1, probes: int = 1, hessian_power: float = 1.0, eps: float = 1e-16,
                 eps_root: float = 1e-30) -> None:
        if not (0 < hessian_power <= 1 and eps >= 0 and eps_root > 0):
            raise ValueError(f"AdaHessian needs 0 < hessian_power <= 1, eps >= 0 and eps_root > 0, got "
                             f"hessian_power={hessian_power}, eps={eps}, eps_root={eps_root}")
        self.curvature = Curvature(every, probes)
        self.hessian_power = float(hessian_power)
        self.eps = float(eps)
        self.eps_root = float(eps_root)

    def init(self, params: Params) -> State:
        """Zero gradient average ``m`` and squared-curvature average ``v``."""
        return {"m": zeros_like_params(params), "v": zeros_like_params(params)}

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int,
             hess_diag: Params | None = None) -> tuple[Params, State]:
        """One AdaHessian update; ``hess_diag`` is the fresh estimate, or None between refreshes."""
        lr, b1, b2, wd = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["wd"]
        s = t + 1
        c1, c2 = 1 - b1 ** s, 1 - b2 ** s
        new_p: Params = {}
        m: Params = {}
        v: Params = {}
        for k, p in params.items():
            m[k] = b1 * state["m"][k] + (1 - b1) * grads[k]
            if hess_diag is None:
                v[k] = state["v"][k]
            else:
                d = spatial_average(hess_diag[k])
                v[k] = b2 * state["v"][k] + (1 - b2) * d * d
            den = (v[k] / c2 + self.eps_root) ** (self.hessian_power / 2) + self.eps
            new_p[k] = p * (1 - lr * wd) - (lr / c1) * m[k] / den
        return new_p, {"m": m, "v": v}
