"""The typed configuration of ``hpo compare``, validated once where it is built.

Example:
    >>> cfg = CompareConfig(methods=("forward-manual", "hand-picked"), budget=(600,), inner_steps=300)
    >>> cfg.settings().units
    2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, final

from hpo import checks
from hpo.app.config import (
    cls_replace,
    known_fields,
    label_noise_field,
    legacy_outer,
    resolve_rule_field,
    settings_dict,
    with_loss_kinds,
)
from hpo.app.registry import check_task_name, make_outer, resolve_method
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.outer.base import OuterOptimizer
from hpo.outer.coordinates import OUTER_SPACES
from hpo.runtime.device import DEVICE_CHOICES, DTYPES, pick_device
from hpo.runtime.extras import MissingExtra
from hpo.search.base import SearchMethod, SearchSettings
from hpo.search.fds import FDSSearch
from hpo.search.inner_runs import DIVERGENCE_RULES
from hpo.search.space import SearchSpace, default_space, parse_space
from hpo.tasks.loss_hypers import parse_kinds

DEFAULT_METHODS = ("auto", "greedy", "reverse-truncated", "online-greedy", "random-constant",
                   "random-schedule", "tpe", "hand-picked")


@final
@dataclass(frozen=True)
class CompareConfig:
    """Methods, budget points, horizon, seeds and the data settings shared by every method.

    ``budget`` is in inner steps; ``budget_seconds`` also caps each method's search wall-clock
    time (the same for every method: equal time as well as equal steps).  ``jobs`` runs that many
    (seed, method) pairs at once in separate processes, each with ``cores // jobs`` threads.
    """

    task: str = "mnist1d-mlp"
    optimizer: str = "sgd"
    methods: tuple[str, ...] = DEFAULT_METHODS
    budget: tuple[int, ...] = (1000,)
    inner_steps: int = 100
    retrain_steps: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    space: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    hyper_lr: Mapping[str, float] = field(default_factory=dict)
    window: int | None = None
    population: int | None = None
    stn_options: Mapping[str, float] = field(default_factory=dict)
    short_steps: int = 0
    keep_best: bool = False
    outer: str = "auto"
    outer_options: Mapping[str, float] = field(default_factory=dict)
    divergence: str = "lower"
    outer_space: str = "linear"
    steps: Mapping[str, float] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    holdout_frac: float = 0.1
    val_frac: float = 0.05
    batch_size: int | None = None
    samples: int | None = None
    loss_hypers: tuple[str, ...] = ()
    label_noise: float | None = None
    grad_clip: float | None = None
    budget_seconds: float | None = None
    jobs: int = 1
    device: str = "auto"
    dtype: str = "float32"
    logdir: str | None = None
    resolved_rule: UpdateRule = field(init=False, repr=False, compare=False)
    resolved_methods: dict[str, SearchMethod] = field(init=False, repr=False, compare=False)
    resolved_space: SearchSpace = field(init=False, repr=False, compare=False)
    resolved_outer: OuterOptimizer = field(init=False, repr=False, compare=False)
    resolved_settings: SearchSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check every field; resolve the optimizer, the search space and every method."""
        set_ = object.__setattr__
        set_(self, "task", checks.text("task", self.task))
        set_(self, "optimizer", checks.text("optimizer", self.optimizer))
        set_(self, "space", checks.text("space", self.space, optional=True))
        if self.logdir is not None:
            set_(self, "logdir", str(checks.text("logdir", str(self.logdir))))
        try:
            check_task_name(self.task)
        except ValueError as e:
            raise ConfigError("task", str(e)) from None
        if not isinstance(self.methods, (tuple, list)) or not self.methods or not all(
                isinstance(m, str) and m for m in self.methods) or len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods", f"expected distinct method names, got {self.methods!r}")
        set_(self, "methods", tuple(self.methods))
        set_(self, "budget", checks.int_tuple("budget", self.budget))
        set_(self, "inner_steps", checks.integer("inner_steps", self.inner_steps))
        set_(self, "retrain_steps", checks.optional_integer("retrain_steps", self.retrain_steps))
        if not isinstance(self.seeds, (tuple, list)) or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"expected distinct non-negative integers, got {self.seeds!r}")
        set_(self, "seeds", tuple(checks.seed("seeds", s) for s in self.seeds))
        set_(self, "counts", checks.name_map("counts", self.counts, "int"))
        set_(self, "hyper_lr", checks.name_map("hyper_lr", self.hyper_lr, "float"))
        set_(self, "window", checks.optional_integer("window", self.window))
        set_(self, "population", checks.optional_integer("population", self.population, 2))
        set_(self, "stn_options", checks.name_map("stn_options", self.stn_options, "float"))
        set_(self, "short_steps", checks.integer("short_steps", self.short_steps, 0))
        set_(self, "keep_best", checks.flag("keep_best", self.keep_best))
        set_(self, "outer", checks.text("outer", self.outer))
        set_(self, "outer_options", checks.name_map("outer_options", self.outer_options, "float"))
        set_(self, "divergence", checks.choice("divergence", self.divergence, DIVERGENCE_RULES))
        set_(self, "outer_space", checks.choice("outer_space", self.outer_space, OUTER_SPACES))
        set_(self, "steps", checks.name_map("steps", self.steps, "float"))
        set_(self, "init", checks.name_map("init", self.init, "float"))
        set_(self, "holdout_frac", checks.open_interval("holdout_frac", self.holdout_frac, 0.0, 1.0))
        set_(self, "val_frac", checks.open_interval("val_frac", self.val_frac, 0.0, 1.0))
        set_(self, "batch_size", checks.optional_integer("batch_size", self.batch_size))
        set_(self, "samples", checks.optional_integer("samples", self.samples, checks.MIN_SAMPLES, checks.MAX_SAMPLES))
        set_(self, "grad_clip", checks.optional_positive("grad_clip", self.grad_clip))
        set_(self, "budget_seconds", checks.optional_positive("budget_seconds", self.budget_seconds))
        set_(self, "jobs", checks.integer("jobs", self.jobs, 1, 256))
        checks.choice("device", self.device, DEVICE_CHOICES)
        checks.choice("dtype", self.dtype, tuple(DTYPES))
        try:
            pick_device(self.device)
        except ValueError as e:
            raise ConfigError("device", str(e)) from None
        if min(self.budget) < self.inner_steps:
            raise ConfigError("budget", f"{min(self.budget)} is below one inner run ({self.inner_steps} steps)")
        set_(self, "loss_hypers", parse_kinds(self.loss_hypers))
        set_(self, "label_noise", label_noise_field(self.task, self.label_noise))
        rule = with_loss_kinds(resolve_rule_field(self.optimizer), self.task, self.loss_hypers)
        set_(self, "resolved_rule", rule)
        set_(self, "resolved_outer", make_outer(self.outer, self.outer_options, rule))
        checks.names_of("hyper_lr", self.hyper_lr, rule.hyper_names, rule.name)
        checks.names_of("steps", self.steps, rule.hyper_names, rule.name)
        try:
            space = {**default_space(rule), **(parse_space(self.space) if self.space else {})}
        except ValueError as e:
            raise ConfigError("space", str(e)) from None
        checks.names_of("space", space, rule.hyper_names, rule.name)
        for s in rule.hyperparameters:
            if s.name in space:
                for x in (space[s.name].low, space[s.name].high):
                    if not s.contains(x):
                        raise ConfigError("space", f"{s.name} bound {x:g} is out of range ({s.range_text()})")
        set_(self, "resolved_space", space)
        set_(self, "resolved_settings", self.build_settings())
        self.settings().fds(0).validate(rule)
        if self.window is not None and "reverse-truncated" not in self.methods:
            raise ConfigError("window", "applies only to the reverse-truncated backend, which is not among the methods")
        if self.population is not None and "pbt" not in self.methods:
            raise ConfigError("population", "applies only to pbt, which is not among the methods")
        if self.stn_options and "stn" not in self.methods:
            raise ConfigError("stn_options", "applies only to stn, which is not among the methods")
        methods = {}
        for name in self.methods:
            try:
                method = resolve_method(name, window=self.window, population=self.population,
                                        stn_options=self.stn_options)
            except ValueError as e:
                raise ConfigError("stn_options" if name == "stn" and self.stn_options else "methods",
                                  f"{name}: {e}") from None
            try:
                method.check(rule, self.settings())
            except MissingExtra as e:
                raise ConfigError("methods", f"{name} {e}") from None
            except ValueError as e:
                raise ConfigError("methods", f"{name}: {e}") from None
            methods[name] = method
        fds_only = [name for name, given in (("short_steps", self.short_steps != 0), ("keep_best", self.keep_best),
                                             ("outer", self.outer not in ("auto", "sign")), ("outer_options", bool(self.outer_options)),
                                             ("steps", bool(self.steps)),
                                             ("init", bool(self.init)),
                                             ("divergence", self.divergence != "lower"),
                                             ("outer_space", self.outer_space != "linear")) if given]
        if fds_only and not any(isinstance(m, FDSSearch) for m in methods.values()):
            raise ConfigError(fds_only[0], "applies only to the FDS methods (a backend name such as auto), none of "
                                           "which is among the methods")
        set_(self, "resolved_methods", methods)

    @property
    def resolved_retrain_steps(self) -> int:
        """Steps of each retrain: the setting, or the horizon."""
        return self.retrain_steps or self.inner_steps

    @property
    def max_budget(self) -> int:
        """The largest budget point: what every method spends."""
        return max(self.budget)

    def settings(self) -> SearchSettings:
        """What every method shares, built once with the configuration."""
        return self.resolved_settings

    def build_settings(self) -> SearchSettings:
        """What every method shares, from the fields."""
        space = self.resolved_space
        return SearchSettings(horizon=self.inner_steps, budget=max(self.budget), space=space, counts=dict(self.counts),
                              hyper_lr=dict(self.hyper_lr), val_frac=self.val_frac, batch_size=self.batch_size,
                              grad_clip=self.grad_clip, dtype=DTYPES[self.dtype], device=str(pick_device(self.device)),
                              seconds=self.budget_seconds, short_steps=self.short_steps, keep_best=self.keep_best,
                              outer=self.resolved_outer, divergence=self.divergence, outer_space=self.outer_space,
                              steps=dict(self.steps), init=dict(self.init))

    def task_options(self) -> dict[str, Any]:
        """Keyword options of the task factory."""
        options: dict[str, Any] = {"samples": self.samples} if self.samples is not None else {}
        if self.label_noise is not None:
            options["label_noise"] = self.label_noise
        return options

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (what the compare checkpoint stores)."""
        return settings_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareConfig:
        """A configuration from plain values (inverse of :meth:`to_dict`); an unknown entry is a ``ConfigError``."""
        return cls(**known_fields(cls, legacy_outer(data)))

    def replace(self, **changes: Any) -> CompareConfig:
        """A copy with ``changes`` applied and validated again."""
        return cls_replace(self, changes)
