"""What every outer optimizer shares: its state, its interface, the projection and the sign move.

An outer optimizer is a pair of pure functions over dicts of tensors, as in optax: ``start``
builds the state from the starting values, ``update`` takes the state and a hypergradient and
returns the next state, whose values are already projected onto each type's valid range,

.. math::

    \\lambda \\leftarrow \\Pi_{\\mathcal{R}}\\bigl(\\phi^{-1}(\\phi(\\lambda) - \\Delta u)\\bigr)

where :math:`\\phi` is the type's coordinate (:mod:`hpo.outer.coordinates`: additive, or
multiplicative with ``--outer-space log``), :math:`\\Delta u` the optimizer's move and
:math:`\\Pi_{\\mathcal{R}}` the clamp to the rule's range.  Every optimizer therefore takes the log
coordinates.  The divergence policies (:mod:`hpo.outer.divergence`) run instead of ``update``
after a diverged inner run; they use :meth:`OuterOptimizer.retreat`.

Adding an optimizer is one module with a final subclass of :class:`OuterOptimizer` and one line
in :data:`hpo.app.registry.OUTER_OPTIMIZERS`; its dataclass fields are its options
(``--outer NAME --outer-option key=value``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, final

import torch
from torch import Tensor

from hpo.optimizers.base import HyperSpec
from hpo.outer.coordinates import Coordinate


@final
@dataclass(frozen=True)
class OuterState:
    """Values, step sizes and last hypergradient signs of every shared value, and the step count.

    ``good`` holds the values of the last inner run that finished without diverging (None before
    the first one, or after a divergence that the ``backtrack`` policy could not undo); the
    ``backtrack`` policy bisects towards them.  ``kinds`` maps a type to the coordinate its steps
    are taken in (:mod:`hpo.outer.coordinates`: ``linear``, ``log``, ``log1m``; None or a missing
    type: ``linear``), fixed when the search starts; steps and signs are in that coordinate.
    ``slots`` holds what an optimizer keeps beyond steps and signs (Adam's moments), as
    ``{slot: {type: tensor}}``; empty for the sign optimizers.
    """

    values: dict[str, Tensor]
    steps: dict[str, Tensor]
    signs: dict[str, Tensor]
    k: int = 0
    good: dict[str, Tensor] | None = None
    kinds: dict[str, str] | None = None
    slots: dict[str, dict[str, Tensor]] = field(default_factory=dict)

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
                "kinds": self.kinds, "slots": self.slots}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> OuterState:
        """Inverse of :meth:`to_dict` (a checkpoint written before ``good``, ``kinds`` or ``slots`` lacks them)."""
        good, kinds, slots = d.get("good"), d.get("kinds"), d.get("slots")
        return cls(dict(d["values"]), dict(d["steps"]), dict(d["signs"]), int(d["k"]),  # type: ignore[arg-type]
                   dict(good) if good is not None else None,  # type: ignore[arg-type]
                   dict(kinds) if kinds is not None else None,  # type: ignore[arg-type]
                   {s: dict(v) for s, v in (slots or {}).items()})  # type: ignore[union-attr]


class OuterOptimizer(ABC):
    """An outer optimizer: ``start(values, steps, kinds) -> state``, ``update(state, hypergrad, specs) -> state``.

    Subclasses are frozen dataclasses whose fields are their options.  ``decay`` is the factor a
    step shrinks by after a sign flip and ``grow`` the one it grows by after a held sign; the
    divergence policies use both (:meth:`retreat`, :func:`hpo.outer.divergence.backtrack`).
    """

    name: ClassVar[str]
    decay: float = 0.5
    grow: float = 1.0

    def start(self, values: Mapping[str, Tensor], steps: Mapping[str, float],
              kinds: Mapping[str, str] | None = None) -> OuterState:
        """The state before the first update (values, initial steps, coordinates)."""
        return OuterState.start(values, steps, kinds)

    @abstractmethod
    def update(self, state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """The next state from a finite hypergradient; values projected onto their ranges."""

    def retreat(self, state: OuterState, pseudo: Mapping[str, Tensor], specs: Mapping[str, HyperSpec]) -> OuterState:
        """One sign move along a divergence policy's pseudo-hypergradient (:func:`sign_move`)."""
        return sign_move(state, pseudo, specs, self.decay, self.grow)

    def check(self) -> None:
        """Raise ``ValueError`` (one line, naming the option) on an option out of its range."""
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay:g}")

    def options(self) -> dict[str, float]:
        """The optimizer's options as ``{name: value}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def sign_move(state: OuterState, hypergrad: Mapping[str, Tensor], specs: Mapping[str, HyperSpec],
              decay: float, grow: float, scale: Mapping[str, Tensor] | None = None) -> OuterState:
    """The sign step every sign optimizer takes, in each type's coordinate :math:`u = \\phi(\\lambda)`:

    .. math::

        s_j \\leftarrow s_j \\gamma \\text{ if the sign flipped}, \\quad
        s_j \\leftarrow s_j \\eta \\text{ if it held}, \\quad
        \\lambda_j \\leftarrow \\Pi\\bigl(\\phi^{-1}(\\phi(\\lambda_j) - \\operatorname{sign}(h_j \\phi')\\, s_j r_j)\\bigr)

    with decay :math:`\\gamma`, growth :math:`\\eta` and :math:`r_j` = ``scale`` (1 when None).
    "Flipped" is :math:`\\operatorname{sign}(h_j)\\operatorname{sign}(h_j^{prev}) < 0`, "held" is
    :math:`> 0`; with no previous sign or a zero or non-finite hypergradient the step is unchanged,
    and such an entry also keeps its value and last sign.
    """
    values, steps, signs = {}, {}, {}
    for name, v in state.values.items():
        c = state.coordinate(name)
        h = hypergrad[name].detach().to(dtype=v.dtype, device=v.device)
        s = torch.where(torch.isfinite(h), torch.sign(h), torch.zeros_like(h)) * c.direction
        flipped = (s * state.signs[name]) < 0
        held = (s * state.signs[name]) > 0
        step = torch.where(flipped, state.steps[name] * decay,
                           torch.where(held, state.steps[name] * grow, state.steps[name]))
        move = step * scale[name] if scale is not None else step
        values[name] = specs[name].clamp(c.from_u(c.to_u(v) - s * move))
        steps[name] = step
        signs[name] = torch.where(s != 0, s, state.signs[name])
    return OuterState(values, steps, signs, state.k + 1, state.good, state.kinds, state.slots)


def converged(state: OuterState, frac: float = 0.05) -> bool:
    """Whether every ``step / |value|`` is below ``frac`` (a zero value never counts as converged);
    a multiplicative coordinate's step is relative already and is compared as it is."""
    for name, v in state.values.items():
        ratio = state.coordinate(name).relative_step(state.steps[name], v)
        if not bool((ratio < frac).all()):
            return False
    return True
