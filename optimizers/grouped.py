"""Hyperparameters shared over parameter groups: a wrapper that makes any rule grouped.

A grouped type's values form a ``(groups, segments)`` table; parameter ``p`` at inner step ``t``
uses

.. math::  \\lambda_{name}(p, t) = \\Lambda_{name}[\\,\\mathrm{group}_{name}(p),\\ \\mathrm{seg}(t)\\,]

so at step ``t`` a grouped type's value is a ``(groups,)`` vector, a shared type's a 0-d tensor.
Rules need no change: :class:`GroupedRule` partitions the parameters into *cells* (the sets of
parameters that share the same group for every grouped type) and calls the wrapped rule once per
cell, on that cell's parameters, with every hyperparameter already picked for the cell:

.. math::  (\\theta'_c, s'_c) = \\mathrm{step}(\\theta_c, s_c, g_c,
           \\{name: \\lambda_{name}[\\mathrm{group}_{name}(c)]\\}, t) \\quad \\text{for each cell } c

Because the pick is an ordinary tensor index, ``torch.func.jvp``/``vjp`` of the wrapped step give
the derivatives with respect to every group's value with nothing derived by hand, and a rule's
hand-derived ``tangent`` is used per cell in the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

import torch
from torch import Tensor

from hpo.optimizers.base import Hyper, Params, State, UpdateRule
from hpo.optimizers.loss_hypers import WithLossHypers


@final
@dataclass(frozen=True)
class Cell:
    """Parameters that share one group for every grouped type: ``index[name]`` is that group."""

    params: tuple[str, ...]
    index: Mapping[str, int]

    def pick(self, hyper: Mapping[str, Any], split: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Every hyperparameter for this cell: ``split[name][g]`` for grouped types, ``hyper[name]`` else."""
        return {name: split[name][self.index[name]] if name in self.index else v for name, v in hyper.items()}


@final
@dataclass(frozen=True)
class ParamGrouping:
    """A resolved grouping: per grouped type its group names and the group index of every parameter.

    ``params`` is the parameter order (as from ``named_parameters()``); ``names[type]`` the group
    names of a grouped type; ``index[type][param]`` a parameter's group.  Types absent from
    ``names`` are shared over all parameters (their values stay a 1-D ``(segments,)`` tensor).
    """

    params: tuple[str, ...]
    names: Mapping[str, tuple[str, ...]]
    index: Mapping[str, Mapping[str, int]]

    @property
    def group_counts(self) -> dict[str, int]:
        """Number of groups of every grouped type."""
        return {name: len(groups) for name, groups in self.names.items()}

    @property
    def trivial(self) -> bool:
        """True when no type is grouped (every value shared over all parameters)."""
        return not self.names

    def cells(self) -> tuple[Cell, ...]:
        """The parameters partitioned by their group tuple, in order of first appearance."""
        order: dict[tuple[int, ...], list[str]] = {}
        types = tuple(self.names)
        for p in self.params:
            order.setdefault(tuple(self.index[name][p] for name in types), []).append(p)
        return tuple(Cell(tuple(ps), dict(zip(types, key))) for key, ps in order.items())

    def param_groups(self, named_params: Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]) -> list[dict[str, Any]]:
        """``torch.optim`` param groups, one per cell, for a model's ``named_parameters()``.

        Each group holds its tensors under ``"params"`` and its group index per grouped type under
        ``"hpo_groups"`` (``{"lr": 2}``), which :class:`hpo.core.torch_scheduler.ScheduleDriver` reads.

        Example:
            >>> import torch
            >>> from hpo.core.grouping import resolve_grouping
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
            >>> grouping = resolve_grouping({"lr": "layer"}, dict(model.named_parameters()))
            >>> opt = torch.optim.SGD(grouping.param_groups(model.named_parameters()), lr=0.0)
            >>> [g["hpo_groups"] for g in opt.param_groups]
            [{'lr': 0}, {'lr': 1}]
        """
        items = list(named_params.items() if isinstance(named_params, Mapping) else named_params)
        if not all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
            raise TypeError("param groups of a grouping need named parameters: pass model.named_parameters()")
        named = dict(items)
        if set(named) != set(self.params):
            missing = sorted(set(self.params) - set(named))
            unknown = sorted(set(named) - set(self.params))
            raise ValueError(f"the parameters do not match the grouping (missing {missing[:3]}, unknown {unknown[:3]})")
        return [{"params": [named[p] for p in cell.params], "hpo_groups": dict(cell.index)} for cell in self.cells()]


def split_grouped(hyper: Mapping[str, Any], grouped: Iterable[str]) -> dict[str, Sequence[Any]]:
    """Each grouped type's ``(groups,)`` value split into its groups (one ``unbind`` per type)."""
    out: dict[str, Sequence[Any]] = {}
    for name in grouped:
        v = hyper[name]
        out[name] = v.unbind(0) if isinstance(v, Tensor) else list(v)
    return out


def sub(tree: Mapping[str, Tensor], names: Sequence[str]) -> Params:
    """``{n: tree[n]}`` for the names of one cell."""
    return {n: tree[n] for n in names}


def sub_state(state: State, names: Sequence[str]) -> State:
    """The optimizer state restricted to one cell's parameters (every state entry is per parameter)."""
    return {key: sub(per_param, names) for key, per_param in state.items()}


def merge(order: Sequence[str], parts: Sequence[Params]) -> Params:
    """The cells' dicts joined back, in the original parameter order (pytree structure preserved)."""
    joined: Params = {}
    for part in parts:
        joined.update(part)
    return {n: joined[n] for n in order}


