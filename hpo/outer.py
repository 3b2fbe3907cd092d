"""The sign-based outer update of FDS (non-greedy, since each hypergradient spans the whole run).

For every shared value :math:`\\lambda_j` with hypergradient :math:`h_j` and step :math:`s_j`:

.. math::

    s_j \\leftarrow s_j \\cdot \\gamma \\;\\text{ if } \\operatorname{sign}(h_j) \\ne
    \\operatorname{sign}(h_j^{prev}), \\qquad
    s_j \\leftarrow s_j \\cdot \\eta \\;\\text{ if } \\operatorname{sign}(h_j) =
    \\operatorname{sign}(h_j^{prev}), \\qquad
    \\lambda_j \\leftarrow \\operatorname{clamp}(\\lambda_j - \\operatorname{sign}(h_j)\\, s_j)

with decay :math:`\\gamma` (default 0.5), growth :math:`\\eta \\ge 1` (default 1: the authors'
update, steps only shrink; :math:`\\eta > 1` is Rprop's growth without its cap on the step, so
a value still far from its optimum after a few outer steps gets there in fewer) and the clamp to
the rule's valid range.  "Flipped" is :math:`\\operatorname{sign}(h_j)\\operatorname{sign}(h_j^{prev})
< 0` and "held" is :math:`> 0`: with no previous sign (the first step) or a zero hypergradient the
step is unchanged.  With a magnitude cap :math:`C \\ge 1` (default 0: off, the authors' update)
the move is scaled by how large :math:`|h_j|` is against the other values of its type,

.. math::

    \\lambda_j \\leftarrow \\lambda_j - \\operatorname{sign}(h_j)\\, s_j\\, r_j, \\qquad
    r_j = \\operatorname{clamp}\\bigl(|g_j| / \\operatorname{median}_k |g_k|,\\; 1/C,\\; C\\bigr)

(:math:`g` the hypergradient in the step's coordinate, :func:`relative_magnitude`), so a segment
whose hypergradient is far larger than the rest moves further; the step sizes :math:`s_j` and
their sign rule are unchanged.  The search has
converged when every :math:`s_j / |\\lambda_j|` is below a fraction (default 0.05).

A non-finite hypergradient (a diverged inner run) has no usable sign; the authors' code takes
sign 0 there and stalls.  Here the caller passes the *safe* direction instead, for the values in
force before the blow-up (see :func:`safe_direction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from hpo.coordinates import Coordinate
from hpo.optimizers.base import HyperSpec


@final
@dataclass(frozen=True)
class OuterState:
    """Values, step sizes and last hypergradient signs of every shared value, and the step count.

    ``good`` holds the values of the last inner run that finished without diverging (None before
    the first one, or after a divergence that :func:`backtrack` could not undo); the
    ``backtrack`` divergence rule bisects towards them.  ``kinds`` maps a type to the coordinate its
    steps are taken in (:mod:`hpo.coordinates`: ``linear``, ``log``, ``log1m``; None or a missing
    type: ``linear``), fixed when the search starts; steps and signs are in that coordinate.
    """

    values: dict[str, Tensor]
    steps: dict[str, Tensor]
    signs: dict[str, Tensor]
    k: int = 0
    good: dict[str, Tensor] | None = None
    kinds: dict[str, str] | None = None

    @classmethod
    def start(cls, values: Mapping[str, Tensor], steps: Mapping[str, float],
              kinds: Mapping[str, str] | None = None) -> OuterState:
        """Initial state: the given values, step ``steps[name]`` for every value of a type, no signs."""
        vals = {k: v.detach().clone().to(torch.float64) for k, v in values.items()}
        return cls(
            values=vals,
            steps={k: torch.full_like(v, float(steps[k])) for k, v in vals.items()},
            signs={k: torch.zeros_like(v) for k, v in vals.items()},
            k=0,
            kinds=dict(kinds) if kinds else None,
        )

    def coordinate(self, name: str) -> Coordinate:
        """The coordinate type ``name``'s steps are taken in."""
        return Coordinate((self.kinds or {}).get(name, "linear"))

    def to_dict(self) -> dict[str, object]:
        """Plain tensors, strings and ints (for checkpoints loaded with ``weights_only=True``)."""
        return {"values": self.values, "steps": self.steps, "signs": self.signs, "k": self.k, "good": self.good,
                "kinds": self.kinds}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> OuterState:
        """Inverse of :meth:`to_dict` (a checkpoint written before ``good`` and ``kinds`` has neither)."""
        good, kinds = d.get("good"), d.get("kinds")
        return cls(dict(d["values"]), dict(d["steps"]), dict(d["signs"]), int(d["k"]),  # type: ignore[arg-type]
                   dict(good) if good is not None else None,  # type: ignore[arg-type]
                   dict(kinds) if kinds is not None else None)  # type: ignore[arg-type]


