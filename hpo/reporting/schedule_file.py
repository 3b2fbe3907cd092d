"""Reading a schedule JSON file: ``Schedule.save`` output or an ``hpo run`` schedule.json.

Every failure is a :class:`~hpo.errors.ConfigError` naming the configuration field that gave the
path, so the CLI reports it against the right flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.runtime.files import atomic_write

#: A schedule file is small; anything larger is not one (e.g. ``/dev/zero``).
MAX_BYTES = 16 * 2**20


def read_json(path: str | Path, field: str) -> Any:
    """The JSON value in ``path``; one-line ``ConfigError`` if unreadable, too large or not JSON."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError(field, f"{path} is larger than {MAX_BYTES // 2**20} MiB; it is not a schedule file")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(field, f"cannot read {path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(field, f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (RecursionError, ValueError) as e:  # absurd nesting, 5000-digit integers
        raise ConfigError(field, f"{path} is not a schedule file ({type(e).__name__})") from None


def tensor_file_name(name: str) -> str:
    """The file beside schedule.json that holds the values of per-example type ``name``."""
    return f"{name}.pt"


def schedule_entries(schedule: Schedule, aside: tuple[str, ...], folder: Path) -> dict[str, Any]:
    """The schedule as JSON entries, the types in ``aside`` (per-example weights) written as tensor files.

    Type ``name`` in ``aside`` is saved with ``torch.save`` to ``folder / name.pt`` (its
    ``(examples, segments)`` table, float64) and its entry is that file's name, read back by
    :func:`read_schedule`; a JSON list of thousands of numbers would bury the rest of the file.
    """
    entries: dict[str, Any] = schedule.to_dict()
    for name in aside:
        table = schedule.values[name].detach().cpu().to(torch.float64)
        atomic_write(folder / tensor_file_name(name), lambda f, t=table: torch.save(t, f))
        entries[name] = tensor_file_name(name)
    return entries


def tensor_entries(data: Any, folder: Path, field: str) -> Any:
    """``data`` with every entry that names a tensor file (:func:`schedule_entries`) replaced by its table."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, value in data.items():
        if not isinstance(value, str):
            continue
        file = folder / value
        try:
            table = torch.load(file, weights_only=True)
        except Exception as e:  # noqa: BLE001 - unreadable, truncated or not a tensor file: one line either way
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ConfigError(field, f"cannot read the {name} values from {file}: {reason}") from None
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or not table.is_floating_point():
            raise ConfigError(field, f"{file} must hold a 2-D float tensor of {name} values")
        out[name] = table.tolist()
    return out


def read_schedule(path: str | Path, field: str, rule: UpdateRule | None = None) -> tuple[Schedule, dict[str, Any]]:
    """The schedule in ``path`` (checked against ``rule`` when given) and the file's other entries.

    An entry that names a file (per-example weights, :func:`schedule_entries`) is read from beside ``path``.
    """
    data = read_json(path, field)
    meta = dict(data) if isinstance(data, dict) and "schedule" in data else {}
    entries = tensor_entries(meta.get("schedule", data), Path(path).parent, field)
    try:
        schedule = Schedule.from_dict(entries, meta.get("groups"))
        if rule is not None:
            schedule.check(rule)
    except (ValueError, OverflowError) as e:
        raise ConfigError(field, f"{path}: {e}") from None
    return schedule, meta
