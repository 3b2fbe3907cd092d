"""Tasks: data, a model and a loss, called functionally by the inner loop."""

from hpo.tasks.base import Task, init_model, model_functions, split_state

__all__ = ["Task", "init_model", "model_functions", "split_state"]
