"""The interface every optimizer update rule implements.

An update rule is a pair of pure, out-of-place functions over dicts of tensors (as from
``model.named_parameters()``)::

    state = rule.init(params)
    params, state = rule.step(params, state, grads, hyper, t)

``hyper`` maps each hyperparameter name (``"lr"``, ``"momentum"``, ...) to a 0-d tensor: the
value in force at inner step ``t``.  Hyperparameters are arguments, never values frozen at
construction, so the same rule can be differentiated with respect to them.

A rule may also carry a hand-derived ``tangent``: the Jacobian-vector product of ``step`` with
respect to ``(params, state, grads, hyper)``.  When it does not, the ``forward-jvp`` backend
derives it with :func:`torch.func.jvp`.

**Curvature.**  A rule that preconditions with the Hessian's diagonal (Sophia, AdaHessian) sets
``curvature`` to a :class:`Curvature` (refresh interval ``every``, number of ``probes``).  The
library then computes the Hutchinson estimate from step ``t``'s own minibatch,

.. math::  \\hat D_t = \\frac1P \\sum_{i=1}^{P} z_i \\odot (H_t z_i), \\qquad z_i \\in \\{-1, +1\\}^n
           \\text{ Rademacher, drawn from a generator seeded by } (\\mathrm{seed}, t),

and calls ``step(params, state, grads, hyper, t, hess_diag=D)``: ``D`` is the estimate (a dict
shaped like ``params``) on the steps with ``t % every == 0`` and ``None`` on the others.  The rule
stays pure; the estimate is a function of the weights, so every exact backend differentiates
through it (one more derivative order).  A rule that leaves ``curvature`` at ``None`` is called
exactly as before and pays nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, Params]
Hyper = dict[str, Tensor]


@final
@dataclass(frozen=True)
class HyperSpec:
    """One hyperparameter type of a rule: its valid range and the FDS defaults.

    The valid range is ``low <= x <= high``; an open bound (``low_open``/``high_open``) is kept
    ``margin`` inside.  ``count`` is the default number of shared values over the horizon,
    ``init`` their starting value and ``step`` the initial outer step size.  ``search_low``,
    ``search_high`` and ``search_log`` give the default range of the black-box baselines
    (random search, TPE) and ``hyper_lr`` the default rate of online hypergradient descent.  ``on_divergence`` is
    the safe direction when an inner run diverges: -1 lower the value (learning rates), +1 raise
    it, 0 hold it (see :func:`hpo.outer.divergence.safe_direction`).
    """

    name: str
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    init: float = 0.0
    step: float = 0.1
    count: int = 1
    margin: float = 1e-3
    description: str = ""
    on_divergence: int = -1
    search_low: float | None = None
    search_high: float | None = None
    search_log: bool = False
    hyper_lr: float | None = None

    @property
    def search_range(self) -> tuple[float, float, bool] | None:
        """``(low, high, log)`` that random search and TPE sample from by default.

        The spec's ``search_low``/``search_high`` when set; else the valid range when it is
        bounded on both sides (sampled uniformly); else None (a range must be given).
        """
        if self.search_low is not None and self.search_high is not None:
            return (self.search_low, self.search_high, self.search_log)
        if math.isfinite(self.upper):
            return (self.lower, self.upper, False)
        return None

    @property
    def online_rate(self) -> float:
        """The hyper-learning rate of online hypergradient descent: ``hyper_lr``, else the outer ``step``."""
        return self.hyper_lr if self.hyper_lr is not None else self.step

    @property
    def lower(self) -> float:
        """The smallest value the outer loop may set."""
        return self.low + self.margin if self.low_open else self.low

    @property
    def upper(self) -> float:
        """The largest value the outer loop may set."""
        return self.high - self.margin if self.high_open else self.high

    def contains(self, x: float) -> bool:
        """Whether ``x`` is in the valid range (open bounds excluded)."""
        lo_ok = x > self.low if self.low_open else x >= self.low
        hi_ok = x < self.high if self.high_open else x <= self.high
        return lo_ok and hi_ok and not math.isnan(x)

    def range_text(self) -> str:
        """The valid range as text, e.g. ``0 <= momentum < 1``."""
        lo = "<" if self.low_open else "<="
        hi = "<" if self.high_open else "<="
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"{self.low:g} {lo} {self.name} {hi} {high}"

    def clamp(self, x: Tensor) -> Tensor:
        """Clamp ``x`` into ``[lower, upper]`` (out of place)."""
        return x.clamp(min=self.lower, max=self.upper)


@final
@dataclass(frozen=True)
class Curvature:
    """A rule's request for a Hutchinson estimate of the Hessian diagonal (see the module docstring).

    ``every``: the estimate is computed on steps ``t`` with ``t % every == 0`` (``update_period`` in
    pytorch-optimizer); ``probes``: Rademacher vectors averaged per estimate (``num_samples``).

    Example:
        >>> Curvature(every=10).due(20), Curvature(every=10).due(21)
        (True, False)
    """

    every: int = 1
    probes: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"curvature: every must be an integer >= 1, got {self.every!r}")
        if not (isinstance(self.probes, int) and self.probes >= 1):
            raise ValueError(f"curvature: probes must be an integer >= 1, got {self.probes!r}")

    def due(self, t: int) -> bool:
        """Whether inner step ``t`` gets a fresh estimate."""
        return t % self.every == 0


class UpdateRule(ABC):
    """An optimizer as pure functions of (params, state, grads, hyperparameters).

    Subclasses set ``name`` and ``hyperparameters`` and implement ``init`` and ``step``; they may
    implement ``tangent`` (hand-derived) and ``torch_optimizer`` (the matching ``torch.optim``
    class, used when a learned schedule drives an ordinary training loop).
    """

    name: ClassVar[str]
    hyperparameters: ClassVar[tuple[HyperSpec, ...]]
    #: A common hand-picked constant setting, the baseline a learned schedule is compared with.
    hand_picked: ClassVar[dict[str, float] | None] = None
    #: Declared, not detected: True when the rule carries a hand-derived :meth:`tangent`
    #: (``forward-manual`` needs one; ``forward-jvp`` and the reverse backends do not).
    hand_tangent: ClassVar[bool] = False
    #: A Hessian-diagonal estimate the rule asks for, or None (the default: the plain contract).
    #: A rule with ``curvature`` set takes ``hess_diag`` as a keyword of :meth:`step`.
    curvature: Curvature | None = None

    @abstractmethod
    def init(self, params: Params) -> State:
        """Optimizer state for ``params`` (e.g. zero momentum buffers)."""

    @abstractmethod
    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int) -> tuple[Params, State]:
        """One update at inner step ``t`` (0-based); returns new params and state, out of place."""

    def tangent(
        self,
        params: Params,
        state: State,
        grads: Params,
        hyper: Hyper,
        t: int,
        d_params: Params,
        d_state: State,
        d_grads: Params,
        d_hyper: Hyper,
    ) -> tuple[Params, State]:
        """Hand-derived JVP of :meth:`step` for one tangent column; optional (set ``hand_tangent = True``)."""
        raise NotImplementedError(f"optimizer {self.name!r} has no hand-derived tangent")

    def spec(self, name: str) -> HyperSpec:
        """The :class:`HyperSpec` called ``name``."""
        for s in self.hyperparameters:
            if s.name == name:
                return s
        raise KeyError(f"optimizer {self.name!r} has no hyperparameter {name!r}")

    @property
    def hyper_names(self) -> tuple[str, ...]:
        """Names of this rule's hyperparameter types, in order."""
        return tuple(s.name for s in self.hyperparameters)

    def torch_optimizer(self, params: Iterable[Tensor], hyper: dict[str, float]) -> torch.optim.Optimizer | None:
        """A ``torch.optim`` optimizer equal to this rule at constant ``hyper``, or None."""
        return None

    def torch_group(self, hyper: dict[str, float]) -> dict[str, Any]:
        """The ``param_group`` entries that set ``hyper`` on :meth:`torch_optimizer`'s optimizer.

        By default each hyperparameter is the ``param_group`` key of the same name (as for
        ``torch.optim.RMSprop``'s ``lr`` and ``alpha``); override where torch names them otherwise.
        """
        if type(self).torch_optimizer is UpdateRule.torch_optimizer:
            raise NotImplementedError(f"optimizer {self.name!r} has no torch.optim counterpart")
        return {k: float(v) for k, v in hyper.items()}


def zeros_like_params(params: Params) -> Params:
    """A dict of zero tensors shaped like ``params``."""
    return {k: torch.zeros_like(v) for k, v in params.items()}
