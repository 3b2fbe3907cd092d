"""Divergence policies: what the outer loop does instead of an update after a diverged inner run.

A diverged run (a non-finite loss or hypergradient) has no usable hypergradient; the authors'
code takes sign 0 there and stalls.  Only values whose segment had started when the run blew up
can have caused it.  Two policies, named by ``--divergence``:

* ``lower`` (default): every started value moves to its type's safe side
  (:func:`safe_direction`: lower a learning rate, ...) by the optimizer's sign move
  (:meth:`~hpo.outer.base.OuterOptimizer.retreat`), a lowered value to at most half of what it
  was (:func:`halve_lowered`);
* ``backtrack``: every started value goes part of the way back to the last values that trained
  (:func:`backtrack`), falling back to ``lower`` when there are none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor

from hpo.core.backend import HypergradResult
from hpo.core.schedule import segment_starts
from hpo.optimizers.base import HyperSpec
from hpo.outer.base import OuterOptimizer, OuterState

#: The divergence policies (``--divergence``).
DIVERGENCE_RULES = ("lower", "backtrack")


def after_divergence(state: OuterState, result: HypergradResult, horizon: int, specs: Mapping[str, HyperSpec],
                     optimizer: OuterOptimizer, policy: str = "lower") -> tuple[OuterState, dict[str, object]]:
    """The outer state after a diverged inner run, and what the record says about it.

    Only values whose segment had started when the run blew up can have caused it.  With
    ``policy == "backtrack"`` they go halfway back to the last values that trained
    (:func:`backtrack`); with ``"lower"``, or when there is nothing to go back to, each
    moves to its type's safe side (:func:`safe_direction`), a lowered value to at most
    half of what it was (:func:`halve_lowered`), and the good point is forgotten.
    """
    info = result.info or {}
    steps_run = int(info.get("diverged_at", result.steps))
    started = {n: torch.tensor(segment_starts(horizon, v.shape[-1])) < steps_run for n, v in state.values.items()}
    extra: dict[str, object] = {"diverged_at": steps_run, "divergence": str(info.get("divergence", "hypergradient"))}
    back = backtrack(state, started, optimizer.decay) if policy == "backtrack" else None
    if back is not None:
        moved = {n: back.values[n] != state.values[n] for n in state.values}
        return back, {**extra, "backtracked": {n: positions(m) for n, m in moved.items() if m.any()}}
    hg = safe_direction(result.hypergrad, specs, started)
    new = optimizer.retreat(state, hg, specs)
    new = replace(new, values={n: specs[n].clamp(v) for n, v in halve_lowered(state.values, new.values, hg).items()},
                  good=None)
    return new, {**extra, "lowered": {n: positions(h > 0) for n, h in hg.items() if (h > 0).any()},
                 "raised": {n: positions(h < 0) for n, h in hg.items() if (h < 0).any()}}


def positions(mask: torch.Tensor) -> list:
    """Where ``mask`` is true: segment indices ``j`` of a 1-D table, ``"g:j"`` (group, segment) of a 2-D one."""
    if mask.dim() == 1:
        return [j for j, x in enumerate(mask.tolist()) if x]
    return [f"{g}:{j}" for g, row in enumerate(mask.tolist()) for j, x in enumerate(row) if x]


def halve_lowered(old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor],
                  pseudo: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """After a divergence, every lowered value at most half its old value: :math:`\\min(v', v / 2)`.

    The sign step alone moves a value by its step size, so from ``lr = 50`` with a step of 0.1 it
    would take hundreds of outer steps to recover; halving takes a few (``log2`` of the excess).
    ``pseudo`` is the safe-direction pseudo-hypergradient (positive where the value is lowered).
    """
    return {n: torch.where(pseudo[n].to(v.device) > 0, torch.minimum(v, old[n] * 0.5), v) for n, v in new.items()}


def backtrack(state: OuterState, started: Mapping[str, Tensor], decay: float = 0.5) -> OuterState | None:
    """After a diverged run at :math:`\\lambda`: go back part of the way to the last values that trained.

    With :math:`g` the values of the last finished run (``state.good``), every value :math:`j`
    whose segment had started (``started[name]``, a bool mask) and that differs from :math:`g_j`
    moves towards it, with the decay :math:`\\gamma` (0.5: halfway) also shrinking its step:

    .. math::

        \\lambda_j \\leftarrow g_j + \\gamma\\,(\\lambda_j - g_j), \\qquad
        s_j \\leftarrow \\gamma\\, s_j, \\qquad
        \\sigma_j \\leftarrow \\operatorname{sign}(\\lambda_j - g_j)

    (in the type's coordinate :math:`u = \\phi(\\lambda)` when its steps are multiplicative:
    :math:`\\lambda_j \\leftarrow \\phi^{-1}(\\phi(g_j) + \\gamma (\\phi(\\lambda_j) - \\phi(g_j)))`).
    The recorded sign :math:`\\sigma_j` is that of a move back towards :math:`g`, so a later
    hypergradient that points at the diverged values again counts as a flip and halves the step
    once more: the search bisects the interval between the last good and the diverged values
    instead of pushing every value in force down, and stays between values that trained and values
    that diverged.
    Values that did not move, or whose segment had not started, keep value, step and sign.
    Returns None (use :func:`safe_direction`) when there is no good point or no started value
    moved: the good values themselves diverged (e.g. on a fresh initialisation).
    """
    if state.good is None:
        return None
    values, steps, signs, moved_any = {}, {}, {}, False
    for name, v in state.values.items():
        c = state.coordinate(name)
        g = state.good[name].to(device=v.device, dtype=v.dtype)
        moved = started[name].to(v.device) & (v != g)
        moved_any = moved_any or bool(moved.any())
        u, ug = c.to_u(v), c.to_u(g)
        values[name] = torch.where(moved, c.from_u(ug + decay * (u - ug)), v)
        steps[name] = torch.where(moved, state.steps[name] * decay, state.steps[name])
        signs[name] = torch.where(moved, torch.sign(u - ug), state.signs[name])
    if not moved_any:
        return None
    return OuterState(values, steps, signs, state.k + 1, state.good, state.kinds, state.slots)


def safe_direction(
    hypergrad: Mapping[str, Tensor],
    specs: Mapping[str, HyperSpec],
    started: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The pseudo-hypergradient used after a divergence: push offending values the safe way.

    A diverged inner run has no usable hypergradient (the authors' code takes sign 0 for NaN and
    stalls).  Instead every *offending* value, one whose segment had started when the run blew up
    (``started[name]``, a bool mask; ``None`` means all), gets the sign that moves it in its
    type's safe direction ``spec.on_divergence`` (-1 lower, +1 raise, 0 hold):

    .. math::  \\tilde h_j = -\\mathrm{on\\_divergence} \\text{ if segment } j
               \\text{ started, else } 0

    so a sign move (``value -= sign(h) * step``, :meth:`~hpo.outer.base.OuterOptimizer.retreat`) lowers e.g. every learning rate in force
    before the blow-up and leaves later segments, which cannot have caused it, untouched (a zero
    entry keeps its value, step and last sign).  Lowering the learning rate always ends a
    divergence eventually: with lr = 0 the weights do not move.
    """
    out = {}
    for name, h in hypergrad.items():
        direction = float(getattr(specs[name], "on_divergence", -1))
        mask = torch.ones_like(h, dtype=torch.bool) if started is None else started[name].to(h.device)
        out[name] = torch.where(mask, torch.full_like(h, -direction), torch.zeros_like(h))
    return out
