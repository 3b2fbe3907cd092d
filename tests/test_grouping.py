"""Grouping rules: layer, top-level, param, bias-vs-rest and patterns; bad rules and stray parameters are one line, exit 2."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hpo.cli import cli
from hpo.cli.types import GroupRules
from hpo.core.grouping import check_groups, grouped_rule, matches, resolve_grouping
from hpo.errors import ConfigError
from hpo.optimizers import SGDMomentum
from hpo.optimizers.grouped import Cell, GroupedRule

# A CNN-like parameter set: layers inside a Sequential, a head, a norm layer.
PARAMS = {
    "features.0.weight": torch.zeros(4, 1, 5), "features.0.bias": torch.zeros(4),
    "features.1.weight": torch.zeros(4), "features.1.bias": torch.zeros(4),  # a BatchNorm
    "features.3.weight": torch.zeros(4, 4, 3), "features.3.bias": torch.zeros(4),
    "head.weight": torch.zeros(10, 8), "head.bias": torch.zeros(10),
}


def groups_of(rule: str) -> dict[str, list[str]]:
    """``group name -> parameters`` under ``rule`` for type lr."""
    g = resolve_grouping({"lr": rule}, PARAMS)
    out: dict[str, list[str]] = {name: [] for name in g.names["lr"]}
    for p, i in g.index["lr"].items():
        out[g.names["lr"][i]].append(p)
    return out


def test_layer_is_the_module_owning_the_parameter() -> None:
    assert groups_of("layer") == {
        "features.0": ["features.0.weight", "features.0.bias"], "features.1": ["features.1.weight", "features.1.bias"],
        "features.3": ["features.3.weight", "features.3.bias"], "head": ["head.weight", "head.bias"]}
    root = resolve_grouping({"lr": "layer"}, {"scale": torch.zeros(()), "fc.weight": torch.zeros(2, 2)})
    assert root.names["lr"] == ("(root)", "fc")


def test_top_level_and_param() -> None:
    assert groups_of("top-level") == {"features": [p for p in PARAMS if p.startswith("features")],
                                      "head": ["head.weight", "head.bias"]}
    assert groups_of("param") == {p: [p] for p in PARAMS}


def test_bias_vs_rest_splits_by_dimension() -> None:
    assert groups_of("bias-vs-rest") == {
        "bias-norm": ["features.0.bias", "features.1.weight", "features.1.bias", "features.3.bias", "head.bias"],
        "rest": ["features.0.weight", "features.3.weight", "head.weight"]}


def test_patterns_first_match_wins_and_match_top_level_or_last_component() -> None:
    assert groups_of("bias,features*,head") == {
        "bias": ["features.0.bias", "features.1.bias", "features.3.bias", "head.bias"],
        "features*": ["features.0.weight", "features.1.weight", "features.3.weight"], "head": ["head.weight"]}
    assert groups_of("features.0.*,*") == {"features.0.*": ["features.0.weight", "features.0.bias"],
                                           "*": [p for p in PARAMS if not p.startswith("features.0.")]}
    assert matches("head", "head.weight") and matches("weight", "head.weight") and matches("head*", "head.bias")
    assert not matches("features.0", "features.0.weight")  # with a dot: the full name only
    assert not matches("0", "features.0.weight")  # a middle component is neither first nor last


def test_a_parameter_no_pattern_matches_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^groups: parameter 'features.1.weight' matches no pattern of lr=bias,"
                                          r"features.0.\*,head") as e:
        resolve_grouping({"lr": "bias,features.0.*,head"}, PARAMS)
    assert e.value.field == "groups" and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="pattern 'conv\\*' of lr=head,conv\\*,\\* matches no parameter"):
        resolve_grouping({"lr": "head,conv*,*"}, PARAMS)
    with pytest.raises(ConfigError, match="group 'rest' of wd=bias-vs-rest holds no parameter"):
        resolve_grouping({"wd": "bias-vs-rest"}, {"b": torch.zeros(3)})


@pytest.mark.parametrize(("groups", "message"), [
    ({"lr": ""}, "empty pattern"),
    ({"lr": "layer,fc*"}, "cannot be mixed with patterns"),
    ({"lr": "a,a"}, "repeats a pattern"),
    ({"lr": 3}, "must be text"),
    ({"nope": "layer"}, "has no hyperparameter 'nope'"),
])
def test_bad_rules_are_config_errors(groups, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        check_groups("groups", groups, ("lr", "momentum", "wd"), "sgd")
    assert e.value.field == "groups"


def test_all_is_the_default_and_is_dropped() -> None:
    assert check_groups("groups", {"lr": "all", "wd": " conv* , fc* "}) == {"wd": "conv*,fc*"}
    assert grouped_rule(SGDMomentum(), {"lr": "all"}, PARAMS).__class__ is SGDMomentum


def test_cells_partition_by_every_grouped_type() -> None:
    rule = grouped_rule(SGDMomentum(), {"lr": "top-level", "wd": "bias-vs-rest"}, PARAMS)
    assert isinstance(rule, GroupedRule)
    assert rule.cells == (
        Cell(("features.0.weight", "features.3.weight"), {"lr": 0, "wd": 1}),
        Cell(("features.0.bias", "features.1.weight", "features.1.bias", "features.3.bias"), {"lr": 0, "wd": 0}),
        Cell(("head.weight",), {"lr": 1, "wd": 1}),
        Cell(("head.bias",), {"lr": 1, "wd": 0}),
    )


def test_cli_parses_patterns_with_commas() -> None:
    parse = GroupRules().convert
    assert parse("lr=layer,wd=bias-vs-rest", None, None) == {"lr": "layer", "wd": "bias-vs-rest"}
    assert parse("lr=conv*,fc*,bias,wd=bias-vs-rest", None, None) == {"lr": "conv*,fc*,bias", "wd": "bias-vs-rest"}
    assert parse("", None, None) == {}


@pytest.mark.parametrize(("value", "message"), [
    ("layer", "expected TYPE=RULE first"),
    ("lr=", "expected TYPE=RULE"),
    ("lr=layer,lr=param", "lr is given twice"),
    ("lr=warp", "matches no pattern"),  # a one-word pattern that matches nothing... is a pattern: the run says so
    ("nope=layer", "has no hyperparameter 'nope'"),
    ("lr=net.0.*,net.2.*", "parameter 'net.4.weight' matches no pattern of lr=net.0.*,net.2.*"),
])
def test_cli_bad_groups_are_one_line_and_exit_2(value, message, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_DATA", str(tmp_path / "data"))
    res = CliRunner().invoke(cli, ["run", "--samples", "200", "--outer-steps", "1", "--inner-steps", "8",
                                   "--device", "cpu", "--groups", value, "--logdir", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--groups': ") and message in lines[0], lines
    assert not (tmp_path / "x").exists()  # nothing written before the groups are resolved
