"""``retrain(config)``: train a fresh model with a saved schedule and report test metrics.

A schedule.json written by ``hpo run`` records its optimizer, task and configuration; a setting
left as None here is taken from the file (built-in names only: a file never makes hpo import
code), so ``hpo retrain --schedule runs/x/schedule.json`` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, final

import torch

from hpo import checks
from hpo.app.config import cls_replace, label_noise_field, resolve_rule_field, with_loss_kinds
from hpo.app.registry import BUILTIN_RULES, BUILTIN_TASKS, VISION_TASKS
from hpo.app.task_loading import load_task
from hpo.core.grouping import check_groups, grouped_rule
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import group_counts, group_names
from hpo.optimizers.loss_hypers import loss_names, rule_of
from hpo.reporting.schedule_file import read_json, read_schedule
from hpo.runtime.device import DEVICE_CHOICES, DTYPES, cpu_threads, pick_device, torch_threads
from hpo.search.inner_runs import with_task_hypers
from hpo.search.retrain import RETRAIN_SEED_OFFSET, RetrainResult, retrain
from hpo.tasks.base import Task, init_model
from hpo.tasks.loss_hypers import parse_kinds


@final
@dataclass(frozen=True)
class RetrainConfig:
    """A retrain: the schedule file and what to train; None means "as the file records".

    A schedule.json of ``hpo run`` records the run's configuration: its task and optimizer (used
    when they are built-in names), samples, data root, augmentation, seed, dtype, gradient clamp
    and grouping rules (``groups``), so the retrain reproduces the run's own retrain unless a
    setting is given.
    A grouped schedule needs its grouping rules (recorded, or given as ``groups``); they are
    resolved against the task's model and must give the groups the file names.
    """

    schedule: str
    task: str | None = None
    optimizer: str | None = None
    steps: int | None = None
    samples: int | None = None
    data_root: str | None = None
    augment: str | None = None
    seed: int | None = None
    device: str = "auto"
    dtype: str | None = None
    groups: Mapping[str, str] | None = None
    loss_hypers: tuple[str, ...] | None = None
    label_noise: float | None = None
    resolved_rule: UpdateRule = field(init=False, repr=False, compare=False)
    resolved_schedule: Schedule = field(init=False, repr=False, compare=False)
    resolved_task: str = field(init=False, repr=False, compare=False)
    resolved_steps: int = field(init=False, repr=False, compare=False)
    resolved: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the fields, read the schedule file, and fill what the file records."""
        checks.text("schedule", str(self.schedule))
        object.__setattr__(self, "schedule", str(self.schedule))
        checks.optional_integer("steps", self.steps)
        data = read_json(self.schedule, "schedule")
        recorded = data if isinstance(data, dict) and "schedule" in data else {}
        run = recorded.get("config") if isinstance(recorded.get("config"), dict) else {}
        given = {"samples": self.samples, "data_root": self.data_root, "augment": self.augment, "seed": self.seed,
                 "dtype": self.dtype, "groups": self.groups, "loss_hypers": self.loss_hypers,
                 "label_noise": self.label_noise}
        defaults = {"samples": None, "data_root": "data", "augment": None, "seed": 0, "dtype": "float32", "groups": {},
                    "loss_hypers": (), "label_noise": None}
        settings = {k: v if v is not None else run.get(k, defaults[k]) for k, v in given.items()}
        checks.optional_integer("samples", settings["samples"], checks.MIN_SAMPLES, checks.MAX_SAMPLES)
        checks.text("data_root", settings["data_root"])
        checks.text("augment", settings["augment"], optional=True)
        checks.seed("seed", settings["seed"])
        checks.choice("device", self.device, DEVICE_CHOICES)
        checks.choice("dtype", settings["dtype"], tuple(DTYPES))
        settings["grad_clip"] = checks.optional_positive("grad_clip", run.get("grad_clip"))  # as the search trained
        optimizer = self.optimizer or recorded_name(recorded, "optimizer", BUILTIN_RULES) or "sgd"
        settings["loss_hypers"] = parse_kinds(settings["loss_hypers"])
        task = self.task or recorded_name(recorded, "task", BUILTIN_TASKS) or "mnist1d-mlp"
        settings["label_noise"] = label_noise_field(task, settings["label_noise"])
        plain_rule = resolve_rule_field(optimizer)
        settings["groups"] = check_groups("groups", settings["groups"], plain_rule.hyper_names, plain_rule.name)
        rule = with_loss_kinds(plain_rule, task, settings["loss_hypers"])
        schedule, meta = read_schedule(self.schedule, "schedule", rule)
        ungrouped = sorted(set(schedule.group_counts) - set(settings["groups"]) - set(loss_names(rule)))
        if ungrouped:
            raise ConfigError("groups", f"{self.schedule} holds {ungrouped[0]} per parameter group; give its "
                                        f"grouping rule (e.g. {ungrouped[0]}=layer)")
        limit = float(torch.finfo(DTYPES[settings["dtype"]]).max)
        for k, v in schedule.values.items():
            if float(v.abs().max()) > limit:
                raise ConfigError("schedule", f"{k} = {float(v.abs().max()):g} in {self.schedule} does not fit in "
                                              f"{settings['dtype']} (largest {limit:g})")
        if task not in BUILTIN_TASKS and ":" not in task:
            raise ConfigError("task", f"unknown task {task!r}; choose from {', '.join(sorted(BUILTIN_TASKS))} "
                                      f"or give module:attr")
        steps = self.steps if self.steps is not None else meta.get("retrain_steps")
        if not checks.is_int(steps) or not 1 <= steps <= checks.MAX_STEPS:
            raise ConfigError("steps", f"{self.schedule} has no valid retrain_steps; give the number of steps")
        try:
            pick_device(self.device)
        except ValueError as e:
            raise ConfigError("device", str(e)) from None
        for name, value in (("resolved_rule", rule), ("resolved_schedule", schedule), ("resolved_task", task),
                            ("resolved_steps", int(steps)), ("resolved", settings)):
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> RetrainConfig:
        """A copy with ``changes`` applied and validated again."""
        return cls_replace(self, changes)


