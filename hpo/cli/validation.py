"""Checks of command-line input that click's types do not cover; each failure is one line (exit 2)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from hpo.optimizers.base import UpdateRule
from hpo.schedule import Schedule

#: Seeds are combined as ``seed * 100003 + k``; keeping them below 2**31 keeps that in 64 bits.
MAX_SEED = 2**31 - 1
#: MNIST-1D's generator needs a handful of samples to split train/test.
MIN_SAMPLES = 10


def option_flag(name: str) -> str:
    """``outer_steps`` -> ``--outer-steps``."""
    return "--" + name.replace("_", "-")


def check_numbers(o: Mapping[str, Any]) -> None:
    """Range checks of the numeric options present in ``o`` (absent or None ones are skipped)."""
    for name in ("outer_steps", "batch_size", "retrain_steps", "steps"):
        if o.get(name) is not None and o[name] < 1:
            raise click.BadParameter(f"must be at least 1, got {o[name]}", param_hint=option_flag(name))
    if o.get("samples") is not None and o["samples"] < MIN_SAMPLES:
        raise click.BadParameter(f"must be at least {MIN_SAMPLES}, got {o['samples']}", param_hint="--samples")
    if o.get("seed") is not None and not 0 <= o["seed"] <= MAX_SEED:
        raise click.BadParameter(f"must be in 0..{MAX_SEED}, got {o['seed']}", param_hint="--seed")
    for name in ("decay", "converged_frac", "val_frac", "grad_clip", "hz_clip"):
        x = o.get(name)
        if x is not None and not math.isfinite(x):
            raise click.BadParameter(f"must be a finite number, got {x}", param_hint=option_flag(name))
    for name in ("grad_clip", "hz_clip"):
        if o.get(name) is not None and not o[name] > 0:
            raise click.BadParameter(f"must be positive, got {o[name]}", param_hint=option_flag(name))


def check_split(n_train: int, val_frac: float) -> None:
    """The fresh validation split must leave at least one training sample."""
    n_val = max(1, math.ceil(val_frac * n_train))
    if n_train - n_val < 1:
        raise click.BadParameter(f"a validation fraction of {val_frac:g} of {n_train} training samples leaves none "
                                 f"to train on", param_hint="--val-frac")


def load_schedule_file(path: Path, rule: UpdateRule, option: str) -> tuple[Schedule, dict[str, Any]]:
    """A schedule JSON (``Schedule.save`` output or an ``hpo run`` schedule.json) checked against ``rule``.

    Returns the schedule and the file's other top-level entries (e.g. ``retrain_steps``).
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise click.BadParameter(f"cannot read {path}: {reason}", param_hint=option) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{path} is not valid JSON ({e.msg} at line {e.lineno})", param_hint=option) from None
    meta = dict(data) if isinstance(data, dict) and "schedule" in data else {}
    try:
        schedule = Schedule.from_dict(meta.get("schedule", data))
        schedule.check(rule)
    except ValueError as e:
        raise click.BadParameter(f"{path}: {e}", param_hint=option) from None
    return schedule, meta
