"""The abstract hypergradient backend and the inner-loop driver that runs any backend.

A backend holds configuration only.  What changes during a run lives in an explicit state object
that each call returns::

    state = backend.init(problem, schedule)
    for t, batch in problem.batches():
        state = backend.step(problem, schedule, state, t, batch)
    result = backend.hypergradient(problem, schedule, state)

``result.hypergrad[name][j]`` is :math:`\\partial L_{val}(\\theta_T) / \\partial \\lambda_{name, j}`,
the derivative of the validation loss at the final weights with respect to the j-th shared value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar, final

import torch
from torch import Tensor

from hpo.core.data import Batch
from hpo.core.problem import Buffers, InnerProblem
from hpo.core.schedule import Schedule
from hpo.optimizers.base import Params, State, UpdateRule
from hpo.optimizers.grouped import group_counts

S = TypeVar("S")


@final
@dataclass(frozen=True)
class InnerState:
    """Primal state of inner training after step ``t - 1``: weights, buffers, optimizer state."""

    params: Params
    buffers: Buffers
    opt_state: State
    t: int
    loss: Tensor


@final
@dataclass(frozen=True)
class HypergradResult:
    """What a backend returns at the end of an inner run."""

    hypergrad: dict[str, Tensor]
    val_loss: float
    val_acc: float
    steps: int
    diverged: bool = False
    info: dict[str, Any] | None = None


class HypergradientBackend(ABC, Generic[S]):
    """Computes the hypergradient of the validation loss with respect to a shared schedule."""

    name: ClassVar[str]
    #: Declared: whether the backend applies a clamp of the Hessian-tangent product (forward mode's ``hz_clip``).
    supports_hz_clip: ClassVar[bool] = False
    #: Declared: whether the backend runs data-parallel (``problem.comm`` set, see :mod:`hpo.runtime.distributed`).
    supports_data_parallel: ClassVar[bool] = False

    def check_rule(self, rule: UpdateRule) -> None:
        """Raise ``ValueError`` (one line) if this backend cannot run ``rule``; by default any rule."""

    @abstractmethod
    def init(self, problem: InnerProblem, schedule: Schedule) -> S:
        """State before inner step 0."""

    @abstractmethod
    def step(self, problem: InnerProblem, schedule: Schedule, state: S, t: int, batch: Batch) -> S:
        """Inner step ``t`` on minibatch ``(x, y)``; returns the new state."""

    @abstractmethod
    def inner(self, state: S) -> InnerState:
        """The primal inner state inside ``state``."""

    @abstractmethod
    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: S) -> HypergradResult:
        """Hypergradient of the validation loss at the final weights."""

    def finite(self, state: S) -> Tensor:
        """0-d bool tensor: whether the run is still finite (by default: the last minibatch loss).

        Backends that carry tangents also check them, so that a blow-up of the tangents stops the
        run even while the loss is still finite.
        """
        return torch.isfinite(self.inner(state).loss).all()


StepCallback = Callable[[int, InnerState], None]


def run_inner(
    backend: HypergradientBackend[Any],
    problem: InnerProblem,
    schedule: Schedule,
    on_step: StepCallback | None = None,
    check_every: int = 1,
) -> HypergradResult:
    """Run ``problem.horizon`` inner steps with ``backend`` and return its hypergradient.

    ``on_step(t, inner_state)`` is called after each step (for progress bars and logging).  Every
    ``check_every`` steps :meth:`HypergradientBackend.finite` checks the loss (and the tangents,
    for backends that carry them) in one host sync; when anything is non-finite the run stops
    early and the result has ``diverged=True`` and ``info["diverged_at"]`` (steps run) and
    ``info["divergence"]`` (``"loss"`` or ``"tangents"``).  Before step ``t`` the global RNG is
    seeded by :meth:`InnerProblem.seed_step` (dropout masks replay exactly); the caller's RNG state
    is restored afterwards.
    """
    try:
        schedule.check_groups(group_counts(problem.rule))
    except ValueError as e:
        raise ValueError(f"the schedule does not fit the rule's parameter groups: {e}") from None
    state = backend.init(problem, schedule)
    diverged = False
    cause: dict[str, Any] = {}
    with torch.random.fork_rng(devices=rng_devices(problem)):  # the caller's global RNG is left as it was
        for t, batch in problem.batches():
            problem.seed_step(t)  # dropout masks of step t depend on (seed, rank, t) only: replayable
            state = backend.step(problem, schedule, state, t, batch)
            inner = backend.inner(state)
            if on_step is not None:
                on_step(t, inner)
            due = (t + 1) % check_every == 0 or t + 1 == problem.horizon
            if due and not bool(backend.finite(state)):
                diverged = True
                cause = {"diverged_at": t + 1, "divergence": "loss" if not is_finite(inner.loss) else "tangents"}
                break
        result = backend.hypergradient(problem, schedule, state)
    return replace(result, diverged=diverged or result.diverged, info={**(result.info or {}), **cause})


def rng_devices(problem: InnerProblem) -> list[torch.device]:
    """The CUDA devices whose RNG a loop over ``problem``'s steps reseeds (none for CPU weights)."""
    devices = {p.device for p in problem.params.values() if p.device.type == "cuda"}
    return sorted(devices, key=str)


def is_finite(x: Tensor) -> bool:
    """Whether a tensor holds only finite values (one host sync)."""
    return bool(torch.isfinite(x).all())
