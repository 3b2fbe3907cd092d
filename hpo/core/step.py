"""The plain inner step and the validation loss: written once, used by every method.

One inner step at step ``t`` on minibatch ``b_t`` with the hyperparameters of the segment
``t`` falls in:

.. math::

    g_t = \\operatorname{clamp}_c\\big(\\nabla_\\theta L(\\theta_t; b_t, \\lambda_{\\mathrm{seg}(t)})\\big), \\qquad
    (\\theta_{t+1}, s_{t+1}) = \\mathrm{step}(\\theta_t, s_t, g_t, \\lambda_{\\mathrm{seg}(t)}, t)

(the clamp to ``[-c, c]`` only with ``grad_clip`` set).  The reference unroll, the baselines, the
greedy and truncated backends, the checkpointed reverse sweep and the retrain of rules without a
``torch.optim`` counterpart all call :func:`train_step`; the forward backends run the same
mathematics inside their tangent update.  :func:`validation_loss` is the differentiable, chunked
mean objective :math:`L_{val}(\\theta) = \\frac1n \\sum_c n_c \\ell(\\theta; b_c)` over the validation
chunks :math:`b_c` every hypergradient starts from.

**Curvature rules.**  When ``rule.curvature`` is set and due at step ``t``, the step also computes
the Hutchinson estimate of the Hessian's diagonal on the same minibatch,

.. math::  \\hat D_t = \\frac1P \\sum_i z_i \\odot \\big(\\nabla^2_\\theta L(\\theta_t; b_t)\\, z_i\\big),

with Rademacher ``z_i`` from :func:`probe_generator` ``(seed, t)`` (so the reverse sweep's replay,
the reference unroll and the forward pass draw the same probes), and passes it as
``rule.step(..., hess_diag=D)``.  The gradient and the ``P`` Hessian-vector products come from one
forward-over-reverse ``jvp(grad)`` vmapped over the probes (with ``randomness="same"``: every probe
sees the step's one dropout mask); the gradient is its primal output.
Nothing of this runs for a rule without ``curvature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, final

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

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


def loss_gradient(loss_fn: LossFn, params: Params, buffers: Buffers, batch: Batch, hyper: Hyper,
                  grad_clip: float | None = None) -> tuple[Params, Tensor, Buffers]:
    """``(g, loss, new_buffers)``: the (optionally clamped) minibatch gradient :math:`g_t`.

    Computed with :func:`torch.func.grad`, so it composes with ``vjp``/``jvp`` of an outer
    transform (the reverse sweep differentiates through it, also with respect to the loss's
    hyperparameters in ``hyper``).  The loss is returned detached.
    """
    def loss_only(p: Params) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, batch, hyper)
        return loss, (loss.detach(), new_buffers)

    g, (loss, new_buffers) = grad(loss_only, has_aux=True)(params)
    return tree_clamp(g, grad_clip), loss, new_buffers


def probe_generator(device: torch.device | str, seed: int, t: int) -> torch.Generator:
    """The generator of step ``t``'s Rademacher probes in a run seeded ``seed`` (never the global RNG)."""
    return torch.Generator(device=device).manual_seed((int(seed) * 7 + 54321) * 1_000_003 + int(t))


def rademacher_probes(params: Params, seed: int, t: int, probes: int) -> Params:
    """``probes`` Rademacher vectors shaped like ``params``, stacked on a leading dim: ``z[k][i]`` is probe ``i``.

    Drawn in the order of ``params`` from :func:`probe_generator`, on the weights' device and dtype,
    so the same ``(seed, t)`` always gives the same probes.

    Example:
        >>> z = rademacher_probes({"w": torch.zeros(2, 3)}, seed=0, t=5, probes=2)
        >>> z["w"].shape, bool((z["w"].abs() == 1).all())
        (torch.Size([2, 2, 3]), True)
    """
    ref = next(iter(params.values()))
    gen = probe_generator(ref.device, seed, t)
    return {k: torch.randint(0, 2, (probes, *v.shape), generator=gen, device=v.device).to(v.dtype) * 2 - 1
            for k, v in params.items()}


