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

The regime follows a memory budget (:func:`hpo.backends.memory_budget.plan_checkpoints`, decided
after step 0, which is taped and whose graph is measured).  When one state and ``T`` step graphs
fit, the forward pass tapes the whole run (:func:`taped_step`: each gradient with
``create_graph=True``, the schedule's tables as the graph's leaves) and the sweep is one backward
from :math:`a_T` (:func:`tape_sweep`): nothing is recomputed.  Otherwise the forward pass runs
plain steps and keeps :math:`s_t` (with the BatchNorm buffers) every ``k`` steps:
``k = sqrt(T)`` with taped segments when a segment's graph fits (the sweep builds one
graph per segment from its checkpoint and back-propagates through it: no separate recomputation),
else ``k = 1`` (every state kept) when all ``T`` states fit, else the smallest
``k`` whose :math:`\\lceil T/k \\rceil + k - 1` states fit, at most :math:`\\sqrt T`.  The reverse sweep takes the segments ``[a, b)`` between
checkpoints from the last to the first, recomputes :math:`s_a, \\dots, s_{b-1}` from the checkpoint
on ``problem.batch(t)`` (or tapes the segment), then steps the adjoint from ``b - 1`` down to ``a``.
Every step, forward, replayed, taped or adjoint, first seeds the global RNG with
:meth:`~hpo.core.problem.InnerProblem.seed_step` (as :func:`hpo.core.backend.run_inner` does), so
dropout masks are those of the forward pass, exactly; the sweep leaves the global RNG as it found it.
Memory holds :math:`\\lceil T/k \\rceil + k - 1` states; the cost is one plain pass, a recomputation
of :math:`T - \\lceil T/k \\rceil` steps and ``T`` vector-Jacobian products of a step (see
``docs/backend-choice.md`` for the measured figures).

For a rule without ``curvature`` that runs eagerly on one process, both step functions use plain
``torch.autograd`` (:func:`autograd_plain_step`, :func:`autograd_adjoint_step`) rather than
``torch.func``: the same kernels in the same order, hence bit-identical results, without the
transforms' per-operation dispatch (about half the cost of a small model's step).  The adjoint
step is the double backward

.. math::

    g = \\nabla_\\theta L_t(\\theta), \\quad (\\theta', s') = \\mathrm{step}(\\theta, s, g, \\lambda), \\quad
    (a_t, \\bar\\lambda_t) = \\Big(\\frac{\\partial (\\theta', s')}{\\partial (\\theta, s, \\lambda)}\\Big)^{\\!\\top} a_{t+1}

taken by ``torch.autograd.grad`` through a graph built with ``create_graph=True``.  BatchNorm statistics are replayed with the states, never differentiated.
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
from hpo.backends.memory_budget import (
    CheckpointPlan,
    default_budget,
    parse_bytes,
    plan_checkpoints,
    states_held,
    tree_bytes,
)
from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import Buffers, InnerProblem, LossFn
from hpo.core.schedule import Schedule, segment_index, segment_indices
from hpo.core.step import StepOutput, autograd_train_step, hyper_at_step, train_step, tree_clamp, validation_loss
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
class Stored:
    """The checkpoints as an immutable linked list, newest first: storing one is O(1), not a tuple copy."""

    last: Checkpoint
    before: Stored | None

    def in_order(self) -> tuple[Checkpoint, ...]:
        """Every checkpoint, oldest first."""
        out: list[Checkpoint] = []
        node: Stored | None = self
        while node is not None:
            out.append(node.last)
            node = node.before
        return tuple(reversed(out))


@final
@dataclass(frozen=True)
class RunTape:
    """The whole run's graph (:data:`~hpo.backends.memory_budget.RUN_TAPED`): the schedule's tables as
    leaves, and the newest weights and optimizer state as functions of them, built as the run trains."""

    leaves: dict[str, Tensor]
    params: Params
    opt_state: State


@final
@dataclass(frozen=True)
class StepFunctions:
    """The plain step and the adjoint step, eager or ``torch.compile``d (built once per run)."""

    plain: Callable[..., StepOutput]
    adjoint: Callable[..., tuple[Params, State, Hyper]]
    segment: Callable[..., tuple[Params, State, list[Hyper]]] | None = None


