"""Exact reverse-mode hypergradients over the whole horizon, with checkpoints every k steps.

Write one inner step as :math:`s_{t+1} = F_t(s_t, \\lambda_t)` with :math:`s = (\\theta,` optimizer
state) and the gradient :math:`g_t = \\nabla L_t(\\theta_t)` computed inside :math:`F_t` on minibatch
``t``.  The adjoint :math:`a_t = \\partial L_{val} / \\partial s_t` runs backwards from
:math:`a_T = (\\nabla_\\theta L_{val}(\\theta_T), 0)`:

.. math::

    (a_t, \\bar\\lambda_t) = \\mathrm{VJP}_{F_t}(s_t, \\lambda_t)\\,[a_{t+1}], \\qquad
    \\frac{\\partial L_{val}}{\\partial \\lambda_{name, j}} = \\sum_{t:\\ \\mathrm{seg}(t) = j} \\bar\\lambda_{t, name}

(for a grouped type :math:`\\bar\\lambda_{t, name}` is a ``(groups,)`` vector and the sum fills
column ``j`` of the ``(groups, segments)`` table).

:func:`torch.func.vjp` of the whole step (:func:`hpo.core.step.train_step`, whose gradient is a
:func:`torch.func.grad`) gives both; the Hessian term comes from reverse-over-reverse, so any update
rule works with nothing derived by hand, and ``grad_clip`` is differentiated as the clamp it is.

The forward pass runs plain steps and keeps :math:`s_t` (with the BatchNorm buffers) every ``k``
steps.  The reverse sweep takes the segments ``[a, b)`` between checkpoints from the last to the
first, recomputes :math:`s_a, \\dots, s_{b-1}` from the checkpoint on ``problem.batch(t)``, then
steps the adjoint from ``b - 1`` down to ``a``.  Every step, forward, replayed or adjoint, first
seeds the global RNG with :meth:`~hpo.core.problem.InnerProblem.seed_step` (as
:func:`hpo.core.backend.run_inner` does), so dropout masks are those of the forward pass, exactly;
the sweep leaves the global RNG as it found it.
Memory holds :math:`T/k + k` states (``k = sqrt(T)`` by default); the cost is one plain pass, one
recomputation and ``T`` vector-Jacobian products of a step, about 4x a plain step whatever the
number of shared values (measured on a CPU: 3.8x to 4.4x for LeNet; a 15k-weight MLP, where
``torch.func``'s dispatch overhead dominates, 7x to 9x eager and 2.7x to 2.9x with
``compile="inductor"``; see ``docs/backend-choice.md``).  BatchNorm statistics are replayed with the states, never differentiated.
On a GPU, nondeterministic kernels can make the replay differ from the forward pass in the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar, final

import torch
from torch import Tensor
from torch.func import grad, vjp

from hpo.backends.data_parallel import parallel_adjoint_step, parallel_plain_step, refuse_parallel_curvature
from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import Buffers, InnerProblem, LossFn
from hpo.core.schedule import Schedule, segment_indices
from hpo.core.step import StepOutput, hyper_at_step, train_step, validation_loss
from hpo.errors import ConfigError
from hpo.optimizers.base import Hyper, Params, State, UpdateRule
from hpo.runtime.distributed import Communicator


@final
@dataclass(frozen=True)
class Checkpoint:
    """:math:`s_t`: weights, optimizer state and buffers before step ``t`` (the RNG needs no saving:
    step ``t`` reseeds it, :meth:`~hpo.core.problem.InnerProblem.seed_step`)."""

    t: int
    params: Params
    opt_state: State
    buffers: Buffers


@final
@dataclass(frozen=True)
class StepFunctions:
    """The plain step and the adjoint step, eager or ``torch.compile``d (built once per run)."""

    plain: Callable[..., StepOutput]
    adjoint: Callable[..., tuple[Params, State, Hyper]]


@final
@dataclass(frozen=True)
class CheckpointedState:
    """The primal inner state, the schedule's values and the checkpoints stored so far (by step)."""

    inner: InnerState
    values: dict[str, Tensor]
    every: int
    checkpoints: tuple[Checkpoint, ...]
    functions: StepFunctions


def checkpoint_interval(every: int | None, horizon: int) -> int:
    """``every``, or :math:`\\max(1, \\mathrm{round}(\\sqrt{T}))` when None: minimises :math:`T/k + k`."""
    return max(1, round(math.sqrt(horizon))) if every is None else every


def plain_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params, buffers: Buffers,
               opt_state: State, hyper: Hyper, t: int, batch: Batch, seed: int = 0) -> StepOutput:
    """:func:`hpo.core.step.train_step` without a graph: the forward pass and the recomputation."""
    with torch.no_grad():
        return train_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip, seed)


