"""Grouping rules: which parameters share a hyperparameter type's values.

Each type has one rule, given as text (``--groups lr=layer,wd=bias-vs-rest`` on the CLI,
``RunConfig(groups={"lr": "layer"})`` from Python):

``all`` (the default)
    One group: the type's values are shared by every parameter (a 1-D ``(segments,)`` tensor,
    today's behaviour, bit for bit).
``layer``
    One group per layer: the module that owns the parameter, i.e. the parameter name without its
    last component (``conv1.weight`` and ``conv1.bias`` are group ``conv1``;
    ``features.0.weight`` is group ``features.0``; a parameter of the root module itself is group
    ``(root)``).  Every ``Linear``, ``Conv`` and normalisation layer is its own group, also inside
    an ``nn.Sequential``.
``top-level``
    One group per top-level module: the part of the name before the first ``.``
    (``features.0.weight`` and ``features.2.weight`` are both group ``features``).
``param``
    One group per parameter tensor, named by the parameter.
``bias-vs-rest``
    Two groups: ``bias-norm``, every parameter with at most one dimension (biases, the weights
    and biases of normalisation layers, scalars), and ``rest``, every parameter with two or more
    dimensions (linear weight matrices, convolution kernels).
patterns, e.g. ``conv*,fc*,bias``
    One group per pattern, named by the pattern, in the given order.  A parameter belongs to the
    group of the *first* pattern that matches it.  A pattern is matched with
    :func:`fnmatch.fnmatchcase` (``*``, ``?``, ``[seq]``; case-sensitive) against the full
    parameter name; a pattern without a ``.`` also matches when it matches the first component
    (the top-level module, ``conv1``) or the last component (``bias``) of the name.  A
    parameter that no pattern matches is an error naming it, and so is a pattern that matches
    no parameter (add a catch-all ``*`` last to take the rest).

Groups are listed in the order of ``named_parameters()`` (of their first parameter).  A grouped
type's values form a ``(groups, segments)`` table (see :mod:`hpo.optimizers.grouped`).

Why ``layer`` is the owning module and not the top-level module: models commonly hold their
layers in an ``nn.Sequential`` (MNIST-1D's MLP is ``net.0``, ``net.2``, ``net.4``), where the
top-level module would put every layer into one group.

Example:
    >>> import torch
    >>> params = {"conv1.weight": torch.zeros(4, 1, 3), "conv1.bias": torch.zeros(4), "fc.weight": torch.zeros(2, 4)}
    >>> g = resolve_grouping({"lr": "layer", "wd": "bias-vs-rest"}, params)
    >>> g.names["lr"], g.names["wd"], dict(g.index["wd"])
    (('conv1', 'fc'), ('bias-norm', 'rest'), {'conv1.weight': 1, 'conv1.bias': 0, 'fc.weight': 1})
    >>> resolve_grouping({"lr": "layer"}, {"net.0.weight": torch.zeros(2, 2), "net.2.weight": torch.zeros(2, 2)}).names
    {'lr': ('net.0', 'net.2')}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from torch import Tensor

from hpo.errors import ConfigError
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import GroupedRule, ParamGrouping

ALL = "all"


LAYER = "layer"


TOP_LEVEL = "top-level"


PARAM = "param"


BIAS_VS_REST = "bias-vs-rest"


#: Group names of ``bias-vs-rest``: parameters with at most one dimension, then the others.
BIAS_GROUPS = ("bias-norm", "rest")


#: The group of a parameter that the root module holds itself, under ``layer``.
ROOT = "(root)"


KEYWORDS = (ALL, LAYER, TOP_LEVEL, PARAM, BIAS_VS_REST)


def layer_of(param: str) -> str:
    """The module owning ``param``: its name without the last component (``(root)`` for none)."""
    return param.rpartition(".")[0] or ROOT


#: Keyword rules that name each parameter's group by a function of its name.
BY_NAME = {LAYER: layer_of, TOP_LEVEL: lambda p: p.split(".")[0], PARAM: lambda p: p}


def normalize_rule(field: str, name: str, text: Any) -> str:
    """One type's rule text in canonical form (``conv*, fc*`` -> ``conv*,fc*``); ``ConfigError`` if malformed."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if not isinstance(text, str):
        raise ConfigError(field, f"the grouping of {name} must be text ({', '.join(KEYWORDS)} or patterns), "
                                 f"got {text!r}")
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts):
        raise ConfigError(field, f"the grouping of {name} has an empty pattern: {text!r}")
    if len(parts) == 1 and parts[0] in KEYWORDS:
        return parts[0]
    for p in parts:
        if p in KEYWORDS:
            raise ConfigError(field, f"{p!r} in the grouping of {name} cannot be mixed with patterns: {text!r}")
        if "=" in p or any(c.isspace() for c in p):
            raise ConfigError(field, f"pattern {p!r} in the grouping of {name} may not hold '=' or spaces")
    if len(set(parts)) != len(parts):
        raise ConfigError(field, f"the grouping of {name} repeats a pattern: {text!r}")
    return ",".join(parts)


