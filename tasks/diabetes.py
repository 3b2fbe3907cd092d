"""Regression: scikit-learn's diabetes data (442 patients, 10 features) with an MLP and a squared error.

The data ships with scikit-learn (no download).  Targets are standardised with the training
mean and deviation; the loss is the mean squared error, written out by hand
(``F.mse_loss`` fails under ``jvp(grad(...))`` on some torch versions):

.. math::

    \\ell(\\theta; x, y) = \\frac1B \\sum_i \\big(f_\\theta(x_i) - y_i\\big)^2

and the reported metric is the RMSE in the target's own units, :math:`\\sigma_y \\sqrt{\\bar\\ell}`
(lower is better).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hpo.core.data import Batch
from hpo.tasks.base import Metric, Problem

#: Examples held out as the test set (a fixed random 20%).
TEST_FRACTION = 0.2


def load_diabetes_tensors(seed: int = 0) -> dict[str, Tensor]:
    """``train_x, train_y, test_x, test_y`` (float32; features standardised, targets standardised) and ``y_std``."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise ValueError("the diabetes task needs scikit-learn: pip install scikit-learn") from None
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = round(TEST_FRACTION * x.shape[0])
    test, train = perm[:n_test], perm[n_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()
    x = (x - x_mean) / x_std
    y = (y - y_mean) / y_std
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test], "y_std": y_std}


def squared_error(model: nn.Module, batch: Batch) -> Tensor:
    """Mean squared error of ``model(x)`` against ``y``, written out (safe under ``jvp(grad)``)."""
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def example_squared_errors(model: nn.Module, batch: Batch) -> Tensor:
    """The ``(B,)`` squared errors of a batch: what per-example weights multiply."""
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2


def mlp(hidden: int = 64) -> nn.Module:
    """10 -> hidden -> hidden -> 1, tanh."""
    return nn.Sequential(nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def diabetes_task(hidden: int = 64, batch_size: int = 32, samples: int | None = None) -> Problem:
    """The ``diabetes-mlp`` task: MSE loss, RMSE (in the target's units) reported, lower is better.

    ``samples`` keeps only the first ``samples`` training examples (for quick runs).
    """
    d = load_diabetes_tensors()
    n = d["train_x"].shape[0] if samples is None else min(int(samples), d["train_x"].shape[0])
    rmse = Metric(squared_error, "lower", root=True, scale=float(d["y_std"]))
    return Problem("diabetes-mlp", lambda: mlp(hidden), squared_error, (d["train_x"][:n], d["train_y"][:n]),
                   (d["test_x"], d["test_y"]), metrics={"rmse": rmse}, batch_size=batch_size,
                   example_loss=example_squared_errors)
