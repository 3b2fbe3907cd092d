"""``auto``: the exact backend with the lowest predicted cost, chosen per inner run.

At :meth:`AutoBackend.init` the cost model of :func:`hpo.backends.auto.choose_backend` is fed the
problem's numbers: shared values :math:`N`, weights :math:`P`, device, horizon :math:`T` and the
free memory, and the chosen backend then does all the work.  Both candidates compute the same
exact hypergradient, so the choice changes the cost, not the result (up to round-off).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from hpo.backends.auto import BackendChoice, choose_backend
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule


@final
@dataclass(frozen=True)
class AutoState:
    """The chosen backend, why it was chosen, and its own state."""

    backend: HypergradientBackend[Any]
    choice: BackendChoice
    state: Any


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: the CUDA allocator's view, or the host's available pages (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # MemAvailable counts reclaimable cache, as the kernel would give it to us
        for line in open("/proc/meminfo").read().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@final
class AutoBackend(HypergradientBackend[AutoState]):
    """``auto``: forward mode or checkpointed reverse mode, whichever the cost model predicts cheaper.

    ``compile`` is passed on to the chosen backend.

    Example:
        >>> AutoBackend().name
        'auto'
    """

    name: ClassVar[str] = "auto"
    supports_hz_clip: ClassVar[bool] = True  # it then picks forward mode
    supports_data_parallel: ClassVar[bool] = True  # both exact backends it picks do

    def __init__(self, compile: str | None = None) -> None:
        self.compile = compile

    def choose(self, problem: InnerProblem, schedule: Schedule) -> BackendChoice:
        """The backend the cost model picks for ``problem`` and ``schedule``, with its one-line reason."""
        ref = next(iter(problem.params.values()))
        if problem.hz_clip is not None:
            name = "forward-manual" if problem.rule.hand_tangent else "forward-jvp"
            return BackendChoice(name, "a Hessian-tangent clamp is set, which only forward mode has")
        return choose_backend(
            n_values=schedule.size, n_params=sum(p.numel() for p in problem.params.values()),
            device_type="cuda" if ref.device.type == "cuda" else "cpu", free_bytes=free_memory(ref.device), horizon=problem.horizon,
            has_hand_tangent=problem.rule.hand_tangent, dtype_bytes=ref.element_size())

    def build(self, name: str) -> HypergradientBackend[Any]:
        """The backend called ``name``."""
        classes = {"forward-manual": ForwardManualBackend, "forward-jvp": ForwardJvpBackend,
                   "reverse-checkpointed": ReverseCheckpointedBackend}
        return classes[name](compile=self.compile)

    def init(self, problem: InnerProblem, schedule: Schedule) -> AutoState:
        """Choose, then start the chosen backend."""
        choice = self.choose(problem, schedule)
        if problem.comm is not None:  # free memory may differ between ranks: every rank takes rank 0's choice
            choice = problem.comm.from_rank0(choice)
        backend = self.build(choice.name)
        return AutoState(backend, choice, backend.init(problem, schedule))

    def step(self, problem: InnerProblem, schedule: Schedule, state: AutoState, t: int, batch: Batch) -> AutoState:
        """The chosen backend's step."""
        return replace(state, state=state.backend.step(problem, schedule, state.state, t, batch))

    def inner(self, state: AutoState) -> InnerState:
        """The chosen backend's primal state."""
        return state.backend.inner(state.state)

    def finite(self, state: AutoState) -> Tensor:
        """The chosen backend's finiteness check."""
        return state.backend.finite(state.state)

    def hypergradient(self, problem: InnerProblem, schedule: Schedule, state: AutoState) -> HypergradResult:
        """The chosen backend's hypergradient; ``info["auto"]`` names the choice."""
        result = state.backend.hypergradient(problem, schedule, state.state)
        return replace(result, info={**(result.info or {}), "auto": state.choice.name})
