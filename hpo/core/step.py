"""The plain inner step and the validation loss: written once, used by every method.

One inner step at step ``t`` on minibatch ``(x_t, y_t)`` with the hyperparameters of the segment
``t`` falls in:

.. math::

    g_t = \\operatorname{clamp}_c\\big(\\nabla_\\theta L(\\theta_t; x_t, y_t)\\big), \\qquad
    (\\theta_{t+1}, s_{t+1}) = \\mathrm{step}(\\theta_t, s_t, g_t, \\lambda_{\\mathrm{seg}(t)}, t)

(the clamp to ``[-c, c]`` only with ``grad_clip`` set).  The reference unroll, the baselines, the
greedy and truncated backends, the checkpointed reverse sweep and the retrain of rules without a
``torch.optim`` counterpart all call :func:`train_step`; the forward backends run the same
mathematics inside their tangent update.  :func:`validation_loss` is the differentiable, chunked
mean loss :math:`L_{val}(\\theta) = \\frac1n \\sum_i \\ell(\\theta; x_i, y_i)` every hypergradient
starts from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, final

from torch import Tensor
from torch.func import grad

from hpo.core.problem import Buffers, EvalFn, LossFn
from hpo.core.schedule import segment_index
from hpo.optimizers.base import Hyper, Params, State, UpdateRule


@final
class StepOutput(NamedTuple):
    """What one plain inner step returns: new weights, optimizer state and buffers, the loss and gradient."""

    params: Params
    opt_state: State
    buffers: Buffers
    loss: Tensor
    grads: Params


def hyper_at_step(values: Mapping[str, Tensor], t: int, horizon: int) -> Hyper:
    """Every type's value at step ``t``: ``values[name][..., floor(n t / T)]`` with ``n`` segments.

    A 0-d tensor for a type shared over all parameters (a ``(n,)`` table), a ``(groups,)`` vector
    for a grouped type (a ``(groups, n)`` table; see :mod:`hpo.optimizers.grouped`).
    """
    return {k: v[..., segment_index(t, horizon, v.shape[-1])] for k, v in values.items()}


def tree_clamp(tree: Params, c: float | None) -> Params:
    """Clamp every tensor of ``tree`` to ``[-c, c]`` (identity when ``c`` is None)."""
    if c is None:
        return tree
    return {k: v.clamp(-c, c) for k, v in tree.items()}


def loss_gradient(loss_fn: LossFn, params: Params, buffers: Buffers, x: Tensor, y: Tensor,
                  grad_clip: float | None = None) -> tuple[Params, Tensor, Buffers]:
    """``(g, loss, new_buffers)``: the (optionally clamped) minibatch gradient :math:`g_t`.

    Computed with :func:`torch.func.grad`, so it composes with ``vjp``/``jvp`` of an outer
    transform (the reverse sweep differentiates through it).  The loss is returned detached.
    """
    def loss_only(p: Params) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, x, y)
        return loss, (loss.detach(), new_buffers)

    g, (loss, new_buffers) = grad(loss_only, has_aux=True)(params)
    return tree_clamp(g, grad_clip), loss, new_buffers


def train_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
               hyper: Hyper, t: int, x: Tensor, y: Tensor, grad_clip: float | None = None) -> StepOutput:
    """One plain inner step (see the module docstring); pure and out of place."""
    g, loss, new_buffers = loss_gradient(loss_fn, params, buffers, x, y, grad_clip)
    new_params, new_state = rule.step(params, opt_state, g, hyper, t)
    return StepOutput(new_params, new_state, new_buffers, loss, g)


def validation_loss(eval_fn: EvalFn, params: Params, buffers: Buffers, x: Tensor, y: Tensor,
                    chunk: int = 4096) -> Tensor:
    """Mean eval-mode loss over ``(x, y)`` in chunks of ``chunk``; differentiable in ``params``."""
    n = x.shape[0]
    total = next(iter(params.values())).new_zeros(())
    for i in range(0, n, chunk):
        loss, _ = eval_fn(params, buffers, x[i:i + chunk], y[i:i + chunk])
        total = total + loss * (min(n, i + chunk) - i)
    return total / n
