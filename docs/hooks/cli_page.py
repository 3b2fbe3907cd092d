"""MkDocs hook: the command-line reference from ``hpo --help`` itself.

The page ``reference/cli.md`` holds the marker ``<!-- cli-help -->``; on every build it is replaced
by each command's ``--help`` text, so the reference shows the options under the same headings
as the terminal (problem, hyperparameters, outer loop, ...) and cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-help -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace :data:`MARKER` on the CLI page with the help of ``hpo`` and every subcommand."""
    if MARKER not in markdown:
        return markdown
    import click

    from hpo.cli.main import cli

    parts = []
    with click.Context(cli, info_name="hpo", terminal_width=100) as root:
        parts += ["## `hpo`", "", "```text", root.get_help(), "```", ""]
        for name in sorted(cli.commands):
            command = cli.commands[name]
            with click.Context(command, info_name=name, parent=root, terminal_width=100) as ctx:
                parts += [f"## `hpo {name}`", "", "```text", command.get_help(ctx), "```", ""]
    return markdown.replace(MARKER, "\n".join(parts))
