"""``retrain(config)``: train a fresh model with a saved schedule and report test metrics.

A schedule.json written by ``hpo run`` records its optimizer, task and configuration; a setting
left as None here is taken from the file (built-in names only: a file never makes hpo import
code), so ``hpo retrain --schedule runs/x/schedule.json`` needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, final

from hpo import checks
from hpo.app.task_loading import load_task
from hpo.config import cls_replace, resolve_rule_field
from hpo.device import DEVICE_CHOICES, DTYPES, pick_device
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.registry import BUILTIN_RULES, BUILTIN_TASKS, VISION_TASKS
from hpo.retrain import RETRAIN_SEED_OFFSET, RetrainResult, retrain
from hpo.schedule import Schedule
from hpo.schedule_file import read_json, read_schedule


@final
@dataclass(frozen=True)
class RetrainConfig:
    """A retrain: the schedule file and what to train; None means "as the file records"."""

    schedule: str
    task: str | None = None
    optimizer: str | None = None
    steps: int | None = None
    samples: int | None = None
    data_root: str = "data"
    augment: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    resolved_rule: UpdateRule = field(init=False, repr=False, compare=False)
    resolved_schedule: Schedule = field(init=False, repr=False, compare=False)
    resolved_task: str = field(init=False, repr=False, compare=False)
    resolved_steps: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the fields, read the schedule file, and fill what the file records."""
        checks.text("schedule", str(self.schedule))
        object.__setattr__(self, "schedule", str(self.schedule))
        checks.optional_integer("steps", self.steps)
        checks.optional_integer("samples", self.samples, checks.MIN_SAMPLES, checks.MAX_SAMPLES)
        checks.seed("seed", self.seed)
        checks.choice("device", self.device, DEVICE_CHOICES)
        checks.choice("dtype", self.dtype, tuple(DTYPES))
        data = read_json(self.schedule, "schedule")
        recorded = data if isinstance(data, dict) and "schedule" in data else {}
        optimizer = self.optimizer or recorded_name(recorded, "optimizer", BUILTIN_RULES) or "sgd"
        rule = resolve_rule_field(optimizer)
        schedule, meta = read_schedule(self.schedule, "schedule", rule)
        task = self.task or recorded_name(recorded, "task", BUILTIN_TASKS) or "mnist1d-mlp"
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
                            ("resolved_steps", int(steps))):
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
    options: dict[str, Any] = {"samples": config.samples} if config.samples is not None else {}
    if config.resolved_task in VISION_TASKS:
        options.update(data_root=config.data_root, augment=config.augment)
    device = str(pick_device(config.device))
    task = load_task(config.resolved_task, options, DTYPES[config.dtype], device)
    return retrain(task, config.resolved_rule, config.resolved_schedule, config.resolved_steps,
                   config.seed + RETRAIN_SEED_OFFSET, DTYPES[config.dtype], device)
