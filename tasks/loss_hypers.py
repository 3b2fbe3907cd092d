"""The built-in loss hyperparameters, turned on for any problem by name.

:func:`with_loss_hypers` returns the problem with the chosen kinds declared and its training loss
rewritten to take them (its plain loss stays the objective the hypergradient lowers):

.. math::

    L(\\theta; b, \\lambda) = \\frac1B \\sum_{i \\in b} w_i\\, c_{y_i}\\,
        \\big[(1-\\varepsilon)\\, \\ell_i(\\theta) + \\varepsilon\\, \\bar\\ell_i(\\theta)\\big]
      + \\frac12 \\sum_p \\rho_{\\mathrm{layer}(p)} \\lVert \\theta_p \\rVert^2

``example_weight``
    :math:`w_i \\in [0, 1]`, one per training example, constant over the run (start 1).
``class_weight``
    :math:`c_y \\ge 0`, one per class (start 1).
``label_smoothing``
    :math:`\\varepsilon \\in [0, 0.5]`, a schedule over the run (start 0): :math:`\\ell_i` is the
    cross-entropy of the true class, :math:`\\bar\\ell_i = -\\frac1C \\sum_c \\log p_c` that of the
    uniform distribution.
``l2``
    :math:`\\rho_l \\ge 0`, one per layer (start 0).
``input_noise``
    :math:`\\sigma \\ge 0`, a schedule (start 0): the loss sees the inputs :math:`x + \\sigma n`, with
    :math:`n \\sim N(0, I)` drawn from the step's seeded RNG (:func:`noisy_inputs`), so every backend
    replays the same noise and differentiates :math:`\\sigma` through it.

The first three need per-example losses: a classifier (``logits`` and ``classes`` set, as every
built-in classification task has) for all three, or ``example_loss`` for per-example weights;
without a kind of those, the loss is the problem's own (``l2`` is added to any loss).  A kind given
one shared value rather than one per example, class or layer (as a black-box search draws it)
applies that value to all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from hpo.core.data import Batch
from hpo.core.grouping import layer_of
from hpo.errors import ConfigError
from hpo.optimizers.base import HyperSpec
from hpo.optimizers.loss_hypers import LossHyper
from hpo.tasks.base import Problem, layer_names

#: The built-in kinds by name (what ``--loss-hypers`` takes).
BUILTIN: Mapping[str, LossHyper] = {
    "example_weight": LossHyper(HyperSpec("example_weight", low=0.0, high=1.0, init=1.0, step=0.1, count=1,
                                          description="per-example loss weight", on_divergence=0,
                                          search_low=0.0, search_high=1.0), per="example"),
    "class_weight": LossHyper(HyperSpec("class_weight", low=0.0, high=10.0, init=1.0, step=0.2, count=1,
                                        description="per-class loss weight", on_divergence=0,
                                        search_low=0.1, search_high=10.0, search_log=True), per="class"),
    "l2": LossHyper(HyperSpec("l2", low=0.0, init=0.0, step=3e-4, count=1, description="L2 strength per layer",
                              on_divergence=0, search_low=1e-6, search_high=1e-2, search_log=True), per="layer"),
    "label_smoothing": LossHyper(HyperSpec("label_smoothing", low=0.0, high=0.5, init=0.0, step=0.05, count=1,
                                           description="label smoothing", on_divergence=0,
                                           search_low=0.0, search_high=0.3), per="run"),
    "input_noise": LossHyper(HyperSpec("input_noise", low=0.0, high=5.0, init=0.0, step=0.05, count=1,
                                       description="std of Gaussian noise added to the inputs", on_divergence=0,
                                       search_low=0.0, search_high=0.5), per="run"),
}

#: The kinds that weigh or change each example's loss (they need per-example losses).
PER_EXAMPLE = ("example_weight", "class_weight", "label_smoothing")


def parse_kinds(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"example_weight,l2"`` (or a list) as a tuple of known kinds; ``ConfigError`` on ``loss_hypers`` naming the rest."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for n in names:
        if n not in BUILTIN:
            raise ConfigError("loss_hypers", f"unknown kind {n!r}; choose from {', '.join(BUILTIN)}")
    if len(set(names)) != len(names):
        raise ConfigError("loss_hypers", "a kind is named twice")
    return tuple(names)


def labels_of(batch: Batch) -> Tensor:
    """The class labels of a classifier's batch ``(x, y)``."""
    return batch[1]  # type: ignore[index]