@final
@dataclass(frozen=True)
class CheckpointedState:
    """The primal inner state, the schedule's values and the checkpoints stored so far (by step)."""

    inner: InnerState
    values: dict[str, Tensor]
    every: int
    stored: Stored | None
    functions: StepFunctions
    plan: CheckpointPlan
    graph_bytes: int = 0
    hyper: tuple[tuple[int, ...], Hyper] = ((), {})
    tape: RunTape | None = None

    @property
    def checkpoints(self) -> tuple[Checkpoint, ...]:
        """The checkpoints stored so far, oldest first."""
        return () if self.stored is None else self.stored.in_order()


def checkpoint_interval(every: int | None, horizon: int) -> int:
    """``every``, or :math:`\\max(1, \\mathrm{round}(\\sqrt{T}))` when None: minimises :math:`T/k + k`."""
    return max(1, round(math.sqrt(horizon))) if every is None else every


def plain_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params, buffers: Buffers,
               opt_state: State, hyper: Hyper, t: int, batch: Batch, seed: int = 0) -> StepOutput:
    """:func:`hpo.core.step.train_step` without a graph: the forward pass and the recomputation."""
    with torch.no_grad():
        return train_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip, seed)


def autograd_plain_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params,
                        buffers: Buffers, opt_state: State, hyper: Hyper, t: int, batch: Batch,
                        seed: int = 0) -> StepOutput:
    """:func:`plain_step` through ``torch.autograd`` (rules without ``curvature``): bit-identical, cheaper
    (:func:`hpo.core.step.autograd_train_step`)."""
    return autograd_train_step(rule, loss_fn, params, buffers, opt_state, hyper, t, batch, grad_clip)


def taped_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params, buffers: Buffers,
               opt_state: State, hyper: Hyper, t: int, batch: Batch) -> StepOutput:
    """One step of the whole-run tape: :math:`s_{t+1} = F_t(s_t, \\lambda_t)` with a ``create_graph`` gradient.

    :math:`\\theta_{t+1}` and the new optimizer state stay functions of ``hyper`` and, through
    :math:`s_t`, of every earlier step's values: the graph a backward from :math:`a_T` needs, with
    nothing recomputed.  Weights that are no function of anything yet (step 0) become leaves; the
    buffers and the loss come back detached.
    """
    p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        loss, new_buffers = loss_fn(p, buffers, batch, hyper)
        g = torch.autograd.grad(loss, tuple(p.values()), create_graph=True)
        grads = tree_clamp(dict(zip(p, g)), grad_clip)
        new_p, new_s = rule.step(p, opt_state, grads, hyper, t)
    return StepOutput(new_p, new_s, {k: v.detach() for k, v in new_buffers.items()}, loss.detach(), grads)


def detached(out: StepOutput) -> StepOutput:
    """``out`` with its weights, optimizer state and gradient cut from any graph."""
    return StepOutput({k: v.detach() for k, v in out.params.items()},
                      {sk: {k: v.detach() for k, v in sv.items()} for sk, sv in out.opt_state.items()},
                      out.buffers, out.loss.detach(), {k: v.detach() for k, v in out.grads.items()})


