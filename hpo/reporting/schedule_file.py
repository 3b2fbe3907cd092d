"""Reading a schedule JSON file: ``Schedule.save`` output or an ``hpo run`` schedule.json.

Every failure is a :class:`~hpo.errors.ConfigError` naming the configuration field that gave the
path, so the CLI reports it against the right flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule

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


def read_schedule(path: str | Path, field: str, rule: UpdateRule | None = None) -> tuple[Schedule, dict[str, Any]]:
    """The schedule in ``path`` (checked against ``rule`` when given) and the file's other entries."""
    data = read_json(path, field)
    meta = dict(data) if isinstance(data, dict) and "schedule" in data else {}
    try:
        schedule = Schedule.from_dict(meta.get("schedule", data), meta.get("groups"))
        if rule is not None:
            schedule.check(rule)
    except (ValueError, OverflowError) as e:
        raise ConfigError(field, f"{path}: {e}") from None
    return schedule, meta
