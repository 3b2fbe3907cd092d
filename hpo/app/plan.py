"""A run's configuration resolved once, into the objects the run uses.

:class:`~hpo.app.config.RunConfig` is plain data (names and numbers, what a checkpoint stores);
building it checks every field and resolves the rule, the backend, the outer optimizer and the
outer-loop settings.  :func:`make_plan` adds what needs the data: it loads the task, wraps the
rule for the parameter groups, sets the data-parallel shard and finds the starting outer state.
From there every layer below takes these objects as they are; nothing re-derives them from the
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from hpo.app.checkpoint import Checkpoint
from hpo.app.config import RunConfig
from hpo.app.task_loading import check_split, load_task
from hpo.core.backend import HypergradientBackend
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import group_counts
from hpo.outer.base import OuterOptimizer, OuterState
from hpo.runtime.device import DTYPES
from hpo.runtime.distributed import Communicator, RankError
from hpo.search.fds import initial_state, start_at
from hpo.search.inner_runs import FDSConfig, rule_with_groups
from hpo.tasks.base import Task


@final
@dataclass(frozen=True)
class RunPlan:
    """Everything one run uses: the task's data, the rule (wrapped for its parameter groups), the
    backend, the outer-loop settings (with the outer optimizer, ``fds.outer``, and, data-parallel,
    this rank's place, ``fds.comm``) and the outer state the search starts from."""

    config: RunConfig
    task: Task
    rule: UpdateRule
    backend: HypergradientBackend
    fds: FDSConfig
    state: OuterState

    @property
    def outer(self) -> OuterOptimizer:
        """The outer optimizer."""
        return self.fds.outer


def make_plan(config: RunConfig, checkpoint: Checkpoint | None, comm: Communicator | None) -> RunPlan:
    """Load and check the task's data, group the rule, and find the starting state (a ``ConfigError``
    naming the field on any mismatch, before anything is written).  ``comm`` (a data-parallel run)
    only names the rank in an error; :func:`hpo.app.ranks.sharded` then sets the shard."""
    fds = config.fds()
    try:
        task = load_task(config.task, config.task_options(), DTYPES[config.dtype], fds.device, config.loss_hypers)
    except ConfigError as e:
        if comm is None or comm.rank == 0:
            raise
        raise RankError(f"rank {comm.rank}: {e}") from None  # e.g. this node lacks the data: say which rank
    check_split(len(task.train_rows), fds.val_frac, fds.batch_size or task.batch_size)
    rule = rule_with_groups(task, config.resolved_rule, fds)  # an unmatched parameter fails here, before any write
    fds.validate(rule)  # a module:attr problem's own loss hyperparameters are known only now
    state = checkpoint.state if checkpoint is not None else start_state(config, rule)
    try:
        Schedule(dict(state.values)).check_groups(group_counts(rule))
    except ValueError as e:
        raise ConfigError("resume", f"the checkpoint does not fit the parameter groups: {e}") from None
    return RunPlan(config, task, rule, config.resolved_backend, fds, state)


def start_state(config: RunConfig, rule: UpdateRule | None = None) -> OuterState:
    """The outer state before step 0: the starting schedule (or the rule's defaults) and initial steps.

    ``rule`` (default: the configuration's) may be grouped; a shared type of the starting
    schedule is then copied to every group of its type.
    """
    rule = rule or config.resolved_rule
    fds = config.fds()
    if config.initial_schedule is not None:
        try:
            start = config.initial_schedule.broadcast_groups(group_counts(rule))
        except ValueError as e:
            raise ConfigError("schedule_init", f"{config.schedule_init}: {e}") from None
        return start_at(start.values, rule, fds)
    return initial_state(rule, fds)