def autograd_adjoint_step(rule: UpdateRule, loss_fn: LossFn, grad_clip: float | None, params: Params,
                          buffers: Buffers, opt_state: State, hyper: Hyper, t: int, batch: Batch,
                          a_params: Params, a_state: State, seed: int = 0) -> tuple[Params, State, Hyper]:
    """:func:`adjoint_step` as one double backward of ``torch.autograd`` (rules without ``curvature``).

    The step is rebuilt on leaves with ``create_graph=True`` for the gradient, and
    ``autograd.grad`` of :math:`(\\theta', s')` with cotangents :math:`a_{t+1}` gives
    :math:`a_t` and :math:`\\bar\\lambda_t` (zeros for inputs the step does not use).
    """
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    s = {sk: {k: v.detach().requires_grad_() for k, v in sv.items()} for sk, sv in opt_state.items()}
    h = {k: v.detach().requires_grad_() for k, v in hyper.items()}
    with torch.enable_grad():
        out = taped_step(rule, loss_fn, grad_clip, p, buffers, s, h, t, batch)
        outs, cots = paired_cotangents(out.params, out.opt_state, a_params, a_state)
        inputs = [*p.values(), *(v for sv in s.values() for v in sv.values()), *h.values()]
        bars = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    it = iter(b if b is not None else torch.zeros_like(v) for b, v in zip(bars, inputs))
    out_p = {k: next(it) for k in p}
    out_s = {sk: {k: next(it) for k in sv} for sk, sv in s.items()}
    return out_p, out_s, {k: next(it) for k in h}


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

    ``every`` is the checkpoint interval k (None: as ``memory_budget`` allows, see
    :func:`~hpo.backends.memory_budget.plan_checkpoints`: the whole run taped, or taped
    :math:`\\sqrt T` segments, or every state stored, or the fewest recomputations).  ``memory_budget`` is bytes or a size such as
    ``"512MiB"`` (default: half the free memory of the weights' device).  ``compile``
    names a ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` for a quick capture check)
    for the plain and the adjoint step; None (default) runs them eagerly.  Under ``inductor``,
    random ops (dropout) are compiled with ``fallback_random`` so they draw from the global RNG as
    eager code does and the replay sees the same masks.

    Example:
        >>> backend = ReverseCheckpointedBackend()                         # k as the free memory allows
        >>> backend = ReverseCheckpointedBackend(memory_budget="512MiB")   # ... as 512 MiB allow
        >>> backend = ReverseCheckpointedBackend(every=50)                 # a checkpoint every 50 steps
    """

    name: ClassVar[str] = "reverse-checkpointed"
    supports_data_parallel: ClassVar[bool] = True

    def __init__(self, every: int | None = None, compile: str | None = None,
                 memory_budget: int | str | None = None) -> None:
        if every is not None and every < 1:
            raise ConfigError("every", f"must be at least 1, got {every}")
        self.every = every
        self.compile = compile
        self.memory_budget = None if memory_budget is None else parse_bytes("memory_budget", memory_budget)

    def plan(self, problem: InnerProblem, one: int, graph_bytes: int | None = None) -> CheckpointPlan:
        """The checkpoint interval: ``every`` if given, else the budget's plan (:func:`plan_checkpoints`).

        The budget is ``memory_budget``, or half the free memory of the weights' device; ``one``
        state is the weights, the optimizer state and the buffers (no RNG state: steps reseed it).
        ``graph_bytes`` (what taped step 0's graph saved; None before it ran, or where the sweep cannot
        tape) gives a taped step :data:`TAPE_MARGIN` times that.
        """
        ref = next(iter(problem.params.values()))
        budget = self.memory_budget if self.memory_budget is not None else default_budget(ref.device)
        tape = None if graph_bytes is None else int(TAPE_MARGIN * graph_bytes)
        if self.every is None:
            return plan_checkpoints(problem.horizon, one, budget, tape)
        k = self.every
        taped = CheckpointPlan(k, f"every {k} (set), segments taped", math.ceil(problem.horizon / k), one, budget,
                               max(1, tape or 0))
        if tape is not None and k > 1 and (budget is None or taped.bytes <= budget):
            return taped
        return CheckpointPlan(k, f"every {k} (set)", states_held(problem.horizon, min(k, problem.horizon)), one, budget)

    def state_bytes(self, problem: InnerProblem, opt_state: State) -> int:
        """Bytes of one stored state: weights, optimizer state and buffers (the RNG is reseeded, not stored)."""
        return tree_bytes(problem.params, opt_state, problem.buffers)

    def functions(self, comm: Communicator | None = None, rule: UpdateRule | None = None) -> StepFunctions:
        """The step functions, compiled with ``self.compile`` if set; data-parallel ones with ``comm``.

        Eager, on one process, for a ``rule`` without ``curvature``: the ``torch.autograd`` ones.
        """
        if comm is not None:  # backends/data_parallel.py: the gradient and vector-Hessian products averaged
            if self.compile is not None:
                raise ConfigError("compile", "a data-parallel run steps eagerly; leave it off")
            return StepFunctions(partial(parallel_plain_step, comm), partial(parallel_adjoint_step, comm))
        if self.compile is None:
            if rule is not None and rule.curvature is None:
                return StepFunctions(autograd_plain_step, autograd_adjoint_step, segment_adjoint)
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
        plan = self.plan(problem, self.state_bytes(problem, inner.opt_state))
        return CheckpointedState(inner, schedule.values_like(ref), plan.every, None,
                                 self.functions(problem.comm, problem.rule), plan)

    def inner(self, state: CheckpointedState) -> InnerState:
        """The primal inner state."""
        return state.inner

    def step(self, problem: InnerProblem, schedule: Schedule, state: CheckpointedState, t: int, batch: Batch) -> CheckpointedState:
        """One step: taped when the whole run is (:data:`~hpo.backends.memory_budget.RUN_TAPED`), else
        plain, storing the checkpoint first before steps ``0, k, 2k, ...``.

        Step 0 of a run that can tape is taped with its graph measured, then the plan is made; a run
        that is not taped whole drops that graph and goes on with plain steps.
        """
        inner = state.inner
        stored = state.stored
        if t % state.every == 0:
            stored = Stored(Checkpoint(t, inner.params, inner.opt_state, inner.buffers), stored)
        tables = state.values if state.tape is None else state.tape.leaves
        if t == 0 and state.functions.segment is not None:  # tape step 0, measure its graph, then plan
            tables = {k: v.detach().requires_grad_() for k, v in state.values.items()}
        key = tuple(segment_index(t, problem.horizon, v.shape[-1]) for v in tables.values())
        if key != state.hyper[0] or t == 0:  # the values change only at segment starts: index them once per segment
            state = replace(state, hyper=(key, hyper_at_step(tables, t, problem.horizon)))
        args = (problem.rule, problem.loss_fn, problem.grad_clip, inner.params, inner.buffers, inner.opt_state,
                state.hyper[1], t, batch)
        if t == 0 and state.functions.segment is not None:
            counter = SavedBytes()
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                out = taped_step(*args)
            plan = self.plan(problem, state.plan.state_bytes, counter.total)
            tape = RunTape(tables, out.params, out.opt_state) if plan.whole_run else None
            state = replace(state, graph_bytes=counter.total, plan=plan, every=plan.every, tape=tape,
                            hyper=state.hyper if plan.whole_run else ((), {}))
            out = detached(out)
        elif state.tape is not None:
            out = taped_step(problem.rule, problem.loss_fn, problem.grad_clip, state.tape.params, inner.buffers,
                             state.tape.opt_state, state.hyper[1], t, batch)
            state = replace(state, tape=replace(state.tape, params=out.params, opt_state=out.opt_state))
            out = detached(out)
        else:
            out = state.functions.plain(*args, seed=problem.seed)
        return replace(state, inner=InnerState(out.params, out.buffers, out.opt_state, t + 1, out.loss),
                       stored=stored)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: CheckpointedState) -> HypergradResult:
        """The reverse sweep over every segment, last to first (see the module docstring).

        A run that stopped before the horizon, or a non-finite adjoint or hypergradient, gives
        ``diverged=True`` and an all-NaN hypergradient, never a finite-looking one.
        """
        inner = state.inner
        loss, acc = problem.evaluate(inner.params, inner.buffers)
        info = {"every": state.every, "checkpoints": len(state.checkpoints), "regime": state.plan.regime}

        def failed(cause: str) -> HypergradResult:
            nan = {k: torch.full_like(v, float("nan")) for k, v in state.values.items()}
            return HypergradResult(nan, float(loss), float(acc), inner.t, diverged=True,
                                   info={**info, "divergence": cause, "diverged_at": inner.t})

        if inner.t < problem.horizon:  # run_inner stopped early: there is no hypergradient of a whole run
            return failed("loss")
        hypergrad = sweep(problem, state) if state.tape is None else tape_sweep(problem, state)
        if hypergrad is None:
            return failed("adjoint")
        if not bool(all_finite([hypergrad])):
            return failed("adjoint")
        return HypergradResult(hypergrad, float(loss), float(acc), inner.t, info=info)


@final
class SavedBytes:
    """Saved-tensor hooks that add up the bytes a step's autograd graph saves (its activations)."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, x: Tensor) -> Tensor:
        """Count ``x`` and save it unchanged."""
        self.total += x.numel() * x.element_size()
        return x

    @staticmethod
    def unpack(x: Tensor) -> Tensor:
        """The saved tensor itself."""
        return x


#: A taped step is planned at this many times what the saved-tensor hooks count on step 0.  The
#: count already exceeds the memory a tape takes (a tensor saved by two nodes counts twice: an MLP
#: step counts 0.8 MiB and its tape grows by about 0.4 MiB a step), which covers what the hooks do
#: not see (the step's outputs, the autograd nodes).
TAPE_MARGIN = 1.0


def tape_sweep(problem: InnerProblem, state: CheckpointedState) -> dict[str, Tensor]:
    """The hypergradient tables from the whole run's tape: one backward from :math:`a_T`.

    :math:`a_T = \\nabla_\\theta L_{val}(\\theta_T)` (the optimizer state's adjoint is zero there), and
    ``autograd.grad`` of :math:`\\theta_T` with that cotangent gives :math:`\\partial L_{val} / \\partial`
    each table: every step's :math:`\\bar\\lambda_t` is summed into its segment's column by the graph
    itself, since each step's values are a slice of the tables (:data:`RunTape.leaves`).
    """
    inner, tape = state.inner, state.tape
    assert tape is not None
    a_params = grad(lambda p: validation_loss(problem.eval_fn, p, inner.buffers, problem.val,
                                              problem.eval_batch_size))(inner.params)
    outs, cots = paired_cotangents(tape.params, {}, a_params, {})
    leaves = list(tape.leaves.values())
    bars = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
    return {k: b if b is not None else torch.zeros_like(v) for (k, v), b in zip(tape.leaves.items(), bars)}


def fuse_segments(state: CheckpointedState) -> bool:
    """Whether the sweep tapes whole segments (:func:`segment_adjoint`) instead of replaying them.

    As planned after step 0: only with the ``torch.autograd`` functions and ``k > 1``, when ``k``
    taped steps (what taped step 0's graph saved, times :data:`TAPE_MARGIN`) fit in the budget
    beside the checkpoints, and when the whole run is not taped already.
    """
    return state.functions.segment is not None and state.plan.taped and not state.plan.whole_run


def segment_adjoint(problem: InnerProblem, values: dict[str, Tensor], ckpt: Checkpoint, end: int,
                    a_params: Params, a_state: State) -> tuple[Params, State, list[Hyper]]:
    """:math:`a_{ckpt.t}` and :math:`\\bar\\lambda_t` for ``t`` in ``[ckpt.t, end)``, last step first, from one tape.

    The segment's steps run from the checkpoint with ``create_graph=True`` gradients (each step
    reseeding the RNG with :meth:`~hpo.core.problem.InnerProblem.seed_step`, as in the forward pass), so the tape holds :math:`s_{a+1}, \\dots, s_b` as functions of
    :math:`s_a` and the :math:`\\lambda_t`; one ``autograd.grad`` of :math:`s_b` with cotangent
    :math:`a_b` then gives the same adjoint as :func:`autograd_adjoint_step` applied step by step,
    and the separate recomputation of the segment is not needed: the tape is it.
    """
    rule, loss_fn, clip, horizon = problem.rule, problem.loss_fn, problem.grad_clip, problem.horizon
    p0 = {k: v.detach().requires_grad_() for k, v in ckpt.params.items()}
    s0 = {sk: {k: v.detach().requires_grad_() for k, v in sv.items()} for sk, sv in ckpt.opt_state.items()}
    p, s, buffers = p0, s0, ckpt.buffers
    hypers: list[Hyper] = []
    with torch.enable_grad():
        for t in range(ckpt.t, end):
            problem.seed_step(t)  # the masks step t drew in the forward pass
            h = {k: v.detach().requires_grad_() for k, v in hyper_at_step(values, t, horizon).items()}
            out = taped_step(rule, loss_fn, clip, p, buffers, s, h, t, problem.batch(t))
            p, s, buffers = out.params, out.opt_state, out.buffers
            hypers.append(h)
        outs, cots = paired_cotangents(p, s, a_params, a_state)
        inputs = [*p0.values(), *(v for sv in s0.values() for v in sv.values()),
                  *(v for h in hypers for v in h.values())]
        bars = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    it = iter(b if b is not None else torch.zeros_like(v) for b, v in zip(bars, inputs))
    out_p = {k: next(it) for k in p0}
    out_s = {sk: {k: next(it) for k in sv} for sk, sv in s0.items()}
    h_bars = [{k: next(it) for k in h} for h in hypers]
    return out_p, out_s, h_bars[::-1]


def sweep(problem: InnerProblem, state: CheckpointedState) -> dict[str, Tensor] | None:
    """The hypergradient tables, :math:`\\sum_{t: \\mathrm{seg}(t) = j} \\bar\\lambda_t` per type, or None if the adjoint blew up.

    Segments from the last to the first: recompute the states of the segment from its checkpoint
    (:func:`replay`), then step the adjoint back through them; or, when :func:`fuse_segments`
    allows, take the segment's adjoint from one tape of it (:func:`segment_adjoint`), which does
    the recomputation and the vector-Jacobian products in one pass.  The per-step cotangents are
    added into their segments' columns in chunks (one ``index_add`` per type per chunk, memory the
    size of the tables whatever ``T``: a weight per training example costs no ``T x n`` stack), and the
    adjoint checked for finiteness (one host sync), once at least :math:`\\sqrt T` steps have gone
    by since the last check (so ``k = 1`` does not sync every step); the sweep stops at the first
    non-finite check.  The global RNG is restored afterwards.
    """
    inner = state.inner
    horizon, rule, loss_fn, clip = problem.horizon, problem.rule, problem.loss_fn, problem.grad_clip
    adjoint = state.functions.adjoint
    a_params = grad(lambda p: validation_loss(problem.eval_fn, p, inner.buffers, problem.val,
                                              problem.eval_batch_size))(inner.params)
    a_state = {sk: {n: torch.zeros_like(v) for n, v in sv.items()} for sk, sv in inner.opt_state.items()}
    totals = {name: torch.zeros_like(v) for name, v in state.values.items()}
    segments = {name: segment_indices(horizon, v.shape[-1]).to(v.device) for name, v in state.values.items()}
    pending: list[tuple[int, Hyper]] = []  # (t, cotangent) of the steps since the last chunk, in reverse step order
    check_every = max(1, round(math.sqrt(horizon)))
    checkpoints = state.checkpoints
    ends = [c.t for c in checkpoints[1:]] + [horizon]
    device = inner.loss.device
    fused = state.functions.segment if fuse_segments(state) else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for ckpt, end in zip(reversed(checkpoints), reversed(ends)):
            if fused is not None:  # one tape of the segment: no separate recomputation
                a_params, a_state, h_bars = fused(problem, state.values, ckpt, end, a_params, a_state)
                pending.extend(zip(range(end - 1, ckpt.t - 1, -1), h_bars))
            else:
                for t, params, opt_state, buffers in reversed(replay(problem, state, ckpt, end)):
                    problem.seed_step(t)  # the masks step t drew in the forward pass
                    batch = problem.batch(t)
                    hyper = hyper_at_step(state.values, t, horizon)
                    a_params, a_state, h_bar = adjoint(rule, loss_fn, clip, params, buffers, opt_state, hyper, t,
                                                       batch, a_params, a_state, seed=problem.seed)
                    pending.append((t, h_bar))
            if len(pending) >= check_every or ckpt.t == 0:
                steps = torch.tensor([t for t, _ in pending], device=device)
                for name, total in totals.items():  # (m,) or (m, groups) cotangents into their segments (last dim)
                    stacked = torch.stack([h[name] for _, h in pending]).to(total.dtype)
                    total.index_add_(total.dim() - 1, segments[name][steps], stacked.movedim(0, -1))
                pending = []
                if not bool(all_finite([a_params, a_state])):
                    return None
    return totals


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


def paired_cotangents(params: Params, state: State, a_params: Params,
                      a_state: State) -> tuple[list[Tensor], list[Tensor]]:
    """The step's outputs that depend on its inputs, and the adjoint entry of each, in matching order:
    ``torch.autograd.grad(outs, inputs, cots)`` is then :math:`\\bar a_t = a_{t+1}^\\top \\partial F_t`."""
    outs, cots = [], []
    for k, v in params.items():
        if v.requires_grad:
            outs.append(v)
            cots.append(a_params[k])
    for sk, sv in state.items():
        for k, v in sv.items():
            if v.requires_grad:
                outs.append(v)
                cots.append(a_state[sk][k])
    return outs, cots
