"""The FDS outer loop: hypergradient of the whole inner run, sign-based update, repeat.

Each outer step ``k`` re-initialises the network, splits a fresh validation set off the training
set, runs ``inner_steps[k]`` inner steps with the backend, and applies :func:`hpo.outer.sign_update`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import final

import torch

from hpo import checks
from hpo.backend import HypergradientBackend, HypergradResult, run_inner
from hpo.callbacks import CallbackList, Callbacks, OuterRecord
from hpo.coordinates import LOG_STEP, OUTER_SPACES, kinds_of
from hpo.distributed import Communicator
from hpo.errors import ConfigError
from hpo.grouping import check_groups, grouped_rule
from hpo.optimizers.base import HyperSpec, UpdateRule
from hpo.optimizers.grouped import GroupedRule, group_counts, group_names
from hpo.outer import OuterState, backtrack, converged, safe_direction, sign_update
from hpo.problem import InnerProblem
from hpo.schedule import Schedule, check_counts, segment_starts
from hpo.tasks.base import Task, init_model, model_functions, split_state

#: What the outer loop does after a diverged inner run (:func:`after_divergence`).
DIVERGENCE_RULES = ("lower", "backtrack")


@final
@dataclass(frozen=True)
class FDSConfig:
    """Settings of the outer loop.  Empty ``counts``/``init``/``steps`` take the rule's defaults.

    ``inner_steps[k]`` is the horizon of outer step ``k`` (the last entry repeats), e.g.
    ``(62, 620)`` for one epoch, then ten.  ``groups`` maps a type to its grouping rule
    (:mod:`hpo.grouping`: ``layer``, ``bias-vs-rest`` or patterns; absent types are shared over all
    parameters); ``counts`` is then the number of segments of every group.  ``comm`` (a
    data-parallel run's place in its process group, :mod:`hpo.distributed`; None in one process)
    is not a setting: the run sets it.
    """

    outer_steps: int = 10
    inner_steps: tuple[int, ...] = (300,)
    counts: Mapping[str, int] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, float] = field(default_factory=dict)
    decay: float = 0.5
    grow: float = 1.0
    magnitude: float = 0.0
    divergence: str = "lower"
    outer_space: str = "linear"
    converged_frac: float = 0.05
    val_frac: float = 0.05
    batch_size: int | None = None
    seed: int = 0
    grad_clip: float | None = None
    hz_clip: float | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    groups: Mapping[str, str] = field(default_factory=dict)
    comm: Communicator | None = field(default=None, compare=False, repr=False)

    def horizon(self, k: int) -> int:
        """Inner steps of outer step ``k``."""
        return self.inner_steps[min(k, len(self.inner_steps) - 1)]

    def validate(self, rule: UpdateRule) -> None:
        """Raise :class:`~hpo.errors.ConfigError` (naming the field) on any inconsistent setting."""
        checks.integer("outer_steps", self.outer_steps)
        checks.int_tuple("inner_steps", self.inner_steps)
        checks.open_interval("decay", self.decay, 0.0, 1.0)
        checks.at_least("grow", self.grow, 1.0)
        checks.off_or_at_least("magnitude", self.magnitude, 1.0)
        checks.choice("divergence", self.divergence, DIVERGENCE_RULES)
        checks.choice("outer_space", self.outer_space, OUTER_SPACES)
        checks.positive("converged_frac", self.converged_frac)
        checks.open_interval("val_frac", self.val_frac, 0.0, 1.0)
        checks.optional_integer("batch_size", self.batch_size)
        checks.optional_positive("grad_clip", self.grad_clip)
        checks.optional_positive("hz_clip", self.hz_clip)
        for name, given in (("counts", self.counts), ("init", self.init), ("steps", self.steps)):
            checks.names_of(name, given, rule.hyper_names, rule.name)
        check_groups("groups", self.groups, rule.hyper_names, rule.name)
        try:
            check_counts(self.resolved_counts(rule), min(self.inner_steps))
        except ValueError as e:
            raise ConfigError("counts", str(e)) from None
        init = self.resolved_init(rule)
        for s in rule.hyperparameters:
            x = init[s.name]
            if not s.contains(x):
                raise ConfigError("init", f"{s.name} = {x:g} is out of range ({s.range_text()})")
            st = float(self.steps.get(s.name, s.step))
            if not (st > 0 and math.isfinite(st)):
                raise ConfigError("steps", f"the step of {s.name} must be positive, got {st:g}")

    def resolved_counts(self, rule: UpdateRule) -> dict[str, int]:
        """Count of shared values per type: the override or the rule's default."""
        return {s.name: int(self.counts.get(s.name, s.count)) for s in rule.hyperparameters}

    def resolved_init(self, rule: UpdateRule) -> dict[str, float]:
        """Starting value per type: the override, else the rule's default (``linear`` space) or its
        hand-picked setting (``log`` space, where a start at 0 could not move multiplicatively)."""
        start = dict(rule.hand_picked or {}) if self.outer_space == "log" else {}
        return {s.name: float(self.init.get(s.name, start.get(s.name, s.init))) for s in rule.hyperparameters}

    def resolved_steps(self, rule: UpdateRule, kinds: Mapping[str, str] | None = None) -> dict[str, float]:
        """Initial outer step per type: the override, else ``ln 2`` for a multiplicative coordinate
        (``kinds``, :mod:`hpo.coordinates`) and the rule's default for an additive one."""
        kinds = kinds or {}
        default = {s.name: LOG_STEP if kinds.get(s.name, "linear") != "linear" else s.step for s in rule.hyperparameters}
        return {s.name: float(self.steps.get(s.name, default[s.name])) for s in rule.hyperparameters}


@final
@dataclass(frozen=True)
class FDSResult:
    """The learned schedule and the record of every outer step."""

    schedule: Schedule
    state: OuterState
    history: tuple[OuterRecord, ...]


def validation_split(n: int, frac: float, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a fresh random split for outer step ``k``; val has ``ceil(frac n)``."""
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(k))
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, math.ceil(frac * n))
    return perm[n_val:], perm[:n_val]


def make_problem(task: Task, rule: UpdateRule, config: FDSConfig, k: int) -> InnerProblem:
    """The inner problem of outer step ``k``: fresh network, fresh validation split."""
    dev = torch.device(config.device)
    model = init_model(task, config.seed * 1000 + k, config.dtype, dev)
    loss_fn, eval_fn = model_functions(model)
    params, buffers = split_state(model)
    tr, va = validation_split(task.train_x.shape[0], config.val_frac, config.seed, k)
    x = task.train_x.to(dev, config.dtype)
    y = task.train_y.to(dev)
    tr, va = tr.to(dev), va.to(dev)
    return InnerProblem(
        loss_fn=loss_fn, eval_fn=eval_fn, params=params, buffers=buffers, rule=rule,
        train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
        horizon=config.horizon(k), batch_size=config.batch_size or task.batch_size,
        seed=config.seed * 1000 + k, grad_clip=config.grad_clip, hz_clip=config.hz_clip,
        augment=task.augment, comm=config.comm,
    )


@contextlib.contextmanager
def seeded_rng(seed: int, device: str | torch.device) -> Iterator[None]:
    """Run the block with torch's global RNGs (CPU and ``device``) seeded, restoring them afterwards."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def initial_state(rule: UpdateRule, config: FDSConfig) -> OuterState:
    """Outer state before the first step: the rule's (or overridden) counts, initial values and steps.

    A grouped type (``rule`` a :class:`~hpo.optimizers.grouped.GroupedRule`) starts as a
    ``(groups, segments)`` table of its initial value.
    """
    sched = Schedule.initial(rule, config.resolved_counts(rule), config.resolved_init(rule), group_counts(rule))
    return start_at(sched.values, rule, config)


def start_at(values: Mapping[str, torch.Tensor], rule: UpdateRule, config: FDSConfig) -> OuterState:
    """Outer state before the first step from the starting ``values``: each type's coordinate
    (:func:`hpo.coordinates.kinds_of`, from ``config.outer_space`` and the values) and initial step."""
    kinds = kinds_of({s.name: s for s in rule.hyperparameters}, config.outer_space, values)
    return OuterState.start(values, config.resolved_steps(rule, kinds), kinds)


def task_parameters(task: Task, config: FDSConfig) -> dict[str, torch.Tensor]:
    """The named parameters of ``task``'s model (what a grouping rule is resolved against)."""
    return dict(init_model(task, config.seed * 1000, config.dtype, "cpu").named_parameters())


def rule_with_groups(task: Task, rule: UpdateRule, config: FDSConfig) -> UpdateRule:
    """``rule`` wrapped for ``config.groups`` on ``task``'s parameters (itself when nothing is grouped).

    An unmatched parameter or an empty group is a :class:`~hpo.errors.ConfigError` on ``groups``.
    """
    if not config.groups or isinstance(rule, GroupedRule):
        return rule
    return grouped_rule(rule, config.groups, task_parameters(task, config))


def outer_step(
    task: Task,
    rule: UpdateRule,
    backend: HypergradientBackend,
    config: FDSConfig,
    state: OuterState,
    callbacks: Callbacks,
) -> tuple[OuterState, OuterRecord]:
    """Run one outer step from ``state``; returns the new state and its record (not yet reported)."""
    k = state.k
    problem = make_problem(task, rule, config, k)
    schedule = Schedule({n: v.clone() for n, v in state.values.items()})
    callbacks.on_outer_start(k, problem.horizon)
    start = time.perf_counter()
    rank = config.comm.rank if config.comm is not None else 0  # each rank's shard gets its own dropout masks
    with seeded_rng(config.seed * 1000 + k + 500_009 + 7919 * rank, config.device):  # the same draws on resume
        result = run_inner(backend, problem, schedule,
                           on_step=lambda t, inner: callbacks.on_inner_step(k, t, inner.loss))
    hg = result.hypergrad
    specs = {s.name: s for s in rule.hyperparameters}
    extra: dict[str, object] = {}
    diverged = result.diverged or not all(bool(torch.isfinite(h).all()) for h in hg.values())
    if diverged:
        new, extra = after_divergence(state, result, problem.horizon, specs, config)
    else:
        new = replace(sign_update(state, hg, specs, config.decay, config.grow, config.magnitude), good=dict(state.values))
    if result.info and "auto" in result.info:
        extra = {**extra, "backend": result.info["auto"]}
    record = OuterRecord(
        k=k,
        horizon=problem.horizon,
        steps_run=result.steps,
        val_loss=result.val_loss,
        val_acc=result.val_acc,
        hypergrad={n: plain_list(h) for n, h in result.hypergrad.items()},
        values={n: plain_list(v) for n, v in new.values.items()},
        step_sizes={n: plain_list(v) for n, v in new.steps.items()},
        diverged=diverged,
        seconds=time.perf_counter() - start,
        converged=converged(new, config.converged_frac),
        extra=extra,
        groups={n: list(g) for n, g in group_names(rule).items()},
    )
    return new, record


def after_divergence(state: OuterState, result: HypergradResult, horizon: int, specs: Mapping[str, HyperSpec],
                     config: FDSConfig) -> tuple[OuterState, dict[str, object]]:
    """The outer state after a diverged inner run, and what the record says about it.

    Only values whose segment had started when the run blew up can have caused it.  With
    ``config.divergence == "backtrack"`` they go halfway back to the last values that trained
    (:func:`hpo.outer.backtrack`); with ``"lower"``, or when there is nothing to go back to, each
    moves to its type's safe side (:func:`hpo.outer.safe_direction`), a lowered value to at most
    half of what it was (:func:`halve_lowered`), and the good point is forgotten.
    """
    info = result.info or {}
    steps_run = int(info.get("diverged_at", result.steps))
    started = {n: torch.tensor(segment_starts(horizon, v.shape[-1])) < steps_run for n, v in state.values.items()}
    extra: dict[str, object] = {"diverged_at": steps_run, "divergence": str(info.get("divergence", "hypergradient"))}
    back = backtrack(state, started, config.decay) if config.divergence == "backtrack" else None
    if back is not None:
        moved = {n: back.values[n] != state.values[n] for n in state.values}
        return back, {**extra, "backtracked": {n: positions(m) for n, m in moved.items() if m.any()}}
    hg = safe_direction(result.hypergrad, specs, started)
    new = sign_update(state, hg, specs, config.decay, config.grow)
    new = replace(new, values={n: specs[n].clamp(v) for n, v in halve_lowered(state.values, new.values, hg).items()},
                  good=None)
    return new, {**extra, "lowered": {n: positions(h > 0) for n, h in hg.items() if (h > 0).any()},
                 "raised": {n: positions(h < 0) for n, h in hg.items() if (h < 0).any()}}


def plain_list(x: torch.Tensor) -> list:
    """A ``(segments,)`` tensor as a list of floats, a ``(groups, segments)`` one as a list of lists."""
    return x.detach().cpu().to(torch.float64).tolist()


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


def run_fds(
    task: Task,
    rule: UpdateRule,
    backend: HypergradientBackend,
    config: FDSConfig,
    callbacks: Callbacks | None = None,
    state: OuterState | None = None,
    history: tuple[OuterRecord, ...] = (),
    after_step: Callable[[OuterState, tuple[OuterRecord, ...]], None] | None = None,
) -> FDSResult:
    """Run outer steps until ``config.outer_steps`` are done or every value has converged.

    With ``config.groups`` set, ``rule`` is wrapped for the groups of ``task``'s parameters
    (:func:`rule_with_groups`) and every grouped type is a ``(groups, segments)`` table.

    Pass ``state`` and ``history`` to continue an earlier run (e.g. from a checkpoint); a run whose
    last record has converged does not continue.  ``after_step(state, history)`` is called after
    every outer step (e.g. to write a checkpoint).  Outer step ``k`` depends only on ``state``,
    ``config.seed`` and ``k`` (network init, validation split, batch order and any other random
    draws are seeded from them), so a resumed run repeats an uninterrupted one exactly.
    """
    config.validate(rule)
    rule = rule_with_groups(task, rule, config)
    callbacks = callbacks or CallbackList()
    state = state or initial_state(rule, config)
    records = list(history)
    while state.k < config.outer_steps and not (records and records[-1].converged):
        state, record = outer_step(task, rule, backend, config, state, callbacks)
        records.append(record)
        if after_step is not None:  # checkpoint first: a logging failure then loses no finished step
            after_step(state, tuple(records))
        callbacks.on_outer_step(record)
    return FDSResult(Schedule(dict(state.values), group_names(rule)), state, tuple(records))
