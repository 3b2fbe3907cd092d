"""Forward-mode (non-greedy) hypergradients: tangents carried through the whole inner run.

With :math:`Z_t = d\\theta_t/d\\lambda` and :math:`S_t = d s_t/d\\lambda` (optimizer state), one
column per shared value, each inner step updates

.. math::

    (Z_{t+1}, S_{t+1}) = \\mathrm{JVP}_{\\mathrm{step}}\\big((\\theta_t, s_t, g_t, \\lambda_t);
                         (Z_t, S_t, H_t Z_t, [d\\lambda_t])\\big)

where :math:`H_t Z_t` is a Hessian-vector product (forward-over-reverse ``jvp(grad(loss))``) and
:math:`[d\\lambda_t]` is one-hot in the column of each type's active segment (for a grouped type,
:math:`[d\\lambda_t]` is the ``(groups,)`` unit vector of the column's group, zero elsewhere; see
:class:`~hpo.backends.columns.ColumnLayout`).  For SGD-momentum this
is :math:`C_{t+1} = \\mu C_t + (H + \\mathrm{wd}) Z_t + [d\\mu] v_t + [d\\mathrm{wd}] \\theta_t`,
:math:`Z_{t+1} = Z_t - \\eta C_{t+1} - [d\\eta] v_{t+1}`.  The hypergradient is
:math:`\\nabla_\\theta L_{val}(\\theta_T)^\\top Z_T`.  Memory is constant in the horizon.

All started columns go through one :func:`torch.func.vmap` call per step.  ``forward-manual``
takes the tangent update from the rule's hand-derived ``tangent``; ``forward-jvp`` derives it with
:func:`torch.func.jvp`.  They differ in nothing else.

A curvature rule (``rule.curvature`` set, see :mod:`hpo.optimizers.base`) on a step where the
estimate is due also needs the estimate's tangent,
:math:`\\dot D = \\mathrm{mean}_i\\, z_i \\odot \\partial_\\theta(H z_i)\\, Z_t` (a third derivative
of the loss): the column's ``jvp`` is taken of :func:`hpo.core.step.gradient_and_curvature`
instead of the gradient alone, and ``(D, \\dot D)`` enter ``jvp(rule.step)``.  ``forward-manual``
refuses such rules: a hand-derived tangent has no term for :math:`\\dot D`.
"""

from __future__ import annotations

from abc import ABC
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, final

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from hpo.backends.columns import ColumnLayout
from hpo.backends.data_parallel import parallel_step_core, refuse_parallel_curvature
from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import Buffers, InnerProblem, LossFn
from hpo.core.schedule import Schedule
from hpo.core.step import gradient_and_curvature, hyper_at_step, rademacher_probes, tree_clamp, validation_loss
from hpo.errors import ConfigError
from hpo.optimizers.base import Hyper, Params, State, UpdateRule
from hpo.optimizers.loss_hypers import loss_names

#: ``(rule, p, s, g, h, t, dp, ds, dg, dh, curv) -> (primal step output or None, (new dp, new ds))``;
#: ``curv`` is ``(D, dD)``, a curvature rule's estimate and its tangent on a step where it is due, else None.
TangentFn = Callable[
    [UpdateRule, Params, State, Params, Hyper, int, Params, State, Params, Hyper, "tuple[Params, Params] | None"],
    tuple[tuple[Params, State] | None, tuple[Params, State]],
]


@final
@dataclass(frozen=True)
class Phase:
    """What is constant between two segment starts: started columns, hyperparameters, one-hot tangents."""

    start: int
    started: int
    hyper: Hyper
    direct: dict[str, Tensor]


