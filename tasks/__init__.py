"""Tasks: problems (a model factory, data, a loss and metrics), called functionally by the inner loop."""

from hpo.tasks.base import Metric, Problem, Task, classification_task, init_model, model_functions, split_state

__all__ = ["Metric", "Problem", "Task", "classification_task", "init_model", "model_functions", "split_state"]
