"""Hyperparameters of the loss: declared like a rule's, tuned with them, passed to the loss as arguments.

A problem declares each kind as a :class:`LossHyper`: a :class:`~hpo.optimizers.base.HyperSpec`
(range, start, outer step, segments) and what it is one value *per*:

``run``
    One value, or one per time segment (a label-smoothing schedule): a ``(segments,)`` table.
``example``
    One value per training example, constant over the run: a ``(n_train, 1)`` table.  At step
    ``t`` the loss receives the values of the minibatch's rows, :math:`w_{i_1}, \\dots, w_{i_B}`.
``class``
    One value per class: a ``(classes, segments)`` table.
``layer``
    One value per layer (the module owning a parameter, :mod:`hpo.core.grouping`): a
    ``(layers, segments)`` table.

:class:`WithLossHypers` joins them to an update rule, so the schedule, the outer optimizers, the
checkpoints and every backend see one list of hyperparameters,

.. math::  \\lambda = (\\lambda_{rule}, \\lambda_{loss}), \\qquad
           \\theta_{t+1} = \\mathrm{step}\\big(\\theta_t, s_t, \\nabla_\\theta L(\\theta_t; b_t, \\lambda_{loss,t}), \\lambda_{rule,t}\\big),

and the exact backends differentiate :math:`L` with respect to :math:`\\lambda_{loss}` through the
gradient, with nothing derived by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

import torch
from torch import Tensor

from hpo.optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule

#: What one value of a loss hyperparameter is shared over (see the module docstring).
PER = ("run", "example", "class", "layer")


@final
@dataclass(frozen=True)
class LossHyper:
    """One kind of loss hyperparameter: its :class:`HyperSpec` and what it has one value ``per``.

    ``hand_picked`` is the value a run without tuning uses (default: the spec's ``init``), the
    one that leaves the loss as the problem wrote it (weights 1, smoothing 0, L2 0).

    Example:
        >>> w = LossHyper(HyperSpec("example_weight", low=0.0, high=1.0, init=1.0, step=0.1), per="example")
        >>> w.name, w.per, w.neutral
        ('example_weight', 'example', 1.0)
    """

    spec: HyperSpec
    per: str = "run"
    hand_picked: float | None = None

    def __post_init__(self) -> None:
        """``per`` must be one of :data:`PER`."""
        if self.per not in PER:
            raise ValueError(f"loss hyperparameter {self.spec.name!r}: per must be one of {', '.join(PER)}, "
                             f"got {self.per!r}")

    @property
    def name(self) -> str:
        """The spec's name: the key of its values in the schedule and in the loss's ``hyper``."""
        return self.spec.name

    @property
    def neutral(self) -> float:
        """The untuned value: ``hand_picked``, else the spec's ``init``."""
        return self.spec.init if self.hand_picked is None else float(self.hand_picked)


@final
class WithLossHypers(UpdateRule):
    """An update rule together with loss hyperparameters: one list of hyperparameters for the search.

    ``hyperparameters`` is the rule's, then each kind's spec; ``step`` passes the rule its own
    values only (the loss receives the others, :func:`hpo.core.step.train_step`).  ``groups[name]``
    is the number of values of a kind that is per example, class or layer (known once the task's
    data is: a kind left out is not yet resolved, as in a configuration checked before loading);
    ``names[name]`` optionally names those values (the layers of a per-layer kind).  There is no
    hand-derived tangent (the gradient's derivative with respect to a loss value is not the
    rule's), and no ``torch.optim`` counterpart (a retrain steps the rule functionally).

    Example:
        >>> from hpo.optimizers import SGDMomentum
        >>> ls = LossHyper(HyperSpec("label_smoothing", low=0.0, high=0.5, init=0.0, step=0.02))
        >>> rule = WithLossHypers(SGDMomentum(), (ls,), {})
        >>> rule.hyper_names, rule.loss_names
        (('lr', 'momentum', 'wd', 'label_smoothing'), ('label_smoothing',))
    """

    def __init__(self, rule: UpdateRule, kinds: Sequence[LossHyper], groups: Mapping[str, int],
                 names: Mapping[str, tuple[str, ...]] | None = None) -> None:
        clash = sorted({k.name for k in kinds} & set(rule.hyper_names))
        if clash:
            raise ValueError(f"loss hyperparameter {clash[0]!r} has the name of one of optimizer {rule.name!r}'s")
        self.rule = rule
        self.kinds = tuple(kinds)
        self.groups = {k.name: int(groups[k.name]) for k in kinds if k.per != "run" and k.name in groups}
        self.names = {k: tuple(v) for k, v in (names or {}).items() if len(v) == self.groups.get(k)}
        self.name = rule.name  # type: ignore[misc]
        self.hyperparameters = (*rule.hyperparameters, *(k.spec for k in kinds))  # type: ignore[misc]
        picked = rule.hand_picked
        self.hand_picked = None if picked is None else {**picked, **{k.name: k.neutral for k in kinds}}  # type: ignore[misc]
        self.curvature = rule.curvature  # type: ignore[misc]
        self.rule_names = rule.hyper_names

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The names of the loss hyperparameters, in declaration order."""
        return tuple(k.name for k in self.kinds)

    @property
    def example_names(self) -> tuple[str, ...]:
        """The kinds with one value per training example (the loss needs the minibatch's row indices)."""
        return tuple(k.name for k in self.kinds if k.per == "example")

    def init(self, params: Params) -> State:
        """The wrapped rule's state."""
        return self.rule.init(params)

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int,
             **kwargs: Any) -> tuple[Params, State]:
        """The wrapped rule's step with its own values (``hess_diag`` passed on for a curvature rule)."""
        return self.rule.step(params, state, grads, {k: hyper[k] for k in self.rule_names}, t, **kwargs)

    def torch_optimizer(self, params: Iterable[Tensor], hyper: dict[str, float]) -> torch.optim.Optimizer | None:
        """None: the loss needs its values at every step, so a retrain steps functionally."""
        return None


def loss_names(rule: UpdateRule) -> tuple[str, ...]:
    """The loss hyperparameters of ``rule`` (none unless it is a :class:`WithLossHypers`)."""
    return rule.loss_names if isinstance(rule, WithLossHypers) else ()


def example_names(rule: UpdateRule) -> tuple[str, ...]:
    """The per-example loss hyperparameters of ``rule``."""
    return rule.example_names if isinstance(rule, WithLossHypers) else ()


def rule_of(rule: UpdateRule) -> UpdateRule:
    """The update rule inside ``rule`` (itself unless it carries loss hyperparameters)."""
    return rule.rule if isinstance(rule, WithLossHypers) else rule
