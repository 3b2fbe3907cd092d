"""Memory budgets: parsing ``512MiB``, a default from the free memory, and checkpoint spacing under a budget.

The checkpointed reverse sweep (:mod:`hpo.backends.reverse_checkpointed`) with a checkpoint every
``k`` steps of a ``T``-step run holds, at its peak,

.. math::

    S(k) = \\lceil T / k \\rceil + (k - 1)

inner states (weights, optimizer state, buffers): the checkpoints, plus the ``k - 1`` states of one
segment recomputed from its checkpoint.  It recomputes :math:`T - \\lceil T/k \\rceil` steps, a
fraction :math:`r(k) \\approx (k - 1) / k` of the run: none for ``k = 1`` (every state stored),
one half for ``k = 2``, and about one whole pass for :math:`k = \\sqrt T`, which minimises
:math:`S`.  A sweep that *tapes* each segment (one autograd graph of its ``k`` steps, built from the
checkpoint, then one backward through it) needs no separate recomputation at all, since the graph
is built by the very forward computation each vector-Jacobian product needs anyway; it holds
:math:`\\lceil T/k \\rceil` states and the graphs of ``k`` steps (``G`` bytes each).

:func:`plan_checkpoints` takes, in this order of cost (measured, ``docs/performance.md``):

0. :data:`RUN_TAPED`: the forward pass itself builds the graph of the whole run (``k = T``, one
   segment, taped as it trains), when :math:`s + T G \\le M`: nothing is recomputed, and the sweep
   is one backward through it;
1. :data:`TAPED`: :math:`k = \\sqrt T` with taped segments, when
   :math:`\\lceil T/k \\rceil s + k G \\le M` (``s`` bytes a state, budget ``M``);
2. :data:`ALL_STORED`: ``k = 1``, every state stored, one vector-Jacobian product per step and
   nothing recomputed, when :math:`T s \\le M`;
3. the smallest ``k`` with :math:`S(k)\\, s \\le M`, segments recomputed (:data:`SPACED`, or
   :data:`SQRT` at :math:`k = \\sqrt T`): the fewest recomputations the budget allows with one
   level of checkpoints;
4. :data:`OVER_BUDGET`: even :math:`S(\\sqrt T)\\, s > M`.  Only a multi-level (binomial,
   ``revolve``) schedule would fit; that is not implemented, so the plan keeps :math:`k = \\sqrt T`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import final

import torch

from hpo.errors import ConfigError

#: Multipliers of the accepted units (binary and decimal; case-insensitive; ``B`` optional).
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 1000**2, "mb": 1000**2, "mib": 2**20,
         "g": 1000**3, "gb": 1000**3, "gib": 2**30, "t": 1000**4, "tb": 1000**4, "tib": 2**40}
#: The default budget is this fraction of the free memory (the rest is left to activations and others).
DEFAULT_FRACTION = 0.5
#: Regime names, as printed by ``auto`` and in the hypergradient's ``info``.
ALL_STORED, SPACED, SQRT, OVER_BUDGET = "all states stored", "every k-th state", "sqrt(T) checkpoints", "over budget"
TAPED = "sqrt(T) checkpoints, segments taped"
RUN_TAPED = "whole run taped, nothing recomputed"

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(field: str, value: object) -> int:
    """``512MiB``, ``2GiB``, ``1.5GB``, ``1000000`` or an int -> bytes; :class:`ConfigError` on ``field`` otherwise.

    Example:
        >>> parse_bytes("memory_budget", "512MiB")
        536870912
        >>> parse_bytes("memory_budget", "1.5kB")
        1500
    """
    if isinstance(value, bool):
        raise ConfigError(field, f"must be a size such as 512MiB or 2GB, got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        m = _SIZE.match(str(value))
        if m is None or m.group(2).lower() not in UNITS:
            raise ConfigError(field, f"must be a size such as 512MiB, 2GiB or 1000000 (bytes), got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * UNITS[unit])
    if size < 1:
        raise ConfigError(field, f"must be at least 1 byte, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes in MiB (or KiB below 1 MiB), for one-line messages."""
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: the CUDA allocator's view, or the host's available pages (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # MemAvailable counts reclaimable cache, as the kernel would give it to us
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(device: torch.device) -> int | None:
    """:data:`DEFAULT_FRACTION` of :func:`free_memory` (None, no limit, when it is unknown)."""
    free = free_memory(device)
    return None if free is None else int(free * DEFAULT_FRACTION)


def states_held(horizon: int, every: int) -> int:
    """:math:`S(k) = \\lceil T/k \\rceil + k - 1`: the most states the sweep holds with a checkpoint every ``k``."""
    return math.ceil(horizon / every) + every - 1


def recomputed_steps(horizon: int, every: int) -> int:
    """Steps the sweep recomputes: :math:`T - \\lceil T/k \\rceil` (0 for ``k = 1``)."""
    return horizon - math.ceil(horizon / every)


@final
@dataclass(frozen=True)
class CheckpointPlan:
    """The checkpoint interval ``every`` chosen for a run, its regime, and the memory it needs."""

    every: int
    regime: str
    states: int
    state_bytes: int
    budget: int | None
    tape_bytes: int = 0

    @property
    def taped(self) -> bool:
        """Whether the sweep tapes whole segments (no separate recomputation)."""
        return self.tape_bytes > 0

    @property
    def whole_run(self) -> bool:
        """Whether the forward pass tapes the whole run (:data:`RUN_TAPED`): no checkpoints, no recomputation."""
        return self.regime == RUN_TAPED

    @property
    def bytes(self) -> int:
        """Memory at the sweep's peak: the states held, and one segment's tape if taped."""
        return self.states * self.state_bytes + self.every * self.tape_bytes

    def describe(self, horizon: int) -> str:
        """One line: regime, ``k``, states, memory against the budget, recomputed steps."""
        budget = "no budget" if self.budget is None else f"budget {format_bytes(self.budget)}"
        again = 0 if self.taped else recomputed_steps(horizon, self.every)
        return (f"{self.regime} (k={self.every}, {self.states} states, {format_bytes(self.bytes)} of {budget}, "
                f"{again} of {horizon} steps recomputed)")


def plan_checkpoints(horizon: int, state_bytes: int, budget: int | None,
                     tape_bytes: int | None = None) -> CheckpointPlan:
    """The cheapest regime that fits in ``budget`` bytes (see the module docstring).

    ``tape_bytes``: one step's graph for a taped segment, None where the sweep cannot tape (then
    the plan is the smallest ``k`` whose :math:`S(k)` states fit); with it, the whole run is taped
    when its ``T`` graphs fit.  ``budget`` None: no limit.
    Over budget even at :math:`k = \\sqrt T`: that ``k``, regime :data:`OVER_BUDGET`.

    Example:
        >>> plan_checkpoints(100, 1000, None).every
        1
        >>> plan_checkpoints(100, 1000, 19 * 1000).every  # S(10) = 19 states
        10
        >>> plan_checkpoints(100, 1000, 60 * 1000).every  # S(2) = 51 states
        2
        >>> plan_checkpoints(100, 1000, None, tape_bytes=4000).regime
        'whole run taped, nothing recomputed'
    """
    sqrt_k = max(1, round(math.sqrt(horizon)))
    if tape_bytes is not None:
        run = CheckpointPlan(horizon, RUN_TAPED, 1, state_bytes, budget, max(1, tape_bytes))
        if budget is None or run.bytes <= budget:
            return run
    if tape_bytes is not None and sqrt_k > 1:
        taped = CheckpointPlan(sqrt_k, TAPED, math.ceil(horizon / sqrt_k), state_bytes, budget, max(1, tape_bytes))
        if budget is None or taped.bytes <= budget:
            return taped
    fits = lambda k: budget is None or states_held(horizon, k) * state_bytes <= budget
    for k in range(1, sqrt_k + 1):
        if fits(k):
            regime = ALL_STORED if k == 1 else (SQRT if k == sqrt_k else SPACED)
            return CheckpointPlan(k, regime, states_held(horizon, k), state_bytes, budget)
    return CheckpointPlan(sqrt_k, OVER_BUDGET, states_held(horizon, sqrt_k), state_bytes, budget)


def tree_bytes(*trees: object) -> int:
    """Bytes of every tensor in the (nested) dicts ``trees``."""
    total = 0
    for tree in trees:
        if isinstance(tree, torch.Tensor):
            total += tree.numel() * tree.element_size()
        elif isinstance(tree, dict):
            total += tree_bytes(*tree.values())
    return total
