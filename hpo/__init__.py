"""Gradient-based hyperparameter optimization over long horizons (FDS, Micaelli & Storkey 2021).

The main names are importable from here (``from hpo import Schedule, run_fds``); they are loaded
lazily so that ``tasks`` and ``backends`` can import ``hpo`` submodules without cycles.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FDSConfig": "hpo.fds", "FDSResult": "hpo.fds", "run_fds": "hpo.fds",
    "HypergradResult": "hpo.backend", "HypergradientBackend": "hpo.backend", "InnerState": "hpo.backend",
    "run_inner": "hpo.backend",
    "InnerProblem": "hpo.problem",
    "OuterState": "hpo.outer", "converged": "hpo.outer", "sign_update": "hpo.outer",
    "Schedule": "hpo.schedule", "segment_index": "hpo.schedule", "segment_indices": "hpo.schedule",
    "ScheduleDriver": "hpo.torch_scheduler",
}

__all__ = [
    "FDSConfig", "FDSResult", "HypergradResult", "HypergradientBackend", "InnerProblem", "InnerState",
    "OuterState", "Schedule", "ScheduleDriver", "converged", "run_fds", "run_inner", "segment_index",
    "segment_indices", "sign_update",
]


def __getattr__(name: str) -> Any:
    """Load an exported name from its submodule on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
