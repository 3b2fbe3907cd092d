"""The inner step of the exact backends when every rank holds a shard of each minibatch.

With :math:`N` ranks and :math:`\\bar x = \\frac1N\\sum_r x^{(r)}` (one ``all_reduce`` of a flat
buffer, :meth:`hpo.runtime.distributed.Communicator.mean`):

- forward mode averages the gradient, the Hessian-tangent products of the ``k`` started columns,
  the loss and the floating-point buffers (BatchNorm running statistics) in **one** call per step,
  then runs the tangent update on the averages:

  .. math::  g_t = \\overline{g_t^{(r)}}, \\qquad H_t Z_t = \\overline{H_t^{(r)} Z_t}

- reverse mode averages the gradient in every plain step (forward pass and recomputation), and in
  the adjoint step splits :math:`F_t(\\theta, s, \\lambda) = \\mathrm{step}(\\theta, s, g_t(\\theta),
  \\lambda)` at :math:`g`: the VJP of the rule's step gives :math:`(\\bar\\theta, \\bar s, \\bar g,
  \\bar\\lambda)` on every rank alike, and the Hessian term is averaged:

  .. math::  a_t = \\bar\\theta + \\overline{\\bar g^\\top H_t^{(r)}}

BatchNorm uses each rank's own batch statistics in the forward pass (as ``DistributedDataParallel``
does); the running statistics are averaged over ranks after every step, so every rank keeps the
same buffers.  ``grad_clip`` and ``hz_clip`` clamp the averaged quantities, as one process would.
Without a communicator none of this runs: the single-process steps are
:func:`hpo.backends.forward.step_core` and :func:`hpo.backends.reverse_checkpointed.plain_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from hpo.core.data import Batch
from hpo.core.problem import Buffers, InnerProblem, LossFn
from hpo.core.step import StepOutput, loss_gradient, tree_clamp
from hpo.errors import ConfigError
from hpo.optimizers.base import Hyper, Params, State, UpdateRule
from hpo.optimizers.loss_hypers import loss_names
from hpo.runtime.distributed import Communicator


def refuse_parallel_curvature(problem: InnerProblem) -> None:
    """:class:`~hpo.errors.ConfigError` for a data-parallel run of a curvature rule (not supported yet).

    The Hutchinson estimate would need its own average over ranks (it is linear in the loss, so one
    more ``all_reduce`` would do); until that is written, such a run is refused in one line.
    """
    if problem.comm is not None and problem.rule.curvature is not None:
        raise ConfigError("optimizer", f"{problem.rule.name!r} uses a curvature estimate, which data-parallel "
                                       "runs do not support yet; run it in one process")


def float_keys(buffers: Buffers) -> list[str]:
    """Names of the floating-point buffers (running statistics; not ``num_batches_tracked``)."""
    return [n for n, v in buffers.items() if v.is_floating_point()]


def averaged(comm: Communicator, grads: Params, extra: Params, loss: Tensor,
             buffers: Buffers) -> tuple[Params, Params, Tensor, Buffers]:
    """Means over ranks of the gradient, ``extra`` (e.g. stacked Hessian-tangent products), the loss
    and the float buffers, all in one ``all_reduce`` (every tensor cast to the gradient's dtype)."""
    fk = float_keys(buffers)
    ref = next(iter(grads.values()))
    parts = [*grads.values(), *extra.values(), loss.to(ref.dtype), *(buffers[n].to(ref.dtype) for n in fk)]
    out = comm.mean(parts)
    i = 0
    g = dict(zip(grads, out[i:i + len(grads)]))
    i += len(grads)
    e = dict(zip(extra, out[i:i + len(extra)]))
    i += len(extra)
    mean_loss = out[i].to(loss.dtype)
    i += 1
    new_buffers = dict(buffers)
    for n, v in zip(fk, out[i:]):
        new_buffers[n] = v.to(buffers[n].dtype)
    return g, e, mean_loss, new_buffers


def parallel_step_core(comm: Communicator, tangent: Callable[..., Any], rule: UpdateRule, loss_fn: LossFn,
                       grad_clip: float | None, hz_clip: float | None, params: Params, buffers: Buffers,
                       opt_state: State, dp_k: Params, ds_k: State, direct: Hyper, hyper: Hyper, t: int, batch: Batch,
                       seed: int = 0) -> tuple[Params, State, Params, State, Tensor, Buffers]:
    """:func:`hpo.backends.forward.step_core` on this rank's shard, with one ``all_reduce`` per step.

    Two vmaps over the started columns: the first gives this rank's :math:`g^{(r)}` and
    :math:`H^{(r)} Z`; after the average, the second runs the rule's tangent update.
    """
    def loss_only(p: Params, h: Hyper) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, batch, h)
        return loss, (loss.detach(), new_buffers)

    grad_fn = grad(loss_only, has_aux=True)  # in the weights; its jvp in (p, h) adds a loss value's direct term

    def hvp_column(dp: Params, dh: Hyper) -> tuple[Params, Params, tuple[Tensor, Buffers]]:
        return jvp(grad_fn, (params, hyper), (dp, dh), has_aux=True)

    g_r, hz_r, (loss_r, buffers_r) = vmap(hvp_column, out_dims=(None, 0, None), randomness="same")(dp_k, direct)
    g, hz, loss, new_buffers = averaged(comm, g_r, hz_r, loss_r, buffers_r)
    g = tree_clamp(g, grad_clip)
    dg = tree_clamp(hz, hz_clip)
    if grad_clip is not None:
        dg = {n: dg[n] * (g[n].abs() < grad_clip) for n in dg}

    def column(dp: Params, ds: State, dg_: Params, dh: Hyper) -> tuple[Params, State, tuple[Params, State] | None]:
        primal, (new_dp, new_ds) = tangent(rule, params, opt_state, g, hyper, t, dp, ds, dg_, dh)
        return new_dp, new_ds, primal

    new_dp_k, new_ds_k, primal = vmap(column, out_dims=(0, 0, None))(dp_k, ds_k, dg, direct)
    new_params, new_opt = primal if primal is not None else rule.step(params, opt_state, g, hyper, t)
    return new_params, new_opt, new_dp_k, new_ds_k, loss, new_buffers