def smoothed_nll(logits: Tensor, y: Tensor, eps: Tensor | None) -> Tensor:
    """Per-example :math:`(1-\\varepsilon)(-\\log p_y) + \\varepsilon\\, (-\\frac1C \\sum_c \\log p_c)` (``eps`` None: 0)."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if eps is None:
        return nll
    return (1 - eps) * nll - eps * logp.mean(-1)


def l2_term(model: nn.Module, rho: Tensor, layers: Mapping[str, int]) -> Tensor:
    """:math:`\\frac12 \\sum_p \\rho_{\\mathrm{layer}(p)} \\lVert \\theta_p \\rVert^2` over the model's parameters."""
    return 0.5 * sum(pick(rho, layers[layer_of(n)]) * (p * p).sum() for n, p in model.named_parameters())  # type: ignore[return-value]


def pick(values: Tensor, index: Tensor | int) -> Tensor:
    """``values[index]``, or ``values`` itself when it is one shared (0-d) value: what a search that does
    not tune per group (a black-box trial) passes, the same value for every class or layer."""
    return values if values.dim() == 0 else values[index]


def noisy_inputs(batch: Batch, sigma: Tensor) -> Batch:
    """``(x + sigma * n, *rest)`` with :math:`n \\sim N(0, I)` from the global RNG, which every inner step
    seeds (:meth:`~hpo.core.problem.InnerProblem.seed_step`): a replay draws the same noise, and the
    derivative in ``sigma`` is the reparametrised one, :math:`n`.  ``sigma`` is 0-d or one per example."""
    if not isinstance(batch, (tuple, list)) or not batch or not isinstance(batch[0], Tensor):
        raise ValueError("input_noise needs batches (x, ...) whose first entry is the input tensor")
    x = batch[0]
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))) if sigma.dim() == 1 else sigma
    return (x + s * torch.randn_like(x), *batch[1:])


def with_loss_hypers(problem: Problem, kinds: Sequence[str]) -> Problem:
    """``problem`` with the built-in ``kinds`` declared and its loss taking them (module docstring).

    One-line ``ConfigError`` on ``loss_hypers``: an unknown kind, a per-example kind on a problem
    without per-example losses, or a kind the problem already declares.
    """
    names = parse_kinds(kinds)
    if not names:
        return problem
    own = {h.name for h in problem.hypers}
    if own & set(names):
        raise ConfigError("loss_hypers", f"problem {problem.name!r} already declares {min(own & set(names))}")
    weighted = [n for n in names if n in PER_EXAMPLE]
    classifier = problem.logits is not None and problem.classes is not None
    if weighted and problem.hypers:
        raise ConfigError("loss_hypers", f"problem {problem.name!r} has its own loss hyperparameters; weigh its "
                                         f"examples in its own loss rather than with {weighted[0]}")
    for n in weighted:
        if not classifier and not (n == "example_weight" and problem.example_loss is not None):
            need = "logits= and classes=" if n != "example_weight" else "logits= and classes=, or example_loss="
            raise ConfigError("loss_hypers", f"{n} needs per-example losses, which problem {problem.name!r} does "
                                             f"not give: set {need}")
    layers = {name: i for i, name in enumerate(layer_names(problem))}
    plain = problem.loss
    logits_fn, example_fn = problem.logits, problem.example_loss

    def loss(model: nn.Module, batch: Batch, hyper: Mapping[str, Tensor]) -> Tensor:
        if "input_noise" in hyper:
            batch = noisy_inputs(batch, hyper["input_noise"])
        if weighted:
            if classifier:
                assert logits_fn is not None
                y = labels_of(batch)
                per = smoothed_nll(logits_fn(model, batch), y, hyper.get("label_smoothing"))
            else:
                assert example_fn is not None
                per = example_fn(model, batch)
            w = torch.ones_like(per)
            if "example_weight" in hyper:
                w = w * hyper["example_weight"]
            if "class_weight" in hyper:
                w = w * pick(hyper["class_weight"], labels_of(batch))
            value = (w * per).mean()
        else:
            value = plain(model, batch, hyper) if problem.hypers else plain(model, batch)  # type: ignore[call-arg]
        if "l2" in hyper:
            value = value + l2_term(model, hyper["l2"], layers)
        return value

    declared = tuple(BUILTIN[n] for n in names)
    objective: Any = problem.objective or plain
    return replace(problem, loss=loss, objective=objective, hypers=(*problem.hypers, *declared))


def example_weight_file_check(weights: Tensor, n_train: int) -> None:
    """A per-example weight table must have one row per training example; ``ConfigError`` naming the fix."""
    if weights.shape[0] != n_train:
        raise ConfigError("example_weights", f"the file holds {weights.shape[0]} per-example weights but the "
                                             f"training set has {n_train} examples; use the weights of a run on "
                                             f"the same task and data")
