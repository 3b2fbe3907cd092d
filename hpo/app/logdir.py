"""Log directories of runs: default names that never collide, and a writability check."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from hpo.errors import ConfigError


def default_logdir(kind: str) -> Path:
    """``runs/<kind>-<date>-<time>-<6 hex>``: unique even for runs started in the same second."""
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def ensure_writable_dir(path: Path, field: str = "logdir") -> Path:
    """Create ``path`` if needed and prove it writable, or raise a one-line ``ConfigError``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(field, f"cannot write to {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(field, f"cannot write to {path}")
    return path
