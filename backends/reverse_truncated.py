"""Truncated reverse-mode hypergradients, built on ``higher``: backpropagate through the last W steps.

The first ``T - W`` inner steps run without a graph.  At step ``T - W`` the weights and the
optimizer state are cut from the past (treated as constants) and the last ``W`` steps run through
a ``higher`` differentiable optimizer that applies our :class:`~hpo.optimizers.base.UpdateRule`, so
every step stays on the autograd tape (``create_graph=True`` for the inner gradient).  Then

.. math::  h_W = \\frac{\\partial L_{val}(\\theta_T)}{\\partial \\lambda}\\Big|_{\\theta_{T-W},\\, s_{T-W}\\ \\text{fixed}}

by one reverse pass.  With ``W = T`` this is the exact hypergradient (equal to forward mode);
with ``W < T`` the values whose segments end before ``T - W`` get 0 and the others lose the
long-range terms (the short-horizon bias of truncated backpropagation).  Memory grows linearly in
``W`` (the graph of W steps, activations included), unlike forward mode.

Why ``higher``'s differentiable optimizer and not its functional model (``higher.patch.monkeypatch``):
the inner problem exposes a pure ``loss_fn(params, buffers, batch)`` (weights swapped into the
model's slots, :class:`hpo.tasks.tensor_swap.TensorSwap`) that already returns fresh BatchNorm buffers; a monkeypatched module
would keep the running statistics as module attributes and update them in place.  The
differentiable optimizer is the part of ``higher`` we need: it computes the inner gradient with
``create_graph`` and takes differentiable hyperparameters through its ``override`` mechanism.
BatchNorm running statistics are carried alongside, detached (updated, not differentiated), as in
the reference unroll.  ``higher`` is used in this module only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, final

import higher
import torch
from torch import Tensor

from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, train_step, tree_clamp, validation_loss
from hpo.errors import ConfigError
from hpo.optimizers.base import Hyper, State, UpdateRule


@final
class RuleDifferentiableOptimizer(higher.optim.DifferentiableOptimizer):
    """A ``higher`` differentiable optimizer whose update is an :class:`UpdateRule`'s ``step``.

    Per call of ``step(loss, params, override=...)`` the override must carry ``hyper`` (a dict of
    0-d tensors, possibly requiring grad), ``t`` (the inner step) and ``opt_state`` (the rule's
    state dict); the new state is left in ``param_groups[0]["opt_state"]``.  Parameters are one
    group, in the order of ``names``.
    """

    def __init__(self, rule: UpdateRule, names: list[str], reference: list[Tensor], **kwargs: Any) -> None:
        dummy = torch.optim.SGD(reference, lr=0.0)
        super().__init__(dummy, reference, **kwargs)
        self.rule = rule
        self.names = names

    def _update(self, grouped_grads: list[list[Tensor]], **kwargs: Any) -> None:
        """``params, opt_state <- rule.step(params, opt_state, grads, hyper, t)`` (out of place)."""
        group = self.param_groups[0]
        params = dict(zip(self.names, group["params"]))
        grads = dict(zip(self.names, grouped_grads[0]))
        new_params, new_state = self.rule.step(params, group["opt_state"], grads, group["hyper"], group["t"])
        group["params"] = [new_params[n] for n in self.names]
        group["opt_state"] = new_state


@final
@dataclass(frozen=True)
class TruncatedState:
    """Inner state; inside the window also the leaf values and the ``higher`` optimizer."""

    inner: InnerState
    values: dict[str, Tensor]
    window_start: int
    diffopt: RuleDifferentiableOptimizer | None = None


def _detach(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    return tree.detach()


@final
class ReverseTruncatedBackend(HypergradientBackend[TruncatedState]):
    """``reverse-truncated``: reverse mode through the last ``window`` inner steps (None = all).

    Example:
        >>> backend = ReverseTruncatedBackend(window=50)   # backprop through the last 50 steps
    """

    name: ClassVar[str] = "reverse-truncated"

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ConfigError("window", f"must be at least 1, got {window}")
        self.window = window

    def check_rule(self, rule: UpdateRule) -> None:
        """A curvature rule is refused: ``higher``'s optimizer step does not see the estimate."""
        if rule.curvature is not None:
            raise ValueError(f"optimizer {rule.name!r} uses a curvature estimate, which the reverse-truncated "
                             "backend does not compute; use reverse-checkpointed or forward-jvp")

    def window_start(self, horizon: int) -> int:
        """First step run on the tape: ``max(0, T - W)``."""
        return 0 if self.window is None else max(0, horizon - self.window)

    def init(self, problem: InnerProblem, schedule: Schedule) -> TruncatedState:
        """Primal state of step 0; the schedule's values become leaves requiring grad."""
        self.check_rule(problem.rule)
        ref = next(iter(problem.params.values()))
        values = {n: v.detach().requires_grad_() for n, v in schedule.values_like(ref).items()}
        params = {k: v.detach() for k, v in problem.params.items()}
        inner = InnerState(params, problem.buffers, problem.rule.init(params), 0, ref.new_zeros(()))
        return TruncatedState(inner, values, self.window_start(problem.horizon))

    def inner(self, state: TruncatedState) -> InnerState:
        """The primal inner state (weights may carry a graph inside the window)."""
        return state.inner

    def step(
        self, problem: InnerProblem, schedule: Schedule, state: TruncatedState, t: int, batch: Batch
    ) -> TruncatedState:
        """A graph-free step before the window; a ``higher`` differentiable step inside it."""
        inner = state.inner
        if t < state.window_start:
            hyper = {k: v.detach() for k, v in hyper_at_step(state.values, t, problem.horizon).items()}
            with torch.no_grad():
                params, opt, buffers, loss, _ = train_step(problem.rule, problem.loss_fn, inner.params,
                                                           inner.buffers, inner.opt_state, hyper, t, batch,
                                                           problem.grad_clip)
            return TruncatedState(InnerState(params, buffers, opt, t + 1, loss), state.values, state.window_start)

        names = list(inner.params)
        diffopt = state.diffopt
        params, opt_state = inner.params, inner.opt_state
        if diffopt is None:  # entering the window: cut the past, start the tape
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
            opt_state = _detach(opt_state)
            diffopt = RuleDifferentiableOptimizer(problem.rule, names, [params[n] for n in names])
        hyper: Hyper = hyper_at_step(state.values, t, problem.horizon)
        loss, buffers = problem.loss_fn(params, inner.buffers, batch, hyper)
        clip = problem.grad_clip

        def clamp_grads(gs: list[Tensor]) -> list[Tensor]:
            return list(tree_clamp(dict(zip(names, gs)), clip).values())

        new_list = diffopt.step(
            loss,
            params=[params[n] for n in names],
            override={"hyper": [hyper], "t": [t], "opt_state": [opt_state]},
            grad_callback=clamp_grads,
        )
        new_state: State = diffopt.param_groups[0]["opt_state"]
        new_params = dict(zip(names, new_list))
        inner_new = InnerState(new_params, _detach(buffers), new_state, t + 1, loss.detach())
        return TruncatedState(inner_new, state.values, state.window_start, diffopt)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: TruncatedState) -> HypergradResult:
        """Reverse pass of the validation loss at the final weights through the window."""
        inner = state.inner
        params, buffers = inner.params, inner.buffers
        chunk = problem.eval_batch_size
        val = validation_loss(problem.eval_fn, params, buffers, problem.val, chunk)
        names = list(state.values)
        if val.requires_grad:
            gs = torch.autograd.grad(val, [state.values[k] for k in names], allow_unused=True)
        else:  # no step ran inside the window
            gs = (None,) * len(names)
        hg = {k: (torch.zeros_like(state.values[k]) if g is None else g).detach() for k, g in zip(names, gs)}
        detached = {k: v.detach() for k, v in params.items()}
        loss, acc = problem.evaluate(detached, buffers)
        return HypergradResult(
            hypergrad=hg,
            val_loss=float(loss),
            val_acc=float(acc),
            steps=inner.t,
            info={"window": problem.horizon - state.window_start},
        )