def gradient_and_curvature(loss_fn: LossFn, params: Params, buffers: Buffers, batch: Batch, hyper: Hyper,
                           z: Params) -> tuple[Params, Params, tuple[Tensor, Buffers]]:
    """``(g, D, (loss, new_buffers))``: the gradient and :math:`D = \\mathrm{mean}_i\\, z_i \\odot H z_i`.

    ``z`` holds the probes stacked on a leading dim (:func:`rademacher_probes`).  One
    forward-over-reverse ``jvp(grad)`` vmapped over the probes: ``g`` is its (unbatched) primal
    output.  A pure function of ``params``, so the backends differentiate through it.
    """
    def loss_only(p: Params) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, batch, hyper)
        return loss, (loss.detach(), new_buffers)

    def probe(zi: Params) -> tuple[Params, Params, tuple[Tensor, Buffers]]:
        return jvp(grad(loss_only, has_aux=True), (params,), (zi,), has_aux=True)

    g, hz, aux = vmap(probe, out_dims=(None, 0, None), randomness="same")(z)  # one dropout mask for all probes
    return g, {k: (z[k] * hz[k]).mean(0) for k in g}, aux


def curvature_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
                   hyper: Hyper, t: int, batch: Batch, grad_clip: float | None,
                   seed: int) -> StepOutput:
    """:func:`train_step` for a rule with ``curvature``: the estimate (when due) passed as ``hess_diag``."""
    curv = rule.curvature
    assert curv is not None
    if curv.due(t):
        z = rademacher_probes(params, seed, t, curv.probes)
        g, d, (loss, new_buffers) = gradient_and_curvature(loss_fn, params, buffers, batch, hyper, z)
        g = tree_clamp(g, grad_clip)
    else:
        g, loss, new_buffers = loss_gradient(loss_fn, params, buffers, batch, hyper, grad_clip)
        d = None
    new_params, new_state = rule.step(params, opt_state, g, hyper, t, hess_diag=d)  # type: ignore[call-arg]
    return StepOutput(new_params, new_state, new_buffers, loss, g)


def train_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
               hyper: Hyper, t: int, batch: Batch, grad_clip: float | None = None,
               seed: int = 0) -> StepOutput:
    """One plain inner step (see the module docstring); pure and out of place.

    ``seed`` (the run's seed) only seeds a curvature rule's probes; a rule without ``curvature``
    takes the plain path, unchanged.
    """
    if rule.curvature is not None:
        return curvature_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip, seed)
    g, loss, new_buffers = loss_gradient(loss_fn, params, buffers, batch, hyper, grad_clip)
    new_params, new_state = rule.step(params, opt_state, g, hyper, t)
    return StepOutput(new_params, new_state, new_buffers, loss, g)


def autograd_train_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
                        hyper: Hyper, t: int, batch: Batch, grad_clip: float | None = None) -> StepOutput:
    """:func:`train_step` for a rule without ``curvature``, outside any ``torch.func`` transform: bit-identical, cheaper.

    :math:`g_t = \\operatorname{clamp}_c(\\nabla_\\theta L_t(\\theta_t))` by one ``torch.autograd.grad``
    on detached leaves, then ``rule.step`` without a graph: the same kernels in the same order as
    :func:`train_step`, without the transform's per-operation dispatch (about half of a small
    model's step).  For plain training (the forward pass of reverse mode, search trials).
    """
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        loss, new_buffers = loss_fn(leaves, buffers, batch, hyper)
        g = torch.autograd.grad(loss, tuple(leaves.values()))
    with torch.no_grad():
        grads = tree_clamp(dict(zip(leaves, g)), grad_clip)
        new_params, new_state = rule.step(params, opt_state, grads, hyper, t)
    return StepOutput(new_params, new_state, new_buffers, loss.detach(), grads)


def plain_train_step(rule: UpdateRule, loss_fn: LossFn, params: Params, buffers: Buffers, opt_state: State,
                     hyper: Hyper, t: int, batch: Batch, grad_clip: float | None = None, seed: int = 0) -> StepOutput:
    """A training step outside any transform: :func:`autograd_train_step` for a rule without
    ``curvature``, else :func:`train_step` (same arguments, same result)."""
    if rule.curvature is None:
        return autograd_train_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip)
    return train_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip, seed)


def validation_loss(eval_fn: EvalFn, params: Params, buffers: Buffers, rows: Rows, chunk: int = 4096) -> Tensor:
    """Mean eval-mode objective over ``rows`` in chunks of ``chunk``; differentiable in ``params``."""
    total = next(iter(params.values())).new_zeros(())
    for batch in rows.chunks(chunk):
        loss, _ = eval_fn(params, buffers, batch, False)
        total = total + loss * batch_size_of(batch)
    return total / len(rows)
