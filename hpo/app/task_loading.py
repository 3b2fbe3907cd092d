"""Loading a run's task from its configuration, with data errors named by field."""

from __future__ import annotations

import math
from typing import Any

import torch

from hpo.app.registry import resolve_task
from hpo.core.data import check_batch_size
from hpo.errors import ConfigError
from hpo.tasks.base import Task, check_problem
from hpo.tasks.loss_hypers import with_loss_hypers
from hpo.tasks.vision import DatasetMissing


def load_task(spec: str | Task, options: dict[str, Any], dtype: torch.dtype, device: str,
              loss_hypers: tuple[str, ...] = ()) -> Task:
    """The task ``spec`` (a name, or a :class:`~hpo.tasks.base.Problem` object as it is) built with
    ``options`` on ``device``, with the built-in ``loss_hypers`` turned on
    (:func:`~hpo.tasks.loss_hypers.with_loss_hypers`); missing data is a ``data_root`` error.

    The problem is run once on a few examples first (:func:`~hpo.tasks.base.check_problem`): a loss
    that is not a scalar tensor, or whose derivative through the weights is cut, is refused here.
    """
    try:
        task = spec if isinstance(spec, Task) else resolve_task(spec, **options)
    except DatasetMissing as e:
        raise ConfigError("data_root", str(e)) from None
    except ValueError as e:
        raise ConfigError("task", str(e)) from None
    task = with_loss_hypers(task, loss_hypers)
    check_problem(task)
    return task.to(dtype=dtype, device=device)


def check_split(n_train: int, val_frac: float, batch_size: int | None = None) -> None:
    """The fresh validation split must leave at least one training sample, and at least a batch."""
    n_val = max(1, math.ceil(val_frac * n_train))
    if n_train - n_val < 1:
        raise ConfigError("val_frac", f"a validation fraction of {val_frac:g} of {n_train} training samples "
                                      f"leaves none to train on")
    if batch_size is not None:
        check_batch_size(batch_size, n_train - n_val)