def parallel_plain_step(comm: Communicator, rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None,
                        params: Params, buffers: Buffers, opt_state: State, hyper: Hyper, t: int, batch: Batch,
                        seed: int = 0) -> StepOutput:
    """:func:`hpo.backends.reverse_checkpointed.plain_step` on this rank's shard: the gradient, loss
    and float buffers averaged in one ``all_reduce``, then the rule's step (no graph)."""
    with torch.no_grad():
        g_r, loss_r, buffers_r = loss_gradient(loss_fn, params, buffers, batch, hyper)
        g, _, loss, new_buffers = averaged(comm, g_r, {}, loss_r, buffers_r)
        g = tree_clamp(g, grad_clip)
        new_params, new_state = rule.step(params, opt_state, g, hyper, t)
        return StepOutput(new_params, new_state, new_buffers, loss, g)


def parallel_adjoint_step(comm: Communicator, rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None,
                          params: Params, buffers: Buffers, opt_state: State, hyper: Hyper, t: int, batch: Batch,
                          a_params: Params, a_state: State, seed: int = 0) -> tuple[Params, State, Hyper]:
    """:func:`hpo.backends.reverse_checkpointed.adjoint_step` on this rank's shard (module docstring).

    Two ``all_reduce`` calls: the gradient (the rule's step needs the averaged one) and the
    vector-Hessian product :math:`\\bar g^\\top H^{(r)}` together with the gradient's pullback to
    the loss's hyperparameters, :math:`\\bar g^\\top \\partial g^{(r)} / \\partial \\lambda` (zero for a
    loss without them).
    """
    loss_values = {n: hyper[n] for n in loss_names(rule)}  # what the gradient depends on (none for most losses)

    def shard_gradient(p: Params, lv: Hyper) -> Params:
        return loss_gradient(loss_fn, p, buffers, batch, {**hyper, **lv})[0]

    def rule_step(p: Params, s: State, g: Params, h: Hyper) -> tuple[Params, State]:
        return rule.step(p, s, tree_clamp(g, grad_clip), h, t)

    with torch.no_grad():
        g_r, pull_gradient = vjp(shard_gradient, params, loss_values)
        g = comm.mean_tree(g_r)
        _, pull_step = vjp(rule_step, params, opt_state, g, hyper)
        a_direct, a_s, a_g, h_bar = pull_step((a_params, a_state))
        vhp_r, h_loss_r = pull_gradient(a_g)
        both = comm.mean_tree({**{"p:" + n: v for n, v in vhp_r.items()}, **{"h:" + n: v for n, v in h_loss_r.items()}})
        return ({n: a_direct[n] + both["p:" + n] for n in a_direct}, a_s,
                {n: h_bar[n] + both["h:" + n] if n in loss_values else h_bar[n] for n in h_bar})
