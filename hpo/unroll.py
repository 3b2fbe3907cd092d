"""Reference hypergradients: full reverse mode through the unrolled loop, and finite differences.

These are the trusted (slow, memory O(T)) computations every backend is tested against:

.. math::  \\frac{\\partial L_{val}(\\theta_T(\\lambda))}{\\partial \\lambda}
           \\approx \\frac{L_{val}(\\theta_T(\\lambda + \\epsilon e_j)) - L_{val}(\\theta_T(\\lambda - \\epsilon e_j))}{2\\epsilon}
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from hpo.backend import tree_clamp
from hpo.problem import InnerProblem
from hpo.schedule import segment_index
from hpo.optimizers.base import Params


def unrolled_validation_loss(problem: InnerProblem, values: dict[str, Tensor]) -> Tensor:
    """Validation loss at :math:`\\theta_T` as a differentiable function of the shared values."""
    rule = problem.rule
    params, buffers = problem.params, problem.buffers
    state = rule.init(params)
    for t, x, y in problem.batches():
        hyper = {k: v[segment_index(t, problem.horizon, v.numel())] for k, v in values.items()}

        def loss_only(p: Params, b: dict[str, Tensor] = buffers, x: Tensor = x, y: Tensor = y) -> tuple[Tensor, dict[str, Tensor]]:
            loss, nb = problem.loss_fn(p, b, x, y)
            return loss, nb

        g, buffers = grad(loss_only, has_aux=True)(params)
        g = tree_clamp(g, problem.grad_clip)
        params, state = rule.step(params, state, g, hyper, t)
    loss, _ = problem.eval_fn(params, buffers, problem.val_x, problem.val_y)
    return loss


def reverse_hypergradient(problem: InnerProblem, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Exact hypergradient by reverse-mode differentiation of :func:`unrolled_validation_loss`."""
    return grad(lambda v: unrolled_validation_loss(problem, v))(values)


def finite_difference_hypergradient(problem: InnerProblem, values: dict[str, Tensor], eps: float = 1e-6) -> dict[str, Tensor]:
    """Central finite differences of the validation loss, one value at a time."""
    out = {}
    with torch.no_grad():
        for name, v in values.items():
            g = torch.zeros_like(v)
            for j in range(v.numel()):
                plus = {k: w.clone() for k, w in values.items()}
                minus = {k: w.clone() for k, w in values.items()}
                plus[name][j] += eps
                minus[name][j] -= eps
                g[j] = (unrolled_validation_loss(problem, plus) - unrolled_validation_loss(problem, minus)) / (2 * eps)
            out[name] = g
    return out
