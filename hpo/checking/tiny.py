"""A tiny float64 problem for checking a rule's hypergradients, and a schedule for any rule.

The problem is a 5-6-3 tanh MLP trained on 40 random points and validated on 20 others:

.. math::  f(x) = W_2 \\tanh(W_1 x + b_1) + b_2, \\qquad
           L = \\frac1n \\sum_i -\\log \\operatorname{softmax}(f(x_i))_{y_i}

small enough that central finite differences of the validation loss after ``horizon`` inner steps
are accurate to about ``1e-9`` in float64.  Everything random is drawn from private generators: the
global RNG is neither read nor advanced.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hpo.core.data import TensorRows
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.optimizers.base import HyperSpec, UpdateRule
from hpo.tasks.base import classification_task, model_functions, split_state

DT = torch.float64


#: Layer widths of the MLP: inputs, hidden units, classes.
SIZES = (5, 6, 3)


#: Segment values as fractions of a bounded range ``[lower, upper]``: well inside it.
BOUNDED_FRACTIONS = (0.5, 0.8, 0.65)


#: Segment values as multiples of a typical value, for a type unbounded above (``0.05..0.2`` for lr 0.1).
SCALE_FACTORS = (1.0, 2.0, 0.5)


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    """``nn.Linear(n_in, n_out)`` initialised as ``reset_parameters`` does, but drawing from ``gen``."""
    lin = nn.utils.skip_init(nn.Linear, n_in, n_out)  # no draw from the global RNG
    with torch.no_grad():
        nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(n_in)
        nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
    return lin


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    """The 5-6-3 tanh MLP in float64, initialised as ``nn.Linear`` does from a generator seeded ``seed``.

    The weights equal those of ``nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))`` built
    after ``torch.manual_seed(seed)``, but the global RNG is left untouched.
    """
    gen = torch.Generator().manual_seed(int(seed))
    n_in, hidden, classes = SIZES
    return nn.Sequential(_linear(n_in, hidden, gen), nn.Tanh(), _linear(hidden, classes, gen)).to(DT)


def tiny_data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, x_val, y_val)``: 40 training and 20 validation points, standard normal, 3 random classes."""
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(40, SIZES[0], generator=gen, dtype=DT)
    y = torch.randint(0, SIZES[-1], (40,), generator=gen)
    xv = torch.randn(20, SIZES[0], generator=gen, dtype=DT)
    yv = torch.randint(0, SIZES[-1], (20,), generator=gen)
    return x, y, xv, yv


def tiny_problem(rule: UpdateRule, horizon: int = 12, batch_size: int = 10, seed: int = 1,
                 model: nn.Module | None = None) -> InnerProblem:
    """``horizon`` inner steps of ``rule`` on the tiny MLP (or ``model``), minibatches drawn with ``seed``.

    Example:
        >>> from hpo.optimizers import SGDMomentum
        >>> p = tiny_problem(SGDMomentum(), horizon=4)
        >>> p.horizon, len(p.train), p.params["0.weight"].dtype
        (4, 40, torch.float64)
    """
    model = tiny_mlp() if model is None else model.to(DT)
    x, y, xv, yv = tiny_data()
    task = classification_task("tiny", x, y, xv, yv, lambda: model, batch_size=batch_size)
    loss_fn, eval_fn = model_functions(model, task)
    params, buffers = split_state(model)
    return InnerProblem(loss_fn, eval_fn, params, buffers, rule, TensorRows((x, y)), TensorRows((xv, yv)),
                        horizon=horizon, batch_size=batch_size, seed=seed, score_fn=task.score_fn(),
                        model_loss=task.loss)


def typical_value(spec: HyperSpec, hand_picked: float | None = None) -> float:
    """A value of an unbounded-above type well inside its range: ``hand_picked``, else ``init``, else ``lower + 10 step``."""
    for x in (hand_picked, spec.init):
        if x is not None and math.isfinite(x) and x > spec.lower:
            return float(x)
    return spec.lower + 10 * spec.step


def segment_values(spec: HyperSpec, count: int, hand_picked: float | None = None) -> list[float]:
    """``count`` (at most 3) distinct values safely inside ``spec``'s range.

    A bounded range ``[a, b]`` gives ``a + f (b - a)`` for ``f`` in 0.5, 0.8, 0.65 (so 0.5, 0.8 for a
    momentum); a range unbounded above gives ``a + k (v - a)`` for ``k`` in 1, 2, 0.5 with ``v`` the
    :func:`typical_value` (so 0.1, 0.2, 0.05 for a learning rate hand-picked at 0.1).
    """
    lo, hi = spec.lower, spec.upper
    if math.isfinite(lo) and math.isfinite(hi):
        inside = [spec.low + f * (spec.high - spec.low) for f in BOUNDED_FRACTIONS[:count]]
        if all(lo < x < hi for x in inside):  # round numbers unless a wide margin excludes them
            return inside
        return [lo + f * (hi - lo) for f in BOUNDED_FRACTIONS[:count]]
    if math.isfinite(lo):
        v = typical_value(spec, hand_picked)
        return [lo + k * (v - lo) for k in SCALE_FACTORS[:count]]
    v = hand_picked if hand_picked is not None and hand_picked < hi else hi - 10 * spec.step
    if math.isfinite(hi):
        return [hi - k * (hi - v) for k in SCALE_FACTORS[:count]]
    return [v + k * 10 * spec.step for k in (0.0, 1.0, -0.5)[:count]]


def tiny_schedule(rule: UpdateRule, horizon: int = 12) -> Schedule:
    """A float64 schedule for ``rule``: 3 segments for a type whose default count is above 1, else 2.

    Values come from each :class:`~hpo.optimizers.base.HyperSpec` (see :func:`segment_values`) and
    the rule's ``hand_picked`` setting; every value lies strictly inside its range.

    Example:
        >>> from hpo.optimizers import SGDMomentum
        >>> tiny_schedule(SGDMomentum()).to_dict()
        {'lr': [0.1, 0.2, 0.05], 'momentum': [0.5, 0.8], 'wd': [0.0005, 0.001]}
    """
    hand = rule.hand_picked or {}
    values = {}
    for s in rule.hyperparameters:
        count = min(3 if s.count > 1 else 2, horizon)
        values[s.name] = torch.tensor(segment_values(s, count, hand.get(s.name)), dtype=DT)
    return Schedule(values)
