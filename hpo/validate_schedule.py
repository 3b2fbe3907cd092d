"""The validation accuracy of one schedule: a plain inner run of an outer step's problem, no derivatives.

FDS learns :math:`\\lambda_{k+1}` from the run at :math:`\\lambda_k`, so the last schedule it
returns has never been trained with.  This scores it the way the outer steps score theirs: train a
fresh network for the horizon on the train part of split ``k`` and measure accuracy on its
validation part,

.. math::

    \\operatorname{acc}_k(\\lambda) = \\operatorname{acc}\\big(w_T(\\lambda); D^{val}_k\\big),
    \\qquad w_{t+1} = \\Phi(w_t, \\lambda_{s(t)}, B_t).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from hpo.fds import FDSConfig, make_problem, seeded_rng
from hpo.optimizers.base import UpdateRule
from hpo.problem import evaluate
from hpo.step import hyper_at_step, train_step
from hpo.tasks.base import Task


def validation_accuracy(task: Task, rule: UpdateRule, config: FDSConfig, values: Mapping[str, Tensor],
                        k: int) -> float:
    """Accuracy on split ``k``'s validation part after a plain run of ``values`` (0 when it diverges)."""
    problem = make_problem(task, rule, config, k)
    dev = problem.train_x.device
    vals = {n: v.to(device=dev, dtype=problem.train_x.dtype) for n, v in values.items()}
    params, buffers, state = problem.params, problem.buffers, rule.init(problem.params)
    with torch.no_grad(), seeded_rng(config.seed * 1000 + k + 500_009, config.device):
        for t, x, y in problem.batches():
            out = train_step(rule, problem.loss_fn, params, buffers, state, hyper_at_step(vals, t, problem.horizon),
                             t, x, y, problem.grad_clip)
            params, state, buffers = out.params, out.opt_state, out.buffers
        loss, acc = evaluate(problem.eval_fn, params, buffers, problem.val_x, problem.val_y)
    return float(acc) if math.isfinite(float(loss)) else 0.0
