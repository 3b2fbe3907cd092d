"""Typed errors of the library: each names the configuration field at fault.

The core speaks in field names (``outer_steps``, ``counts``); the CLI maps a field to its flag
(``--outer-steps``) and prints one line with exit status 2.  No core message names a flag.
"""

from __future__ import annotations

from abc import ABC
from typing import final


class RunError(RuntimeError, ABC):
    """A run could not go on for a reason outside its configuration; one line (abstract)."""


@final
class WriteError(RunError):
    """An output (a checkpoint) could not be written, e.g. on a full disk."""


@final
class Interrupted(RunError):
    """A run stopped by Ctrl-C or SIGTERM; ``logdir`` holds its last checkpoint (``done`` outer steps)."""

    def __init__(self, logdir: object, done: int) -> None:
        super().__init__(f"interrupted after {done} completed outer steps; the run in {logdir} can be resumed")
        self.logdir = logdir
        self.done = done


@final
class CompareInterrupted(RunError):
    """A comparison stopped by Ctrl-C or SIGTERM; ``logdir`` holds its checkpoint (``done`` finished pairs)."""

    def __init__(self, logdir: object, done: int) -> None:
        super().__init__(f"interrupted after {done} finished (seed, method) pairs; the comparison in {logdir} "
                         f"can be resumed")
        self.logdir = logdir
        self.done = done


@final
class ConfigError(ValueError):
    """An invalid setting: ``field`` is the configuration field, ``message`` says what is wrong.

    Example:
        >>> str(ConfigError("outer_steps", "must be at least 1, got 0"))
        'outer_steps: must be at least 1, got 0'
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