def sign_update(
    state: OuterState,
    hypergrad: Mapping[str, Tensor],
    specs: Mapping[str, HyperSpec],
    decay: float = 0.5,
    grow: float = 1.0,
    magnitude: float = 0.0,
) -> OuterState:
    """One FDS outer step: halve (``decay``) steps whose sign flipped, multiply by ``grow`` those whose
    sign held, move against the sign (by the step times :func:`relative_magnitude` when
    ``magnitude`` is a cap :math:`C \\ge 1`; 0: by the step), clamp.

    The step is taken in each type's coordinate (``state.kinds``, :mod:`hpo.coordinates`):
    :math:`\\lambda \\leftarrow \\phi^{-1}(\\phi(\\lambda) - \\operatorname{sign}(h\\, \\phi')\\, s)`.
    A zero or non-finite hypergradient entry leaves its value, step and last sign unchanged.
    """
    values, steps, signs = {}, {}, {}
    for name, v in state.values.items():
        c = state.coordinate(name)
        h = hypergrad[name].detach().to(dtype=v.dtype, device=v.device)
        s = torch.where(torch.isfinite(h), torch.sign(h), torch.zeros_like(h)) * c.direction
        flipped = (s * state.signs[name]) < 0
        held = (s * state.signs[name]) > 0
        step = torch.where(flipped, state.steps[name] * decay, torch.where(held, state.steps[name] * grow,
                                                                            state.steps[name]))
        move = step * relative_magnitude(h * c.slope(v), magnitude) if magnitude > 0 else step
        values[name] = specs[name].clamp(c.from_u(c.to_u(v) - s * move))
        steps[name] = step
        signs[name] = torch.where(s != 0, s, state.signs[name])
    return OuterState(values, steps, signs, state.k + 1, state.good, state.kinds)


def relative_magnitude(g: Tensor, cap: float) -> Tensor:
    """:math:`r_j = \\operatorname{clamp}(|g_j| / \\operatorname{median}_k |g_k|, 1/C, C)` over the finite,
    nonzero entries of one type's hypergradient :math:`g`; 1 for the others and for a type with none.

    The median (not the mean) is the reference since a hypergradient's entries span decades: half
    of them move further than their step, half less, and no move exceeds :math:`C` steps.
    """
    a = g.abs()
    usable = torch.isfinite(a) & (a > 0)
    if not bool(usable.any()):
        return torch.ones_like(g)
    ref = a[usable].median()
    return torch.where(usable, (a / ref).clamp(1.0 / cap, cap), torch.ones_like(g))


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
    return OuterState(values, steps, signs, state.k + 1, state.good, state.kinds)


def converged(state: OuterState, frac: float = 0.05) -> bool:
    """Whether every ``step / |value|`` is below ``frac`` (a zero value never counts as converged);
    a multiplicative coordinate's step is relative already and is compared as it is."""
    for name, v in state.values.items():
        ratio = state.coordinate(name).relative_step(state.steps[name], v)
        if not bool((ratio < frac).all()):
            return False
    return True


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

    so :func:`sign_update` (``value -= sign(h) * step``) lowers e.g. every learning rate in force
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