@final
@dataclass(frozen=True)
class ForwardState:
    """Inner state plus the tangents of the weights and of the optimizer state (leading dim = column).

    Only the started columns are stored (rows ``0..started-1`` in layout order): a column is zero
    until its segment starts, so rows are appended, as zeros, once per phase, and no step copies
    the unstarted ones.

    ``phases`` (built once in ``init``, on the device) hold per-phase constants so that a step does
    no host-to-device copies and no per-step Python bookkeeping over columns.
    """

    inner: InnerState
    d_params: Params
    d_state: State
    layout: ColumnLayout
    values: dict[str, Tensor]
    phases: tuple[Phase, ...] = ()
    core: Callable[..., Any] | None = None

    def phase(self, t: int) -> Phase:
        """The phase that step ``t`` falls in."""
        return self.phases[bisect_right(self.phases, t, key=lambda p: p.start) - 1]


def _manual_tangent(rule: UpdateRule, p: Params, s: State, g: Params, h: Hyper, t: int,
                    dp: Params, ds: State, dg: Params, dh: Hyper,
                    curv: tuple[Params, Params] | None = None) -> tuple[None, tuple[Params, State]]:
    """The rule's hand-derived tangent; the primal step is left to the caller (curvature rules are refused)."""
    return None, rule.tangent(p, s, g, h, t, dp, ds, dg, dh)


def _jvp_tangent(rule: UpdateRule, p: Params, s: State, g: Params, h: Hyper, t: int,
                 dp: Params, ds: State, dg: Params, dh: Hyper,
                 curv: tuple[Params, Params] | None = None) -> tuple[tuple[Params, State], tuple[Params, State]]:
    """``torch.func.jvp`` of ``rule.step``: the primal step (unbatched under vmap) and its tangent.

    The primal output is returned so the caller need not run ``rule.step`` a second time.  For a
    curvature rule, ``curv = (D, dD)`` is one more input of the step (``hess_diag``) with its
    tangent; None on the steps where no estimate is due.
    """
    if rule.curvature is None:
        def step(p_: Params, s_: State, g_: Params, h_: Hyper) -> tuple[Params, State]:
            return rule.step(p_, s_, g_, h_, t)

        return jvp(step, (p, s, g, h), (dp, ds, dg, dh))
    if curv is None:
        def stale(p_: Params, s_: State, g_: Params, h_: Hyper) -> tuple[Params, State]:
            return rule.step(p_, s_, g_, h_, t, hess_diag=None)  # type: ignore[call-arg]

        return jvp(stale, (p, s, g, h), (dp, ds, dg, dh))

    def fresh(p_: Params, s_: State, g_: Params, h_: Hyper, d_: Params) -> tuple[Params, State]:
        return rule.step(p_, s_, g_, h_, t, hess_diag=d_)  # type: ignore[call-arg]

    return jvp(fresh, (p, s, g, h, curv[0]), (dp, ds, dg, dh, curv[1]))


def _grow_rows(x: Tensor, k: int) -> Tensor:
    """``x`` with zero rows appended up to ``k`` rows (a newly started column's tangent is zero)."""
    return x if x.shape[0] == k else torch.cat([x, x.new_zeros((k - x.shape[0], *x.shape[1:]))], dim=0)


def build_phases(layout: ColumnLayout, values: dict[str, Tensor]) -> tuple[Phase, ...]:
    """One :class:`Phase` per distinct segment start, with its tensors already on ``values``' device.

    Starts at or after the horizon (more values than steps) begin no phase.
    """
    ref = next(iter(values.values()))
    return tuple(Phase(s, layout.started(s), hyper_at_step(values, s, layout.horizon), layout.direct(s, ref.dtype, ref.device))
                 for s in layout.phase_starts() if s < layout.horizon)


