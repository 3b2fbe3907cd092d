"""Gradient-based hyperparameter optimization over long horizons (FDS, Micaelli & Storkey 2021).

The application layer is importable from here: build a :class:`RunConfig` and call :func:`run`
(or :func:`resume`, :func:`compare`, :func:`retrain_schedule`).  Everything else lives in its
module (``hpo.core.schedule``, ``hpo.backends.forward``, ``hpo.optimizers``, ...).

Example:
    >>> from hpo import RunConfig
    >>> RunConfig(outer_steps=3).outer_steps
    3
"""

from __future__ import annotations

from hpo.app.compare import compare
from hpo.app.compare_config import CompareConfig
from hpo.app.config import RunConfig
from hpo.app.retrain import RetrainConfig, retrain_schedule
from hpo.app.run import RunResult, resume, run
from hpo.errors import ConfigError, RunError
from hpo.tasks.base import Metric, Problem

__all__ = ["CompareConfig", "ConfigError", "Metric", "Problem", "RetrainConfig", "RunConfig", "RunError", "RunResult",
           "compare", "resume", "retrain_schedule", "run"]
