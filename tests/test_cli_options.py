"""The CLI's options: declared once, listed under headings, the same flag on every command."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from hpo.app.config import RunConfig
from hpo.cli.main import cli
from hpo.cli.options import HEADINGS, OPTIONS

MAIN = Path(__file__).resolve().parents[1] / "hpo" / "cli" / "main.py"


def sections(command: str) -> list[str]:
    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    return [line[:-1] for line in out.splitlines() if re.fullmatch(r"[A-Z][a-z ]+:", line)]


def test_run_and_compare_list_their_options_under_the_headings_in_order() -> None:
    expected = [*HEADINGS, "Other"]
    assert sections("run") == expected
    assert sections("compare") == expected


def test_no_command_declares_an_option_of_its_own() -> None:
    assert "click.option(" not in MAIN.read_text(), "options are declared in hpo/cli/options.py only"


def test_a_shared_option_is_the_same_on_every_command() -> None:
    params = {name: {p.name: p for p in cli.commands[name].params} for name in ("run", "compare", "retrain")}
    for flag in ("task", "optimizer", "counts", "outer", "outer_options", "divergence", "device", "logdir"):
        found = [params[c][flag] for c in ("run", "compare") if flag in params[c]]
        assert len(found) == 2, flag
        assert found[0].opts == found[1].opts and found[0].help == found[1].help, flag
        assert type(found[0].type) is type(found[1].type), flag


def test_every_run_option_is_a_configuration_field() -> None:
    fields = set(RunConfig.__dataclass_fields__)
    for p in cli.commands["run"].params:
        if isinstance(p, click.Option) and p.name not in ("resume_dir", "progress", "help"):
            assert p.name in fields, p.name
    assert len(OPTIONS) == len(set(OPTIONS))