def step_core(tangent: TangentFn, rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, hz_clip: float | None,
              params: Params, buffers: Buffers, opt_state: State, dp_k: Params, ds_k: State, direct: Hyper,
              hyper: Hyper, t: int, batch: Batch,
              seed: int = 0) -> tuple[Params, State, Params, State, Tensor, Buffers]:
    """One primal step and the tangent update of the ``k`` started columns (one vmap over columns).

    Returns ``(params, opt_state, d_params[:k], d_state[:k], loss, buffers)`` after the step.  A pure
    function of tensors (the callables and floats are configuration), so it can be ``torch.compile``d.
    ``seed`` seeds a curvature rule's probes (:func:`hpo.core.step.rademacher_probes`).
    """
    curvature = rule.curvature
    z = rademacher_probes(params, seed, t, curvature.probes) if curvature is not None and curvature.due(t) else None

    def with_curvature(p: Params, h: Hyper) -> tuple[tuple[Params, Params], tuple[Tensor, Buffers]]:
        assert z is not None
        g_, d_, aux_ = gradient_and_curvature(loss_fn, p, buffers, batch, h, z)
        return (g_, d_), aux_

    def loss_only(p: Params, h: Hyper) -> tuple[Tensor, tuple[Tensor, Buffers]]:
        loss, new_buffers = loss_fn(p, buffers, batch, h)
        return loss, (loss.detach(), new_buffers)

    grad_fn = grad(loss_only, has_aux=True)  # in the weights; its jvp in (p, h) adds a loss value's direct term

    def column(dp: Params, ds: State, dh: Hyper) -> tuple[Params, Params, State, tuple[Tensor, Buffers],
                                                          tuple[Params, State] | None]:
        curv: tuple[Params, Params] | None = None
        if z is None:
            g, dg, aux = jvp(grad_fn, (params, hyper), (dp, dh), has_aux=True)
        else:
            (g, d), (dg, dd), aux = jvp(with_curvature, (params, hyper), (dp, dh), has_aux=True)
            curv = (d, dd)
        g = tree_clamp(g, grad_clip)
        dg = tree_clamp(dg, hz_clip)
        if grad_clip is not None:
            dg = {n: dg[n] * (g[n].abs() < grad_clip) for n in dg}
        primal, (new_dp, new_ds) = tangent(rule, params, opt_state, g, hyper, t, dp, ds, dg, dh, curv)
        return g, new_dp, new_ds, aux, primal

    # randomness="same": every column sees the one dropout mask the primal step draws (as an unbatched call would)
    batched = vmap(column, out_dims=(None, 0, 0, None, None), randomness="same")
    grads, new_dp_k, new_ds_k, (loss, new_buffers), primal = batched(dp_k, ds_k, direct)
    new_params, new_opt = primal if primal is not None else rule.step(params, opt_state, grads, hyper, t)
    return new_params, new_opt, new_dp_k, new_ds_k, loss, new_buffers


