"""Gradient-based hyperparameter optimization over long horizons (FDS, Micaelli & Storkey 2021)."""

from hpo.backend import HypergradientBackend, HypergradResult, InnerState, run_inner
from hpo.fds import FDSConfig, FDSResult, run_fds
from hpo.outer import OuterState, converged, sign_update
from hpo.problem import InnerProblem
from hpo.schedule import Schedule, segment_index, segment_indices
from hpo.torch_scheduler import ScheduleDriver

__all__ = [
    "FDSConfig", "FDSResult", "HypergradResult", "HypergradientBackend", "InnerProblem", "InnerState",
    "OuterState", "Schedule", "ScheduleDriver", "converged", "run_fds", "run_inner", "segment_index",
    "segment_indices", "sign_update",
]
