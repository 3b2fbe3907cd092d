"""``auto``: the exact backend with the lowest predicted cost, chosen per inner run.

At :meth:`AutoBackend.init` the cost model of :func:`hpo.backends.auto.choose_backend` is fed the
problem's numbers: shared values :math:`N`, weights :math:`P`, device, horizon :math:`T` and the
memory budget (``memory_budget``, default half the free memory), and the chosen backend then does
all the work; ``reverse-checkpointed`` gets the same budget, so it runs the regime the reason names.  Both candidates compute the same
exact hypergradient, so the choice changes the cost, not the result (up to round-off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from hpo.backends.auto import BackendChoice, choose_backend
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.memory_budget import default_budget, parse_bytes
from hpo.backends.reverse_checkpointed import TAPE_MARGIN, ReverseCheckpointedBackend, SavedBytes, taped_step
from hpo.core.backend import HypergradientBackend, HypergradResult, InnerState
from hpo.core.data import Batch
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step
from hpo.optimizers.grouped import group_counts


@final
@dataclass(frozen=True)
class AutoState:
    """The chosen backend, why it was chosen, and its own state."""

    backend: HypergradientBackend[Any]
    choice: BackendChoice
    state: Any


def tape_bytes(problem: InnerProblem) -> int | None:
    """One taped step's graph, as :class:`~hpo.backends.reverse_checkpointed.ReverseCheckpointedBackend`
    measures it: what a probe of taped step 0 (initial weights and values, minibatch 0) saves,
    times :data:`~hpo.backends.reverse_checkpointed.TAPE_MARGIN`; None where reverse mode cannot tape
    (a ``curvature`` rule, a data-parallel run).  The global RNG is left as it was."""
    if problem.rule.curvature is not None or problem.comm is not None:
        return None
    counter = SavedBytes()
    ref = next(iter(problem.params.values()))
    values = Schedule.initial(problem.rule, groups=group_counts(problem.rule)).values_like(ref)
    hyper = hyper_at_step({k: v.detach().requires_grad_() for k, v in values.items()}, 0, problem.horizon)
    with (torch.random.fork_rng(devices=[ref.device] if ref.device.type == "cuda" else []),
          torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)):
        taped_step(problem.rule, problem.loss_fn, problem.grad_clip, problem.params, problem.buffers,
                   problem.rule.init(problem.params), hyper, 0, problem.batch(0))
    return int(TAPE_MARGIN * counter.total)


@final
class AutoBackend(HypergradientBackend[AutoState]):
    """``auto``: forward mode or checkpointed reverse mode, whichever the cost model predicts cheaper.

    ``compile`` is passed on to the chosen backend; ``memory_budget`` (bytes, or a size such as
    ``"512MiB"``; default half the free memory) bounds the stored states (and forward mode's tangents).

    Example:
        >>> AutoBackend().name
        'auto'
    """

    name: ClassVar[str] = "auto"
    supports_hz_clip: ClassVar[bool] = True  # it then picks forward mode
    supports_data_parallel: ClassVar[bool] = True  # both exact backends it picks do

    def __init__(self, compile: str | None = None, memory_budget: int | str | None = None) -> None:
        self.compile = compile
        self.memory_budget = None if memory_budget is None else parse_bytes("memory_budget", memory_budget)

    def budget(self, device: torch.device) -> int | None:
        """``memory_budget``, or half the free memory of ``device``."""
        return self.memory_budget if self.memory_budget is not None else default_budget(device)

    def choose(self, problem: InnerProblem, schedule: Schedule) -> BackendChoice:
        """The backend the cost model picks for ``problem`` and ``schedule``, with its one-line reason."""
        ref = next(iter(problem.params.values()))
        if problem.hz_clip is not None:
            name = "forward-manual" if problem.rule.hand_tangent else "forward-jvp"
            return BackendChoice(name, "a Hessian-tangent clamp is set, which only forward mode has")
        return choose_backend(
            tape_bytes=tape_bytes(problem),
            n_values=schedule.size, n_params=sum(p.numel() for p in problem.params.values()),
            device_type="cuda" if ref.device.type == "cuda" else "cpu", free_bytes=self.budget(ref.device),
            horizon=problem.horizon,
            has_hand_tangent=problem.rule.hand_tangent, dtype_bytes=ref.element_size())

    def build(self, name: str, budget: int | None = None) -> HypergradientBackend[Any]:
        """The backend called ``name`` (``reverse-checkpointed`` with the memory ``budget``)."""
        if name == "reverse-checkpointed":
            return ReverseCheckpointedBackend(compile=self.compile, memory_budget=budget)
        classes = {"forward-manual": ForwardManualBackend, "forward-jvp": ForwardJvpBackend}
        return classes[name](compile=self.compile)

    def init(self, problem: InnerProblem, schedule: Schedule) -> AutoState:
        """Choose, then start the chosen backend."""
        choice = self.choose(problem, schedule)
        if problem.comm is not None:  # free memory may differ between ranks: every rank takes rank 0's choice
            choice = problem.comm.from_rank0(choice)
        backend = self.build(choice.name, self.budget(next(iter(problem.params.values())).device))
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
