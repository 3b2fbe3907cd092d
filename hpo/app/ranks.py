"""The ranks of a data-parallel run: the checks every rank makes alike, rank 0's go, the silent followers.

Rank 0 does all the writing (log directory, checkpoints, TensorBoard, ``schedule.json``, the
retrain); ranks ``1..N-1`` run the same outer loop on their shards, which needs the same collective
calls in the same order, and write nothing.  Before the search, rank 0 broadcasts either "go" or
the configuration error that stopped it (its log directory holds a run, say), so that no rank
waits for a partner that has already given up: every rank then fails with the same line.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import final

from hpo.app.checkpoint import Checkpoint
from hpo.app.config import RunConfig
from hpo.app.plan import RunPlan
from hpo.core.callbacks import CallbackList
from hpo.errors import ConfigError
from hpo.runtime.distributed import Communicator, leave
from hpo.search.fds import FDSResult, run_fds
from hpo.search.inner_runs import FDSConfig
from hpo.tasks.base import Task

#: Settings that may differ between ranks (each process's own thread count).
MAY_DIFFER_BETWEEN_RANKS = ("threads",)


def check_launch(config: RunConfig, comm: Communicator) -> None:
    """Every rank has the same settings and the backend runs data-parallel; else ``ConfigError`` on every rank."""
    comm.same_everywhere({k: v for k, v in config.to_dict().items() if k not in MAY_DIFFER_BETWEEN_RANKS})
    backend = config.resolved_backend
    if not backend.supports_data_parallel:
        raise ConfigError("backend", f"{backend.name} runs in one process only; a data-parallel run needs "
                                     f"auto, forward-manual, forward-jvp or reverse-checkpointed")


def sharded(fds: FDSConfig, task: Task, comm: Communicator) -> FDSConfig:
    """``fds`` with the communicator set, once the minibatch is known to split evenly over the ranks."""
    batch = fds.batch_size or task.batch_size
    if batch % comm.world_size:
        raise ConfigError("batch_size", f"a minibatch of {batch} does not split evenly over {comm.world_size} "
                                        f"processes; choose a multiple of {comm.world_size}")
    return replace(fds, comm=comm)


def check_processes(checkpoint: Checkpoint | None, world_size: int) -> None:
    """A run resumes with as many processes as it was started with (the shards, hence the numbers, depend on it)."""
    if checkpoint is not None and checkpoint.processes != world_size:
        raise ConfigError("resume", f"the run was made by {checkpoint.processes} process(es) and this launch has "
                                    f"{world_size}; resume it with torchrun --nproc-per-node {checkpoint.processes}")


@final
class StartSignal:
    """Rank 0's verdict before the search, broadcast once: ``go`` or the error that stopped it."""

    def __init__(self, comm: Communicator | None) -> None:
        self.comm = comm
        self.sent = False

    def go(self) -> None:
        """Tell the other ranks to start the search (nothing in one process)."""
        self._send(None)

    def fail(self, error: ConfigError) -> None:
        """Tell the other ranks that rank 0 stopped with ``error``; they raise the same one."""
        self._send((error.field, error.message))

    def _send(self, verdict: tuple[str, str] | None) -> None:
        if self.comm is not None and not self.sent:
            self.sent = True
            self.comm.from_rank0(verdict)


def wait_for_rank0(comm: Communicator) -> None:
    """On ranks other than 0: wait for :class:`StartSignal`; raise rank 0's ``ConfigError`` if it sent one."""
    verdict = comm.from_rank0(None)
    if verdict is not None:
        field, message = verdict
        raise ConfigError(field, message)


def follow(plan: RunPlan, checkpoint: Checkpoint | None) -> FDSResult:
    """A rank other than 0: the outer loop of rank 0, on this rank's shards, silent and writing nothing.

    ``plan.rule`` is the run's rule, wrapped for its parameter groups as on rank 0.  Every collective of
    rank 0's search happens here in the same order, so the schedules agree bit for bit; the retrain
    and every output are rank 0's.
    """
    fds = plan.fds
    if fds.comm is not None:
        wait_for_rank0(fds.comm)
    history = checkpoint.history if checkpoint is not None else ()
    result = run_fds(plan.task, plan.rule, plan.backend, fds, CallbackList(), state=plan.state, history=history)
    leave(fds.comm)  # with rank 0, which leaves right after its search too
    return result


def follower_logdir(config: RunConfig) -> Path:
    """The log directory a follower reports (rank 0's when given; it writes nothing there)."""
    return Path(config.logdir) if config.logdir is not None else Path(".")