def check_groups(field: str, groups: Any, hyper_names: Sequence[str] | None = None,
                 rule_name: str = "") -> dict[str, str]:
    """``groups`` (type -> rule text) checked and normalized; ``all`` entries dropped (the default)."""
    if not isinstance(groups, Mapping):
        raise ConfigError(field, f"must map hyperparameter names to grouping rules, got {groups!r}")
    out: dict[str, str] = {}
    for name, text in groups.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(field, f"names must be non-empty strings, got {name!r}")
        if hyper_names is not None and name not in hyper_names:
            raise ConfigError(field, f"optimizer {rule_name!r} has no hyperparameter {name!r} "
                                     f"(it has {', '.join(hyper_names)})")
        rule = normalize_rule(field, name, text)
        if rule != ALL:
            out[name] = rule
    return out


def matches(pattern: str, param: str) -> bool:
    """Whether ``pattern`` matches parameter name ``param`` (see the module docstring)."""
    if fnmatchcase(param, pattern):
        return True
    if "." in pattern:
        return False
    parts = param.split(".")
    return fnmatchcase(parts[0], pattern) or fnmatchcase(parts[-1], pattern)


def assign(name: str, rule: str, params: Mapping[str, Tensor], field: str = "groups") -> tuple[tuple[str, ...], dict[str, int]]:
    """``(group names, parameter -> group index)`` of one type's rule; ``ConfigError`` naming a stray parameter."""
    if rule in BY_NAME:
        of = BY_NAME[rule]
        groups = {g: i for i, g in enumerate(dict.fromkeys(of(p) for p in params))}
        return tuple(groups), {p: groups[of(p)] for p in params}
    if rule == BIAS_VS_REST:
        index = {p: 0 if v.dim() <= 1 else 1 for p, v in params.items()}
        for g, group in enumerate(BIAS_GROUPS):
            if g not in index.values():
                raise ConfigError(field, f"group {group!r} of {name}={rule} holds no parameter (the model has no "
                                         f"parameter with {'at most one' if g == 0 else 'two or more'} dimensions)")
        return BIAS_GROUPS, index
    patterns = rule.split(",")
    index = {}
    for p in params:
        hit = next((i for i, pat in enumerate(patterns) if matches(pat, p)), None)
        if hit is None:
            raise ConfigError(field, f"parameter {p!r} matches no pattern of {name}={rule} (add '*' last to "
                                     f"group the rest)")
        index[p] = hit
    for i, pat in enumerate(patterns):
        if i not in index.values():
            raise ConfigError(field, f"pattern {pat!r} of {name}={rule} matches no parameter"
                                     f"{' left by the patterns before it' if i else ''}")
    return tuple(patterns), index


def resolve_grouping(groups: Mapping[str, str], params: Mapping[str, Tensor], field: str = "groups") -> ParamGrouping:
    """The grouping of ``params`` (a model's named parameters) under ``groups`` (type -> rule text)."""
    rules = check_groups(field, groups)
    names: dict[str, tuple[str, ...]] = {}
    index: dict[str, dict[str, int]] = {}
    for name, rule in rules.items():
        names[name], index[name] = assign(name, rule, params, field)
    return ParamGrouping(tuple(params), names, index)


def grouped_rule(rule: UpdateRule, groups: Mapping[str, str], params: Mapping[str, Tensor],
                 field: str = "groups") -> UpdateRule:
    """``rule`` wrapped in a :class:`GroupedRule` for ``groups``; ``rule`` itself when nothing is grouped.

    A rule that is already grouped is returned as it is.  With every type ``all`` the rule is not
    wrapped at all, so results are bit-identical to an ungrouped run.
    """
    if isinstance(rule, GroupedRule):
        return rule
    check_groups(field, groups, rule.hyper_names, rule.name)
    grouping = resolve_grouping(groups, params, field)
    return rule if grouping.trivial else GroupedRule(rule, grouping)