def merge_state(order: Sequence[str], parts: Sequence[State]) -> State:
    """The cells' optimizer states joined back, key by key, in the original parameter order."""
    keys = list(parts[0]) if parts else []
    return {key: merge(order, [part[key] for part in parts]) for key in keys}


@final
class GroupedRule(UpdateRule):
    """Any :class:`UpdateRule` with some hyperparameter types shared per parameter group.

    ``hyper[name]`` is a ``(groups,)`` vector for a grouped type and a 0-d tensor for a shared
    one; :meth:`step` calls the wrapped rule once per cell of ``grouping`` with each value picked
    for that cell (see the module docstring).  ``name``, ``hyperparameters``, ``hand_picked`` and
    ``hand_tangent`` are the wrapped rule's; every state entry must be a per-parameter dict.

    Example:
        >>> import torch
        >>> from hpo.optimizers import SGDMomentum
        >>> grouping = ParamGrouping(("a", "b"), {"lr": ("A", "B")}, {"lr": {"a": 0, "b": 1}})
        >>> rule = GroupedRule(SGDMomentum(), grouping)
        >>> p = {"a": torch.tensor([1.0]), "b": torch.tensor([1.0])}
        >>> h = {"lr": torch.tensor([0.1, 0.5]), "momentum": torch.tensor(0.0), "wd": torch.tensor(0.0)}
        >>> new, _ = rule.step(p, rule.init(p), {"a": torch.tensor([1.0]), "b": torch.tensor([1.0])}, h, 0)
        >>> new["a"], new["b"]
        (tensor([0.9000]), tensor([0.5000]))
    """

    def __init__(self, rule: UpdateRule, grouping: ParamGrouping) -> None:
        unknown = sorted(set(grouping.names) - set(rule.hyper_names))
        if unknown:
            raise ValueError(f"optimizer {rule.name!r} has no hyperparameter {unknown[0]!r} to group")
        self.rule = rule
        self.grouping = grouping
        self.name = rule.name  # type: ignore[misc]
        self.hyperparameters = rule.hyperparameters  # type: ignore[misc]
        self.hand_picked = rule.hand_picked  # type: ignore[misc]
        self.hand_tangent = rule.hand_tangent  # type: ignore[misc]
        self.cells = grouping.cells()

    def init(self, params: Params) -> State:
        """The wrapped rule's state (per parameter, so it needs no grouping)."""
        return self.rule.init(params)

    def step(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int) -> tuple[Params, State]:
        """The wrapped rule's step once per cell, each hyperparameter picked for the cell; merged."""
        split = split_grouped(hyper, self.grouping.names)
        outs = [self.rule.step(sub(params, c.params), sub_state(state, c.params), sub(grads, c.params),
                               c.pick(hyper, split), t) for c in self.cells]
        order = list(params)
        return merge(order, [o[0] for o in outs]), merge_state(order, [o[1] for o in outs])

    def tangent(self, params: Params, state: State, grads: Params, hyper: Hyper, t: int, d_params: Params,
                d_state: State, d_grads: Params, d_hyper: Hyper) -> tuple[Params, State]:
        """The wrapped rule's hand-derived tangent once per cell (``d_hyper`` picked like ``hyper``)."""
        split = split_grouped(hyper, self.grouping.names)
        d_split = split_grouped(d_hyper, self.grouping.names)
        outs = [self.rule.tangent(sub(params, c.params), sub_state(state, c.params), sub(grads, c.params),
                                  c.pick(hyper, split), t, sub(d_params, c.params), sub_state(d_state, c.params),
                                  sub(d_grads, c.params), c.pick(d_hyper, d_split)) for c in self.cells]
        order = list(params)
        return merge(order, [o[0] for o in outs]), merge_state(order, [o[1] for o in outs])

    def torch_optimizer(self, params: Iterable[Any], hyper: Mapping[str, Any]) -> torch.optim.Optimizer | None:
        """The wrapped rule's ``torch.optim`` optimizer over one param group per cell.

        ``params`` must be *named* (``model.named_parameters()`` or a name -> tensor mapping);
        ``hyper`` holds a float per shared type and a list (one per group) per grouped type.
        """
        groups = self.grouping.param_groups(params)  # type: ignore[arg-type]
        cells = self.cells
        picks = [c.pick(hyper, split_grouped(hyper, self.grouping.names)) for c in cells]
        opt = self.rule.torch_optimizer(groups, {k: float(v) for k, v in picks[0].items()})
        if opt is not None:
            for group, pick in zip(opt.param_groups, picks):
                group.update(self.rule.torch_group({k: float(v) for k, v in pick.items()}))
        return opt

    def torch_group(self, hyper: dict[str, float]) -> dict[str, Any]:
        """The wrapped rule's param-group entries for one cell's (scalar) values."""
        return self.rule.torch_group(hyper)


def group_counts(rule: UpdateRule) -> dict[str, int]:
    """Groups per grouped type of ``rule``: a :class:`GroupedRule`'s, and the values of every loss
    hyperparameter per example, class or layer (:class:`~hpo.optimizers.loss_hypers.WithLossHypers`)."""
    if isinstance(rule, WithLossHypers):
        return {**group_counts(rule.rule), **rule.groups}
    return rule.grouping.group_counts if isinstance(rule, GroupedRule) else {}


def group_names(rule: UpdateRule) -> dict[str, tuple[str, ...]]:
    """Group names per grouped type of ``rule`` (empty for a rule that is not a :class:`GroupedRule`)."""
    if isinstance(rule, WithLossHypers):
        return {**group_names(rule.rule), **rule.names}
    return dict(rule.grouping.names) if isinstance(rule, GroupedRule) else {}
