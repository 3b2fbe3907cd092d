"""Reference hypergradients: full reverse mode through the unrolled loop, and finite differences.

These are the trusted (slow, memory O(T)) computations every backend is tested against, for shared
``(segments,)`` and grouped ``(groups, segments)`` tables alike:

.. math::  \\frac{\\partial L_{val}(\\theta_T(\\lambda))}{\\partial \\lambda}
           \\approx \\frac{L_{val}(\\theta_T(\\lambda + \\epsilon e_j)) - L_{val}(\\theta_T(\\lambda - \\epsilon e_j))}{2\\epsilon}
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from hpo.core.backend import rng_devices
from hpo.core.problem import InnerProblem
from hpo.core.step import hyper_at_step, train_step, validation_loss


def unrolled_validation_loss(problem: InnerProblem, values: dict[str, Tensor]) -> Tensor:
    """Validation loss at :math:`\\theta_T` as a differentiable function of the shared values.

    Step ``t`` draws its dropout masks after :meth:`~hpo.core.problem.InnerProblem.seed_step`, as
    every backend does, so the reference and each finite-difference run train the same network.
    """
    rule = problem.rule
    params, buffers = problem.params, problem.buffers
    state = rule.init(params)
    with torch.random.fork_rng(devices=rng_devices(problem)):
        for t, batch in problem.batches():
            problem.seed_step(t)
            hyper = hyper_at_step(values, t, problem.horizon)
            params, state, buffers, _, _ = train_step(rule, problem.loss_fn, params, buffers, state, hyper, t, batch,
                                                      problem.grad_clip, seed=problem.seed)
    return validation_loss(problem.eval_fn, params, buffers, problem.val, problem.eval_batch_size)


def reverse_hypergradient(problem: InnerProblem, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Exact hypergradient by reverse-mode differentiation of :func:`unrolled_validation_loss`."""
    return grad(lambda v: unrolled_validation_loss(problem, v))(values)


def finite_difference_hypergradient(problem: InnerProblem, values: dict[str, Tensor], eps: float = 1e-6) -> dict[str, Tensor]:
    """Central finite differences of the validation loss, one value at a time."""
    out = {}
    with torch.no_grad():
        for name, v in values.items():
            g = torch.zeros_like(v, memory_format=torch.contiguous_format)
            flat = g.view(-1)  # every value of a (segments,) or (groups, segments) table in turn
            for j in range(v.numel()):
                plus = {k: w.clone(memory_format=torch.contiguous_format) for k, w in values.items()}
                minus = {k: w.clone(memory_format=torch.contiguous_format) for k, w in values.items()}
                plus[name].view(-1)[j] += eps
                minus[name].view(-1)[j] -= eps
                flat[j] = (unrolled_validation_loss(problem, plus) - unrolled_validation_loss(problem, minus)) / (2 * eps)
            out[name] = g
    return out