def adjoint_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params, buffers: Buffers,
                 opt_state: State, hyper: Hyper, t: int, batch: Batch, a_params: Params,
                 a_state: State, seed: int = 0) -> tuple[Params, State, Hyper]:
    """:math:`(a_t, \\bar\\lambda_t) = \\mathrm{VJP}_{F_t}(s_t, \\lambda_t)[a_{t+1}]` with
    :math:`F_t: (\\theta_t, s_t, \\lambda_t) \\mapsto (\\theta_{t+1}, s_{t+1})`, buffers held constant.

    Runs under ``no_grad``: the transforms inside still differentiate, but no outer graph links one
    step's adjoint to the next (which would keep every step's graph alive).  For a curvature rule
    the step includes the Hutchinson estimate (probes of ``(seed, t)``), so the VJP goes through its
    ``jvp(grad)``: a third derivative of the loss.
    """
    def f(p: Params, s: State, h: Hyper) -> tuple[Params, State]:
        out = train_step(rule, loss_fn, p, buffers, s, h, t, batch, grad_clip, seed)
        return out.params, out.opt_state

    with torch.no_grad():
        _, pullback = vjp(f, params, opt_state, hyper)
        return pullback((a_params, a_state))


def all_finite(trees: list[dict]) -> Tensor:
    """0-d bool tensor: whether every tensor in the (nested) dicts is finite; no host sync."""
    flags = []
    for tree in trees:
        for v in tree.values():
            flags.append(all_finite([v]) if isinstance(v, dict) else torch.isfinite(v).all())
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


@final
class ReverseCheckpointedBackend(HypergradientBackend[CheckpointedState]):
    """``reverse-checkpointed``: exact reverse mode over the whole horizon, checkpoints every ``every`` steps.

    ``every`` is the checkpoint interval k (None: :math:`\\mathrm{round}(\\sqrt{T})`).  ``compile``
    names a ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` for a quick capture check)
    for the plain and the adjoint step; None (default) runs them eagerly.  Under ``inductor``,
    random ops (dropout) are compiled with ``fallback_random`` so they draw from the global RNG as
    eager code does and the replay sees the same masks.

    Example:
        >>> backend = ReverseCheckpointedBackend()          # k = round(sqrt(T))
        >>> backend = ReverseCheckpointedBackend(every=50)  # a checkpoint every 50 steps
    """

    name: ClassVar[str] = "reverse-checkpointed"
    supports_data_parallel: ClassVar[bool] = True

    def __init__(self, every: int | None = None, compile: str | None = None) -> None:
        if every is not None and every < 1:
            raise ConfigError("every", f"must be at least 1, got {every}")
        self.every = every
        self.compile = compile

    def functions(self, comm: Communicator | None = None) -> StepFunctions:
        """The step functions, compiled with ``self.compile`` if set; data-parallel ones with ``comm``."""
        if comm is not None:  # backends/data_parallel.py: the gradient and vector-Hessian products averaged
            if self.compile is not None:
                raise ConfigError("compile", "a data-parallel run steps eagerly; leave it off")
            return StepFunctions(partial(parallel_plain_step, comm), partial(parallel_adjoint_step, comm))
        if self.compile is None:
            return StepFunctions(plain_step, adjoint_step)
        options = {"fallback_random": True} if self.compile == "inductor" else None
        return StepFunctions(torch.compile(plain_step, backend=self.compile, options=options),
                             torch.compile(adjoint_step, backend=self.compile, options=options))

    def init(self, problem: InnerProblem, schedule: Schedule) -> CheckpointedState:
        """Primal state of step 0 and no checkpoints yet; ``hz_clip`` is refused (:class:`~hpo.errors.ConfigError`)."""
        if problem.hz_clip is not None:
            raise ConfigError("hz_clip", "the reverse-checkpointed backend does not support it "
                                         "(a clamp of forward mode's Hessian-tangent product); leave it unset")
        refuse_parallel_curvature(problem)
        ref = next(iter(problem.params.values()))
        params = {k: v.detach() for k, v in problem.params.items()}
        inner = InnerState(params, problem.buffers, problem.rule.init(params), 0, ref.new_zeros(()))
        return CheckpointedState(inner, schedule.values_like(ref), checkpoint_interval(self.every, problem.horizon),
                                 (), self.functions(problem.comm))

    def inner(self, state: CheckpointedState) -> InnerState:
        """The primal inner state."""
        return state.inner

    def step(self, problem: InnerProblem, schedule: Schedule, state: CheckpointedState, t: int, batch: Batch) -> CheckpointedState:
        """A plain step without a graph; before steps ``0, k, 2k, ...`` first store the checkpoint."""
        inner = state.inner
        checkpoints = state.checkpoints
        if t % state.every == 0:
            checkpoints = (*checkpoints, Checkpoint(t, inner.params, inner.opt_state, inner.buffers))
        out = state.functions.plain(problem.rule, problem.loss_fn, problem.grad_clip, inner.params, inner.buffers,
                                    inner.opt_state, hyper_at_step(state.values, t, problem.horizon), t, batch,
                                    seed=problem.seed)
        return replace(state, inner=InnerState(out.params, out.buffers, out.opt_state, t + 1, out.loss),
                       checkpoints=checkpoints)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: CheckpointedState) -> HypergradResult:
        """The reverse sweep over every segment, last to first (see the module docstring).

        A run that stopped before the horizon, or a non-finite adjoint or hypergradient, gives
        ``diverged=True`` and an all-NaN hypergradient, never a finite-looking one.
        """
        inner = state.inner
        loss, acc = problem.evaluate(inner.params, inner.buffers)
        info = {"every": state.every, "checkpoints": len(state.checkpoints)}

        def failed(cause: str) -> HypergradResult:
            nan = {k: torch.full_like(v, float("nan")) for k, v in state.values.items()}
            return HypergradResult(nan, float(loss), float(acc), inner.t, diverged=True,
                                   info={**info, "divergence": cause, "diverged_at": inner.t})

        if inner.t < problem.horizon:  # run_inner stopped early: there is no hypergradient of a whole run
            return failed("loss")
        cotangents = sweep(problem, state)
        if cotangents is None:
            return failed("adjoint")
        hypergrad = {}
        for name, v in state.values.items():  # (T,) or (T, groups) cotangents, summed per segment (last dim)
            seg = segment_indices(problem.horizon, v.shape[-1]).to(v.device)
            hypergrad[name] = torch.zeros_like(v).index_add(v.dim() - 1, seg, cotangents[name].movedim(0, -1))
        if not bool(all_finite([hypergrad])):
            return failed("adjoint")
        return HypergradResult(hypergrad, float(loss), float(acc), inner.t, info=info)


