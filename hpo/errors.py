"""Typed errors of the library: each names the configuration field at fault.

The core speaks in field names (``outer_steps``, ``counts``); the CLI maps a field to its flag
(``--outer-steps``) and prints one line with exit status 2.  No core message names a flag.
"""

from __future__ import annotations

from typing import final


@final
class RunError(RuntimeError):
    """A run could not go on for a reason outside its configuration (e.g. a full disk); one line."""


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
