"""The inner run of outer step (or trial) ``k``, the same for every search method.

Each outer step ``k`` re-initialises the network (seed ``1000 s + k``), splits a fresh
validation set of ``ceil(val_frac n)`` examples off the training set, and trains for
``inner_steps[k]`` steps; FDS differentiates that run, the black-box searches only score it.
:class:`FDSConfig` holds the settings of these runs and of the FDS outer loop around them
(which outer optimizer, :mod:`hpo.outer`; what to do after a divergence).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import final

import torch

from hpo import checks
from hpo.core.grouping import check_groups, grouped_rule
from hpo.core.problem import InnerProblem
from hpo.core.schedule import check_counts
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import GroupedRule
from hpo.optimizers.loss_hypers import WithLossHypers, example_names, rule_of
from hpo.outer.base import OuterOptimizer
from hpo.outer.coordinates import LOG_STEP, OUTER_SPACES
from hpo.outer.divergence import DIVERGENCE_RULES
from hpo.outer.sign import SignDescent
from hpo.runtime.distributed import Communicator
from hpo.tasks.base import Task, init_model, layer_names, model_functions, split_state, stateful_loss


@final
@dataclass(frozen=True)
class FDSConfig:
    """Settings of the inner runs and the outer loop.  Empty ``counts``/``init``/``steps`` take the rule's defaults.

    ``outer`` is the outer optimizer (:mod:`hpo.outer`; default the authors' sign update),
    ``divergence`` the policy after a diverged run (:mod:`hpo.outer.divergence`) and
    ``outer_space`` the coordinates of the steps (:mod:`hpo.outer.coordinates`).

    ``inner_steps[k]`` is the horizon of outer step ``k`` (the last entry repeats), e.g.
    ``(62, 620)`` for one epoch, then ten.  ``groups`` maps a type to its grouping rule
    (:mod:`hpo.core.grouping`: ``layer``, ``bias-vs-rest`` or patterns; absent types are shared over all
    parameters); ``counts`` is then the number of segments of every group.  ``comm`` (a
    data-parallel run's place in its process group, :mod:`hpo.runtime.distributed`; None in one process)
    is not a setting: the run sets it.
    """

    outer_steps: int = 10
    inner_steps: tuple[int, ...] = (300,)
    counts: Mapping[str, int] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, float] = field(default_factory=dict)
    outer: OuterOptimizer = field(default_factory=SignDescent)
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
        try:
            self.outer.check()
        except ValueError as e:
            raise ConfigError("outer_options", f"{self.outer.name}: {e}") from None
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
        (``kinds``, :mod:`hpo.outer.coordinates`) and the rule's default for an additive one."""
        kinds = kinds or {}
        default = {s.name: LOG_STEP if kinds.get(s.name, "linear") != "linear" else s.step for s in rule.hyperparameters}
        return {s.name: float(self.steps.get(s.name, default[s.name])) for s in rule.hyperparameters}


def validation_split(n: int, frac: float, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a fresh random split for outer step ``k``; val has ``ceil(frac n)``."""
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(k))
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, math.ceil(frac * n))
    return perm[n_val:], perm[:n_val]


def make_problem(task: Task, rule: UpdateRule, config: FDSConfig, k: int) -> InnerProblem:
    """The inner problem of outer step ``k``: fresh network, fresh validation split (or the problem's own
    validation set).  With per-example loss hyperparameters, each batch carries its rows' training-set
    indices (``example_ids``)."""
    dev = torch.device(config.device)
    model = init_model(task, config.seed * 1000 + k, config.dtype, dev)
    loss_fn, eval_fn = model_functions(model, task)
    params, buffers = split_state(model)
    data = task.train_rows.to(config.dtype, dev)
    if task.val_rows is not None:  # the problem's own validation set: train on all of train
        tr = torch.arange(len(data))
        train, val = data, task.val_rows.to(config.dtype, dev)
    else:
        tr, va = validation_split(len(data), config.val_frac, config.seed, k)
        train, val = data.subset(tr), data.subset(va)
    return InnerProblem(
        loss_fn=loss_fn, eval_fn=eval_fn, params=params, buffers=buffers, rule=rule,
        train=train, val=val, example_ids=tr if example_names(rule) else None,
        horizon=config.horizon(k), batch_size=config.batch_size or task.batch_size,
        seed=config.seed * 1000 + k, grad_clip=config.grad_clip, hz_clip=config.hz_clip,
        score_fn=task.score_fn(), model_loss=stateful_loss(task), comm=config.comm,
    )


@contextlib.contextmanager
def seeded_rng(seed: int, device: str | torch.device) -> Iterator[None]:
    """Run the block with torch's global RNGs (CPU and ``device``) seeded, restoring them afterwards."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def task_parameters(task: Task, config: FDSConfig) -> dict[str, torch.Tensor]:
    """The named parameters of ``task``'s model (what a grouping rule is resolved against)."""
    return dict(init_model(task, config.seed * 1000, config.dtype, "cpu").named_parameters())


def rule_with_groups(task: Task, rule: UpdateRule, config: FDSConfig) -> UpdateRule:
    """``rule`` wrapped for ``config.groups`` on ``task``'s parameters, then joined to the task's loss
    hyperparameters (:class:`~hpo.optimizers.loss_hypers.WithLossHypers`, their group counts from the
    task); itself when nothing is grouped and the loss takes no hyperparameters.

    An unmatched parameter or an empty group is a :class:`~hpo.errors.ConfigError` on ``groups``.
    """
    base = rule_of(rule)
    if config.groups and not isinstance(base, GroupedRule):
        base = grouped_rule(base, config.groups, task_parameters(task, config))
    return with_task_hypers(task, base)


def with_task_hypers(task: Task, rule: UpdateRule) -> UpdateRule:
    """``rule`` joined to ``task``'s loss hyperparameters, sized (and per-layer ones named) by the task;
    ``rule`` itself when the loss takes none."""
    if not task.hypers:
        return rule
    layers = {h.name: layer_names(task) for h in task.hypers if h.per == "layer"}
    return WithLossHypers(rule, task.hypers, task.hyper_groups(), layers)