def sweep(problem: InnerProblem, state: CheckpointedState) -> dict[str, Tensor] | None:
    """:math:`\\bar\\lambda_t` of every step as a ``(T,)`` tensor per type, or None if the adjoint blew up.

    Segments from the last to the first: recompute the states of the segment from its checkpoint
    (:func:`replay`), then step the adjoint back through them.  One host sync per segment (the
    finiteness check of the adjoint); the sweep stops at the first non-finite one.  The global RNG
    is restored afterwards.
    """
    inner = state.inner
    horizon, rule, loss_fn, clip = problem.horizon, problem.rule, problem.loss_fn, problem.grad_clip
    adjoint = state.functions.adjoint
    a_params = grad(lambda p: validation_loss(problem.eval_fn, p, inner.buffers, problem.val,
                                              problem.eval_batch_size))(inner.params)
    a_state = {sk: {n: torch.zeros_like(v) for n, v in sv.items()} for sk, sv in inner.opt_state.items()}
    per_segment: dict[str, list[Tensor]] = {name: [] for name in state.values}  # (b - a,) per segment
    ends = [c.t for c in state.checkpoints[1:]] + [horizon]
    device = inner.loss.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for ckpt, end in zip(reversed(state.checkpoints), reversed(ends)):
            h_bars: list[Hyper] = []
            for t, params, opt_state, buffers in reversed(replay(problem, state, ckpt, end)):
                problem.seed_step(t)  # the masks step t drew in the forward pass
                batch = problem.batch(t)
                hyper = hyper_at_step(state.values, t, horizon)
                a_params, a_state, h_bar = adjoint(rule, loss_fn, clip, params, buffers, opt_state, hyper, t, batch,
                                                   a_params, a_state, seed=problem.seed)
                h_bars.append(h_bar)
            for name, segments in per_segment.items():  # one tensor per segment, not T 0-d tensors; step order
                segments.append(torch.stack([h[name] for h in reversed(h_bars)]))
            if not bool(all_finite([a_params, a_state])):
                return None
    return {name: torch.cat(segs[::-1]) for name, segs in per_segment.items()}  # the sweep ran backwards


def replay(problem: InnerProblem, state: CheckpointedState, ckpt: Checkpoint,
           end: int) -> list[tuple[int, Params, State, Buffers]]:
    """``(t, params, opt_state, buffers)`` before each step ``t`` of ``[ckpt.t, end)``, recomputed.

    Each step reseeds the RNG as the forward pass did, so it draws the same dropout masks.
    """
    params, opt_state, buffers = ckpt.params, ckpt.opt_state, ckpt.buffers
    states = [(ckpt.t, params, opt_state, buffers)]
    for t in range(ckpt.t, end - 1):  # s_end is not needed: it is the next checkpoint, or the final state
        problem.seed_step(t)
        batch = problem.batch(t)
        out = state.functions.plain(problem.rule, problem.loss_fn, problem.grad_clip, params, buffers, opt_state,
                                    hyper_at_step(state.values, t, problem.horizon), t, batch, seed=problem.seed)
        params, opt_state, buffers = out.params, out.opt_state, out.buffers
        states.append((t + 1, params, opt_state, buffers))
    return states