class ForwardModeBackend(HypergradientBackend[ForwardState], ABC):
    """Forward-mode hypergradients over the whole horizon, all columns batched with vmap.

    ``compile`` names a ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` for a quick
    capture check) to compile the per-step :func:`step_core`; None (default) runs it eagerly.  The
    compiled step computes the same mathematics; expect one compilation per distinct number of
    started columns until the column dimension is marked dynamic.
    """

    name: ClassVar[str] = "forward"
    supports_hz_clip: ClassVar[bool] = True
    supports_data_parallel: ClassVar[bool] = True
    tangent_fn: ClassVar[TangentFn]

    def __init__(self, compile: str | None = None) -> None:
        self.compile = compile

    def init(self, problem: InnerProblem, schedule: Schedule) -> ForwardState:
        """Zero tangents for every column; the primal state of step 0."""
        refuse_parallel_curvature(problem)
        p0 = problem.params
        rule = problem.rule
        layout = ColumnLayout.build(schedule.counts, problem.horizon, schedule.group_counts)
        k = layout.started(0)
        opt0 = rule.init(p0)
        dp = {n: p0[n].new_zeros((k, *p0[n].shape)) for n in p0}
        ds = {sk: {n: v.new_zeros((k, *v.shape)) for n, v in sv.items()} for sk, sv in opt0.items()}
        ref = next(iter(p0.values()))
        values = schedule.values_like(ref)
        loss0 = ref.new_zeros(())
        if problem.comm is not None:  # data-parallel: one all_reduce per step (backends/data_parallel.py)
            if self.compile is not None:
                raise ConfigError("compile", "a data-parallel run steps eagerly; leave it off")
            core: Callable[..., Any] = partial(parallel_step_core, problem.comm)
        else:
            core = step_core if self.compile is None else torch.compile(step_core, backend=self.compile)
        return ForwardState(InnerState(p0, problem.buffers, opt0, 0, loss0), dp, ds, layout, values,
                            build_phases(layout, values), core)

    def inner(self, state: ForwardState) -> InnerState:
        """The primal inner state."""
        return state.inner

    def finite(self, state: ForwardState) -> Tensor:
        """Whether the last loss and every weight tangent :math:`Z_t` are finite (one 0-d bool tensor)."""
        checks = [torch.isfinite(state.inner.loss).all()]
        checks += [torch.isfinite(v).all() for v in state.d_params.values()]
        return torch.stack(checks).all()

    def step(self, problem: InnerProblem, schedule: Schedule, state: ForwardState, t: int, batch: Batch) -> ForwardState:
        """One SGD/Adam/... step of the weights and of every started tangent column."""
        inner = state.inner
        phase = state.phase(t)
        k = phase.started
        core = state.core or step_core
        dp_k = {n: _grow_rows(v, k) for n, v in state.d_params.items()}
        ds_k = {sk: {n: _grow_rows(v, k) for n, v in sv.items()} for sk, sv in state.d_state.items()}
        new_params, new_opt, d_params, d_state, loss, new_buffers = core(
            type(self).tangent_fn, problem.rule, problem.loss_fn, problem.grad_clip, problem.hz_clip,
            inner.params, inner.buffers, inner.opt_state, dp_k, ds_k, phase.direct, phase.hyper, t, batch,
            seed=problem.seed)
        return replace(state, inner=InnerState(new_params, new_buffers, new_opt, t + 1, loss), d_params=d_params,
                       d_state=d_state)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: ForwardState) -> HypergradResult:
        """:math:`\\nabla_\\theta L_{val}(\\theta_T)^\\top Z_T`, scattered to per-type vectors."""
        inner = state.inner
        params, buffers = inner.params, inner.buffers
        chunk = problem.eval_batch_size
        g_val = grad(lambda p: validation_loss(problem.eval_fn, p, buffers, problem.val, chunk))(params)
        started = sum((state.d_params[k].flatten(1) @ g_val[k].flatten()) for k in params)
        per_col = _grow_rows(started, state.layout.size)  # columns that never started have zero tangents
        loss, acc = problem.evaluate(params, buffers)
        return HypergradResult(
            hypergrad=state.layout.to_types(per_col),
            val_loss=float(loss),
            val_acc=float(acc),
            steps=inner.t,
        )


@final
class ForwardManualBackend(ForwardModeBackend):
    """``forward-manual``: tangent update from the rule's hand-derived ``tangent``."""

    name = "forward-manual"
    tangent_fn = staticmethod(_manual_tangent)

    def check_rule(self, rule: UpdateRule) -> None:
        """The rule must carry a hand-derived tangent and ask for no curvature estimate."""
        if rule.curvature is not None:
            raise ValueError(f"optimizer {rule.name!r} uses a curvature estimate, whose derivative a hand-derived "
                             "tangent does not carry; use forward-jvp or reverse-checkpointed")
        if loss_names(rule):
            raise ValueError(f"the loss hyperparameters {', '.join(loss_names(rule))} enter the gradient, whose "
                             "derivative a hand-derived tangent does not carry; use forward-jvp or reverse-checkpointed")
        if not rule.hand_tangent:
            raise ValueError(f"optimizer {rule.name!r} has no hand-derived tangent; use the forward-jvp backend")

    def init(self, problem: InnerProblem, schedule: Schedule) -> ForwardState:
        """As :meth:`ForwardModeBackend.init`; the rule must carry a hand-derived tangent."""
        self.check_rule(problem.rule)
        return super().init(problem, schedule)


@final
class ForwardJvpBackend(ForwardModeBackend):
    """``forward-jvp``: tangent update derived from the rule's ``step`` with ``torch.func.jvp``."""

    name = "forward-jvp"
    tangent_fn = staticmethod(_jvp_tangent)
