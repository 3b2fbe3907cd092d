"""The plain inner step and the validation loss: written once, used by every method.

One inner step at step ``t`` on minibatch ``b_t`` with the hyperparameters of the segment
``t`` falls in:

.. math::

    g_t = \\operatorname{clamp}_c\\big(\\nabla_\\theta L(\\theta_t; b_t)\\big), \\qquad
    (\\theta_{t+1}, s_{t+1}) = \\mathrm{step}(\\theta_t, s_t, g_t, \\lambda_{\\mathrm{seg}(t)}, t)

(the clamp to ``[-c, c]`` only with ``grad_clip`` set).  The reference unroll, the baselines, the
greedy and truncated backends, the checkpointed reverse sweep and the retrain of rules without a
``torch.optim`` counterpart all call :func:`train_step`; the forward backends run the same
mathematics inside their tangent update.  :func:`validation_loss` is the differentiable, chunked
mean objective :math:`L_{val}(\\theta) = \\frac1n \\sum_c n_c \\ell(\\theta; b_c)` over the validation
chunks :math:`b_c` every hypergradient starts from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, final

from torch import Tensor
from torch.func import grad

from hpo.core.data import Batch, Rows, batch_size_of
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


def loss_gradient(loss_fn: LossFn, params: Params, buffers: Buffers, batch: Batch,
                  grad_clip: float | None = None) -> tuple[Params, Tensor, Buffers]:
    """``(g, loss, new_buffers)``: the (optionally clamped) minibatch gradient :math:`g_t`.

    Computed with :func:`torch.func.grad`, so it composes with ``vjp``/``jvp`` of an outer
    transform (the reverse sweep differentiates through it).  The loss is returned detached.
    """
    def loss_only(p: Params) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, batch)
        return loss, (loss.detach(), new_buffers)

    g, (loss, new_buffers) = grad(loss_only, has_aux=True)(params)
    return tree_clamp(g, grad_clip), loss, new_buffers


def train_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
               hyper: Hyper, t: int, batch: Batch, grad_clip: float | None = None) -> StepOutput:
    """One plain inner step (see the module docstring); pure and out of place."""
    g, loss, new_buffers = loss_gradient(loss_fn, params, buffers, batch, grad_clip)
    new_params, new_state = rule.step(params, opt_state, g, hyper, t)
    return StepOutput(new_params, new_state, new_buffers, loss, g)


def validation_loss(eval_fn: EvalFn, params: Params, buffers: Buffers, rows: Rows, chunk: int = 4096) -> Tensor:
    """Mean eval-mode objective over ``rows`` in chunks of ``chunk``; differentiable in ``params``."""
    total = next(iter(params.values())).new_zeros(())
    for batch in rows.chunks(chunk):
        loss, _ = eval_fn(params, buffers, batch, False)
        total = total + loss * batch_size_of(batch)
    return total / len(rows)
