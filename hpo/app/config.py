"""Typed configurations of a run and a retrain, validated once, where they are built.

A :class:`RunConfig` is plain data (names of the task, optimizer and backend, numbers, paths),
so it is what a checkpoint stores and what ``--resume`` restores, from Python and from the CLI
alike.  Building one checks every field and resolves the optimizer and backend; a bad value is a
:class:`~hpo.errors.ConfigError` naming the field.  Loading the task's data is left to the run.

Example:
    >>> cfg = RunConfig(outer_steps=2, inner_steps=(20,), counts={"lr": 2})
    >>> cfg.fds().horizon(1), cfg.resolved_rule.name
    (20, 'sgd')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import torch

from hpo import checks
from hpo.app.registry import VISION_TASKS, check_task_name, make_backend, make_outer, resolve_rule
from hpo.backends.memory_budget import parse_bytes
from hpo.core.backend import HypergradientBackend
from hpo.core.grouping import check_groups
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.loss_hypers import WithLossHypers
from hpo.outer.base import OuterOptimizer
from hpo.outer.coordinates import OUTER_SPACES
from hpo.reporting.schedule_file import read_schedule
from hpo.runtime.device import DEVICE_CHOICES, DTYPES, pick_device
from hpo.search.inner_runs import DIVERGENCE_RULES, FDSConfig
from hpo.tasks.augment import Augment
from hpo.tasks.base import Problem
from hpo.tasks.loss_hypers import BUILTIN as BUILTIN_KINDS
from hpo.tasks.loss_hypers import parse_kinds

#: The tasks ``label_noise`` applies to.
NOISY_TASKS = ("mnist1d-mlp", "mnist1d-cnn")


@final
@dataclass(frozen=True)
class RunConfig:
    """Everything an ``hpo run`` needs; the fields are the CLI's options (``outer_steps`` is ``--outer-steps``).

    ``counts``, ``init`` and ``steps`` override the rule's defaults per hyperparameter type;
    ``groups`` maps a type to its grouping rule (``{"lr": "layer", "wd": "bias-vs-rest"}``, see
    :mod:`hpo.core.grouping`; absent types are shared over all parameters, ``all`` entries are dropped);
    ``inner_steps[k]`` is the horizon of outer step ``k`` (the last entry repeats); ``baseline``
    None means the rule's hand-picked setting; ``retrain_steps`` None means the last horizon;
    ``threads`` None means one CPU thread per process (see :func:`hpo.runtime.device.cpu_threads`).
    """

    task: str = "mnist1d-mlp"
    optimizer: str = "sgd"
    backend: str = "auto"
    outer_steps: int = 10
    inner_steps: tuple[int, ...] = (30, 300)
    counts: Mapping[str, int] = field(default_factory=dict)
    init: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, float] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)
    outer: str = "auto"
    outer_options: Mapping[str, float] = field(default_factory=dict)
    divergence: str = "lower"
    outer_space: str = "linear"
    converged_frac: float = 0.05
    val_frac: float = 0.05
    batch_size: int | None = None
    samples: int | None = None
    loss_hypers: tuple[str, ...] = ()
    label_noise: float | None = None
    data_root: str = "data"
    download: bool = False
    augment: str | None = None
    retrain_steps: int | None = None
    baseline: Mapping[str, float] | None = None
    grad_clip: float | None = None
    hz_clip: float | None = None
    compile: bool = False
    window: int | None = None
    memory_budget: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    deterministic: bool = False
    threads: int | None = None
    logdir: str | None = None
    schedule_init: str | None = None
    resolved_rule: UpdateRule = field(init=False, repr=False, compare=False)
    resolved_backend: HypergradientBackend = field(init=False, repr=False, compare=False)
    resolved_outer: OuterOptimizer = field(init=False, repr=False, compare=False)
    resolved_fds: FDSConfig = field(init=False, repr=False, compare=False)
    initial_schedule: Schedule | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check every field, resolve the optimizer and backend; ``ConfigError`` on the first bad one."""
        norm = normalized_fields(self)
        for name, value in norm.items():
            object.__setattr__(self, name, value)
        rule = with_loss_kinds(resolve_rule_field(self.optimizer), self.task, self.loss_hypers)
        checks.names_of("baseline", self.baseline or {}, rule.hyper_names, rule.name)
        baseline = self.baseline if self.baseline is not None else rule.hand_picked
        if baseline is not None:
            try:
                Schedule.constant(baseline).check(rule)
            except ValueError as e:
                raise ConfigError("baseline", str(e)) from None
        initial = None
        if self.schedule_init is not None:
            if self.counts or self.init:
                raise ConfigError("schedule_init", "give either a starting schedule or counts/init, not both")
            initial, _ = read_schedule(self.schedule_init, "schedule_init", rule)
        limit = float(torch.finfo(DTYPES[self.dtype]).max)
        sources = [("init", dict(self.init)), ("baseline", dict(baseline or {}))]
        if initial is not None:
            sources.append(("schedule_init", {k: float(v.abs().max()) for k, v in initial.values.items()}))
        for name, values in sources:
            for k, x in values.items():
                if abs(x) > limit:
                    raise ConfigError(name, f"{k} = {x:g} does not fit in {self.dtype} (largest {limit:g})")
        object.__setattr__(self, "resolved_rule", rule)
        object.__setattr__(self, "initial_schedule", initial)
        object.__setattr__(self, "resolved_outer", make_outer(self.outer, self.outer_options, rule))
        object.__setattr__(self, "resolved_fds", self.build_fds())
        try:
            self.resolved_fds.validate(rule)
        except ConfigError as e:
            if initial is not None and e.field == "counts":  # the counts came from the starting schedule
                raise ConfigError("schedule_init", e.message) from None
            raise
        object.__setattr__(self, "resolved_backend", make_backend_field(self, rule))

    @property
    def resolved_device(self) -> str:
        """``auto`` resolved to ``cuda`` or ``cpu``."""
        return str(pick_device(self.device))

    @property
    def resolved_baseline(self) -> dict[str, float] | None:
        """The constant setting the learned schedule is compared with (None: no comparison)."""
        return dict(self.baseline) if self.baseline is not None else self.resolved_rule.hand_picked

    @property
    def resolved_retrain_steps(self) -> int:
        """Steps of the final retrain: the setting, or the last inner horizon."""
        return self.retrain_steps or self.fds().horizon(self.outer_steps - 1)

    def task_options(self) -> dict[str, Any]:
        """Keyword options of the task factory."""
        kwargs: dict[str, Any] = {"samples": self.samples} if self.samples is not None else {}
        if self.label_noise is not None:
            kwargs["label_noise"] = self.label_noise
        if isinstance(self.task, str) and self.task in VISION_TASKS:
            kwargs.update(data_root=self.data_root, download=self.download, augment=self.augment)
        return kwargs

    def fds(self) -> FDSConfig:
        """The outer-loop settings, built once when the configuration is (:attr:`resolved_fds`)."""
        return self.resolved_fds

    def build_fds(self) -> FDSConfig:
        """The outer-loop settings (counts from ``schedule_init`` when one is given)."""
        counts = self.initial_schedule.counts if self.initial_schedule is not None else dict(self.counts)
        return FDSConfig(
            outer_steps=self.outer_steps, inner_steps=self.inner_steps, counts=counts, init=dict(self.init),
            steps=dict(self.steps), groups=dict(self.groups), outer=self.resolved_outer,
            divergence=self.divergence, outer_space=self.outer_space,
            converged_frac=self.converged_frac, val_frac=self.val_frac,
            batch_size=self.batch_size, seed=self.seed, grad_clip=self.grad_clip, hz_clip=self.hz_clip,
            dtype=DTYPES[self.dtype], device=self.resolved_device,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (what a checkpoint and schedule.json store)."""
        return settings_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; an unknown or ill-typed entry is a ``ConfigError`` naming it."""
        return cls(**known_fields(cls, legacy_outer(data)))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied and validated again."""
        return cls_replace(self, changes)


def legacy_outer(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Settings stored before the outer optimizers were pluggable, in today's fields.

    ``grow`` G > 1 was ``outer="rprop"`` with ``grow=G``, ``magnitude`` C > 0 was
    ``outer="sign-magnitude"`` with ``cap=C``, and ``decay`` is every sign optimizer's option.
    """
    if not isinstance(data, Mapping) or not {"decay", "grow", "magnitude"} & set(data):
        return data
    out = {k: v for k, v in data.items() if k not in ("decay", "grow", "magnitude")}
    grow, cap, decay = float(data.get("grow", 1.0)), float(data.get("magnitude", 0.0)), data.get("decay", 0.5)
    options: dict[str, Any] = {} if float(decay) == 0.5 else {"decay": float(decay)}
    if grow != 1.0:
        out["outer"], options["grow"] = "rprop", grow
    elif cap != 0.0:
        out["outer"], options["cap"] = "sign-magnitude", cap
    out["outer_options"] = options
    return out


def settings_dict(config: Any) -> dict[str, Any]:
    """The init fields of a configuration dataclass as plain values (tuples as lists, mappings as dicts)."""
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def plain(value: Any) -> Any:
    """Tuples as lists and paths as strings, for comparing a given setting with a stored one."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Problem):
        return problem_label(value)
    return value


def problem_label(problem: Problem) -> str:
    """How a configuration whose task is a :class:`~hpo.tasks.base.Problem` object records it.

    A checkpoint or schedule.json cannot hold the object (its code), so it holds this label, and
    resuming such a run needs the object again (:func:`hpo.app.run.resume` with ``{"task": problem}``).
    """
    return f"<problem {problem.name}>"


def show(value: Any) -> str:
    """A setting as a user would type it."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "''"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` restricted to the init fields of dataclass ``cls``; an unknown key is an error."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"must be a mapping of settings, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise ConfigError(str(key), "is not a setting this version of hpo knows")
    return dict(data)


def cls_replace(config: Any, changes: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` restricted to init fields (derived fields are recomputed)."""
    known_fields(type(config), changes)
    kept = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return type(config)(**{**kept, **changes})


def normalized_fields(c: RunConfig) -> dict[str, Any]:
    """Each plain field checked for type and range, in the canonical Python type."""
    return {
        "task": c.task if isinstance(c.task, Problem) else checks.text("task", c.task),
        "optimizer": checks.text("optimizer", c.optimizer),
        "backend": checks.text("backend", c.backend),
        "outer_steps": checks.integer("outer_steps", c.outer_steps),
        "inner_steps": checks.int_tuple("inner_steps", c.inner_steps),
        "counts": checks.name_map("counts", c.counts, "int"),
        "init": checks.name_map("init", c.init, "float"),
        "steps": checks.name_map("steps", c.steps, "float"),
        "groups": check_groups("groups", c.groups),
        "outer": checks.text("outer", c.outer),
        "outer_options": checks.name_map("outer_options", c.outer_options, "float"),
        "divergence": checks.choice("divergence", c.divergence, DIVERGENCE_RULES),
        "outer_space": checks.choice("outer_space", c.outer_space, OUTER_SPACES),
        "converged_frac": checks.positive("converged_frac", c.converged_frac),
        "val_frac": checks.open_interval("val_frac", c.val_frac, 0.0, 1.0),
        "batch_size": checks.optional_integer("batch_size", c.batch_size),
        "samples": checks.optional_integer("samples", c.samples, checks.MIN_SAMPLES, checks.MAX_SAMPLES),
        "loss_hypers": parse_kinds(c.loss_hypers),
        "label_noise": label_noise_field(c.task, c.label_noise),
        "data_root": str(checks.text("data_root", None if c.data_root is None else str(c.data_root))),
        "download": checks.flag("download", c.download),
        "augment": checks.text("augment", c.augment, optional=True),
        "retrain_steps": checks.optional_integer("retrain_steps", c.retrain_steps),
        "baseline": None if c.baseline is None else checks.name_map("baseline", c.baseline, "float"),
        "grad_clip": checks.optional_positive("grad_clip", c.grad_clip),
        "hz_clip": checks.optional_positive("hz_clip", c.hz_clip),
        "compile": checks.flag("compile", c.compile),
        "window": checks.optional_integer("window", c.window),
        "memory_budget": memory_budget_field(c.memory_budget),
        "seed": checks.seed("seed", c.seed),
        "device": checks.choice("device", c.device, DEVICE_CHOICES),
        "dtype": checks.choice("dtype", c.dtype, tuple(DTYPES)),
        "deterministic": checks.flag("deterministic", c.deterministic),
        "threads": checks.optional_integer("threads", c.threads, 1, 1024),
        "logdir": None if c.logdir is None else str(checks.text("logdir", str(c.logdir))),
        "schedule_init": None if c.schedule_init is None else str(checks.text("schedule_init", str(c.schedule_init))),
    }


def label_noise_field(task: object, value: object) -> float | None:
    """``label_noise`` checked: a fraction in ``(0, 1)``, for an MNIST-1D task only (one-line ``ConfigError``)."""
    if value is None:
        return None
    noise = checks.open_interval("label_noise", value, 0.0, 1.0)
    if not (isinstance(task, str) and task in NOISY_TASKS):
        name = problem_label(task) if isinstance(task, Problem) else task
        raise ConfigError("label_noise", f"applies to the MNIST-1D tasks ({', '.join(NOISY_TASKS)}), not {name!r}")
    return noise


def with_loss_kinds(rule: UpdateRule, task: object, kinds: tuple[str, ...]) -> UpdateRule:
    """``rule`` joined to the loss hyperparameters a run tunes: a problem object's own, then the built-in
    ``kinds`` (their group counts come with the task's data, :func:`hpo.search.inner_runs.rule_with_groups`)."""
    own = tuple(task.hypers) if isinstance(task, Problem) else ()
    declared = (*own, *(BUILTIN_KINDS[k] for k in kinds))
    if not declared:
        return rule
    try:
        return WithLossHypers(rule, declared, {})
    except ValueError as e:
        raise ConfigError("loss_hypers", str(e)) from None


def memory_budget_field(value: object) -> str | None:
    """``memory_budget`` as given (``512MiB``, ``2GB``, bytes), checked: ``ConfigError`` unless a size."""
    if value is None:
        return None
    parse_bytes("memory_budget", value)
    return str(value)


def resolve_rule_field(spec: str) -> UpdateRule:
    """The optimizer named ``spec``; a ``ConfigError`` on the ``optimizer`` field otherwise."""
    try:
        return resolve_rule(spec)
    except ValueError as e:
        raise ConfigError("optimizer", str(e)) from None


def make_backend_field(c: RunConfig, rule: UpdateRule) -> HypergradientBackend:
    """The backend of ``c`` with its options (window, compile), checked against ``rule``."""
    try:
        if isinstance(c.task, str):
            check_task_name(c.task)
    except ValueError as e:
        raise ConfigError("task", str(e)) from None
    try:
        Augment.parse(c.augment)
    except ValueError as e:
        raise ConfigError("augment", str(e)) from None
    vision_only = isinstance(c.task, Problem) or (":" not in c.task and c.task not in VISION_TASKS)  # module:attr decides
    if (c.download or c.augment) and vision_only:
        raise ConfigError("download" if c.download else "augment",
                          f"applies to the vision tasks ({', '.join(VISION_TASKS)}), not {c.task!r}")
    try:
        pick_device(c.device)
    except ValueError as e:
        raise ConfigError("device", str(e)) from None
    return make_backend(c.backend, rule, window=c.window, compile=c.compile, hz_clip=c.hz_clip,
                        memory_budget=c.memory_budget)
