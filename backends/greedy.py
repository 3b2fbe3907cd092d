"""Greedy one-step hypergradients, in the style of Hypergradient Descent (Baydin et al. 2018).

At every inner step ``t`` the weights ``theta_t`` and optimizer state ``s_t`` are held fixed and
only the step's own hyperparameters are differentiated, through one update, on a validation
minibatch ``B_t``:

.. math::

    h_t = \\frac{\\partial}{\\partial \\lambda_t}
          L_{val}^{B_t}\\big(\\mathrm{step}(\\theta_t, s_t, g_t, \\lambda_t)\\big),
    \\qquad
    h_{name, j} = \\sum_{t:\\ \\mathrm{seg}(t) = j} h_{t, name}

For SGD-momentum this is :math:`h_{t,lr} = -\\nabla L^{B_t}_{val}(\\theta_{t+1})^\\top v_{t+1}`.
The sums per shared segment have the shape of the full hypergradient, so the same sign-based
outer loop runs on them; they ignore every effect of :math:`\\lambda_t` beyond one step (hence
"greedy", biased towards short-horizon gains).  Cost per step: one extra forward/backward pass on
a validation minibatch; memory is constant in the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor
from torch.func import grad

from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import EVAL_SEED, Batch
from hpo.core.problem import InnerProblem, batch_index_stream
from hpo.core.schedule import Schedule, segment_index
from hpo.core.step import hyper_at_step, loss_gradient, train_step
from hpo.optimizers.base import Hyper, Params, UpdateRule
from hpo.optimizers.loss_hypers import loss_names


def validation_batches(problem: InnerProblem, seed_offset: int = 1) -> Tensor:
    """``(horizon, b)`` indices into the validation set: the minibatch ``B_t`` of every step."""
    n = len(problem.val)
    rows = list(batch_index_stream(n, problem.batch_size, problem.horizon, problem.seed + seed_offset))
    return torch.stack(rows)


def one_step_hypergrad(
    problem: InnerProblem,
    inner: InnerState,
    grads: Params,
    hyper: Hyper,
    t: int,
    val_batch: Batch,
    buffers: dict[str, Tensor],
    batch: Batch | None = None,
) -> dict[str, Tensor]:
    """:math:`h_t = \\partial L^{B_t}_{val}(\\mathrm{step}(\\theta_t, s_t, g_t, \\lambda_t)) / \\partial \\lambda_t`.

    With loss hyperparameters (:mod:`hpo.optimizers.loss_hypers`) the gradient depends on them,
    :math:`g_t = \\nabla_\\theta L(\\theta_t; b_t, \\lambda_t)`, and is recomputed inside the
    derivative on the training minibatch ``batch`` (for per-example weights and plain SGD this is
    Ren et al.'s one-step reweighting, :math:`h_{t,i} = -\\eta\\, \\nabla L^{B_t}_{val}(\\theta_{t+1})^\\top
    \\nabla \\ell_i(\\theta_t)/B`); otherwise ``grads`` is held fixed.
    """

    def after_step(h: Hyper) -> Tensor:
        g = grads
        if batch is not None and loss_names(problem.rule):
            g = loss_gradient(problem.loss_fn, inner.params, inner.buffers, batch, h, problem.grad_clip)[0]
        new_params, _ = problem.rule.step(inner.params, inner.opt_state, g, h, t)
        loss, _ = problem.eval_fn(new_params, buffers, val_batch, False)
        return loss

    return grad(after_step)(hyper)


@final
@dataclass(frozen=True)
class GreedyState:
    """Inner state, the hypergradient sums per segment so far and the validation minibatches."""

    inner: InnerState
    values: dict[str, Tensor]
    sums: dict[str, Tensor]
    val_batches: Tensor


@final
class GreedyBackend(HypergradientBackend[GreedyState]):
    """``greedy``: one-step hypergradients on validation minibatches, summed per shared segment."""

    name: ClassVar[str] = "greedy"

    def check_rule(self, rule: UpdateRule) -> None:
        """A curvature rule is refused: the one-step hypergradient does not carry its estimate."""
        if rule.curvature is not None:
            raise ValueError(f"optimizer {rule.name!r} uses a curvature estimate, which the greedy backend's "
                             "one-step hypergradient does not include; use reverse-checkpointed or forward-jvp")

    def init(self, problem: InnerProblem, schedule: Schedule) -> GreedyState:
        """Zero sums; the validation minibatch of every step drawn from ``problem.seed``."""
        self.check_rule(problem.rule)
        ref = next(iter(problem.params.values()))
        values = schedule.values_like(ref)
        opt0 = problem.rule.init(problem.params)
        inner = InnerState(problem.params, problem.buffers, opt0, 0, ref.new_zeros(()))
        sums = {n: torch.zeros_like(v) for n, v in values.items()}
        return GreedyState(inner, values, sums, validation_batches(problem))

    def inner(self, state: GreedyState) -> InnerState:
        """The primal inner state."""
        return state.inner

    def step(
        self, problem: InnerProblem, schedule: Schedule, state: GreedyState, t: int, batch: Batch
    ) -> GreedyState:
        """Inner step ``t`` and its one-step hypergradient, added to the active segments' sums."""
        inner = state.inner
        seg = {k: segment_index(t, problem.horizon, v.shape[-1]) for k, v in state.values.items()}
        hyper = hyper_at_step(state.values, t, problem.horizon)
        params, opt, buffers, loss, g = train_step(problem.rule, problem.loss_fn, inner.params, inner.buffers,
                                                   inner.opt_state, hyper, t, batch, problem.grad_clip,
                                                   seed=problem.seed)
        idx = state.val_batches[t]
        h = one_step_hypergrad(problem, inner, g, hyper, t, problem.val.fetch(idx, EVAL_SEED, t), buffers, batch)
        sums = {  # h[k] is 0-d, or (groups,) for a grouped type: added to the active segment (last dim)
            k: v.index_add(v.dim() - 1, torch.tensor([seg[k]], device=v.device), h[k].reshape(*v.shape[:-1], 1))
            for k, v in state.sums.items()
        }
        return GreedyState(InnerState(params, buffers, opt, t + 1, loss), state.values, sums, state.val_batches)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: GreedyState) -> HypergradResult:
        """The per-segment sums of :math:`h_t`, and the validation metrics at the final weights."""
        inner = state.inner
        loss, acc = problem.evaluate(inner.params, inner.buffers)
        return HypergradResult(hypergrad=dict(state.sums), val_loss=float(loss), val_acc=float(acc), steps=inner.t)
