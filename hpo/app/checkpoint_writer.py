"""Writing a run's checkpoint after every outer step (the ``after_step`` hook of :func:`hpo.search.fds.run_fds`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, final

from hpo.app.checkpoint import Checkpoint, save_checkpoint
from hpo.core.callbacks import OuterRecord
from hpo.errors import WriteError
from hpo.outer.sign import OuterState


@final
class CheckpointWriter:
    """Atomically replaces ``path`` with the outer state, history, configuration and search time."""

    def __init__(self, path: Path, config: dict[str, Any], seconds_before: float = 0.0, processes: int = 1) -> None:
        self.path = path
        self.processes = processes
        self.config = config
        self.seconds_before = seconds_before
        self.start = time.perf_counter()

    def seconds(self) -> float:
        """Search time of the whole run, earlier processes included."""
        return self.seconds_before + time.perf_counter() - self.start

    def __call__(self, state: OuterState, history: tuple[OuterRecord, ...]) -> None:
        """Write the checkpoint; a write error is a one-line :class:`~hpo.errors.WriteError`."""
        try:
            save_checkpoint(self.path, Checkpoint(state, history, self.config, self.seconds(), self.processes))
        except OSError as e:
            raise WriteError(f"cannot write checkpoint {self.path}: {e.strerror or e}") from None