def recorded_name(recorded: dict[str, Any], key: str, builtins: Any) -> str | None:
    """The built-in name the file records under ``key`` (``config`` first), or None."""
    config = recorded.get("config") if isinstance(recorded.get("config"), dict) else {}
    for name in (config.get(key), recorded.get(key)):
        if isinstance(name, str) and name in builtins:
            return name
    return None


def retrain_schedule(config: RetrainConfig) -> RetrainResult:
    """Retrain from scratch with the schedule of ``config`` (stretched to its steps); test metrics."""
    s = config.resolved
    options: dict[str, Any] = {"samples": s["samples"]} if s["samples"] is not None else {}
    if s["label_noise"] is not None:
        options["label_noise"] = s["label_noise"]
    if config.resolved_task in VISION_TASKS:
        options.update(data_root=s["data_root"], augment=s["augment"])
    device = str(pick_device(config.device))
    dtype = DTYPES[s["dtype"]]
    with torch_threads(cpu_threads(None, device)):
        task = load_task(config.resolved_task, options, dtype, device, s["loss_hypers"])
        rule, schedule = grouped_for_task(config, task)
        return retrain(task, rule, schedule, config.resolved_steps, s["seed"] + RETRAIN_SEED_OFFSET, dtype, device,
                       grad_clip=s["grad_clip"])


def check_example_tables(config: RetrainConfig, task: Task) -> None:
    """Per-example weights must have one row per training example of ``task`` (``ConfigError`` naming the fix)."""
    counts = task.hyper_groups()
    for h in task.hypers:
        table = config.resolved_schedule.values.get(h.name)
        if h.per == "example" and table is not None and table.dim() == 2 and table.shape[0] != counts[h.name]:
            raise ConfigError("schedule", f"{config.schedule} holds {table.shape[0]} {h.name} values but "
                                          f"{task.name} has {counts[h.name]} training examples; retrain with the "
                                          f"task, --samples and --label-noise of the run that learned them")


def grouped_for_task(config: RetrainConfig, task: Task) -> tuple[UpdateRule, Schedule]:
    """The rule wrapped for the recorded (or given) groups of ``task``'s parameters, and the schedule shaped for it.

    A shared type of the file that is grouped here is copied to every group; group names the file
    records must equal those the rules give on this task (``ConfigError`` on ``groups`` otherwise).
    """
    groups = config.resolved["groups"]
    params = dict(init_model(task, 0, torch.float32, "cpu").named_parameters())
    rule: UpdateRule = grouped_rule(rule_of(config.resolved_rule), groups, params)
    if task.hypers:  # the loss's own values, sized by the task's data
        rule = with_task_hypers(task, rule)
        check_example_tables(config, task)
    names = group_names(rule)
    for name, recorded in config.resolved_schedule.groups.items():
        if name in names and tuple(recorded) != tuple(names[name]):
            raise ConfigError("groups", f"{name}={groups[name]} gives the groups {', '.join(names[name])} on "
                                        f"{task.name}, but {config.schedule} has {', '.join(recorded)}")
    try:
        schedule = config.resolved_schedule.broadcast_groups(group_counts(rule)).with_groups(names)
    except ValueError as e:
        raise ConfigError("groups", f"{config.schedule}: {e}") from None
    return rule, schedule
