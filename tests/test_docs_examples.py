"""Every code example in the docs runs, so the docs cannot drift from the code.

For each page (``docs/**/*.md`` and ``README.md``):

- its fenced ``python`` blocks run in order, in one namespace per page, in a temporary working
  directory (on ``sys.path``, with ``docs/`` linked in).  A block with ``title="name.py"`` is also written to that file
  first, so later blocks can import it and ``hpo`` commands can load ``name.py:attr`` from it;
- every ``hpo ...`` line of its ``console``/``bash``/``shell`` blocks must parse: the command and
  its options exist and the values convert (click's own parser, nothing runs).  A block preceded
  by ``<!-- run -->`` is also run, with click's test runner, and must exit 0 (keep those tiny);
- a block preceded by ``<!-- skip -->`` is neither run nor parsed; keep that for what cannot run
  offline.

The docstring examples (``>>>``) of the library modules run here as doctests too.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
TITLE = re.compile(r'title="([^"]+)"')
PYTHON = {"python", "py", "python3"}
SHELL = {"console", "bash", "shell", "sh"}
MARKERS = ("<!-- skip -->", "<!-- run -->")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    lang: str
    code: str
    line: int
    title: str | None
    marker: str | None


def doc_pages() -> list[Path]:
    """The Markdown pages whose examples are tested."""
    pages = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    return pages + ([readme] if readme.exists() else [])


def fenced_blocks(text: str) -> list[Block]:
    """Fenced code blocks of ``text`` (also inside admonitions and tabs, i.e. indented)."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        lang = info.split()[0].lstrip(".").lower() if info else ""
        title = TITLE.search(info)
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start = i + 1
        j = start
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:j]]
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, title.group(1) if title else None,
                            prev if prev in MARKERS else None))
        i = j + 1
    return blocks


def hpo_commands(block: Block) -> list[list[str]]:
    """The ``hpo`` command lines of a shell block.

    When the block uses ``$ `` prompts, only prompted lines are commands (the rest is output);
    ``\\`` continues a command on the next line; ``&&`` and ``;`` separate commands.
    """
    prompted = any(ln.lstrip().startswith("$ ") for ln in block.code.splitlines())
    commands, pending = [], ""
    for raw in block.code.splitlines():
        line = raw.strip()
        if pending:
            line, pending = pending + " " + line, ""
        elif prompted:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            if part == "hpo" or part.startswith("hpo "):
                commands.append(shlex.split(part, comments=True)[1:])
    return commands


def parse_command(args: list[str]) -> None:
    """Parse ``hpo ARGS`` with click without running anything; raise on an unknown or bad option."""
    from hpo.cli import cli

    try:
        ctx = cli.make_context("hpo", list(args))
        with ctx:
            protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args  # click < 8.2
            rest = [*protected, *ctx.args]
            if rest:
                name, cmd, sub_args = cli.resolve_command(ctx, rest)
                assert cmd is not None, f"no command {rest[0]!r}"
                cmd.make_context(name, sub_args, parent=ctx).close()
    except click.exceptions.Exit as e:  # --help / --version
        assert e.exit_code == 0


PAGES = doc_pages()


def page_id(path: Path) -> str:
    """A readable test id: the page path relative to the repository."""
    return str(path.relative_to(ROOT))


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory on ``sys.path``, with the MNIST-1D cache inside it.

    ``docs`` inside it links to the real ``docs/``, so examples may name files under ``docs/`` as
    a reader in the repository root would, while everything they write stays in the scratch dir.
    """
    (tmp_path / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HPO_DATA", os.environ.get("HPO_DATA", str(tmp_path / "data")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def test_docs_have_examples() -> None:
    """The pages are found and most carry code (so an empty scan cannot pass silently)."""
    names = {page_id(p) for p in PAGES}
    assert "docs/getting-started.md" in names and "docs/how-to/optimizer-rule.md" in names
    assert sum(1 for b in fenced_blocks((ROOT / "docs/how-to/optimizer-rule.md").read_text()) if b.lang in PYTHON) >= 2


def test_block_parser() -> None:
    """Fences, titles, markers and indented (admonition) blocks are found; shell lines are split."""
    text = ('x\n```python\na = 1\n```\n<!-- skip -->\n```python title="m.py"\nb = 2\n```\n'
            '!!! note\n    ```console\n    $ hpo run --seed 1 \\\n        --outer-steps 2\n    ```\n')
    blocks = fenced_blocks(text)
    assert [(b.lang, b.title, b.marker) for b in blocks] == [
        ("python", None, None), ("python", "m.py", "<!-- skip -->"), ("console", None, None)]
    assert blocks[0].code == "a = 1\n" and blocks[0].line == 3
    assert hpo_commands(blocks[2]) == [["run", "--seed", "1", "--outer-steps", "2"]]
    parse_command(["run", "--seed", "1"])
    with pytest.raises(click.UsageError):
        parse_command(["run", "--no-such-option"])
    with pytest.raises(click.BadParameter):
        parse_command(["run", "--inner-steps", "ten"])


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_examples(page: Path, page_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the page's Python blocks in order in one namespace; parse (or run) its ``hpo`` commands."""
    module = ModuleType("docs_page")  # a real module, so dataclasses and pickling work in examples
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for block in fenced_blocks(page.read_text()):
        if block.marker == "<!-- skip -->":
            continue
        where = f"{page_id(page)}:{block.line}"
        if block.lang in PYTHON:
            if block.title:
                (page_dir / block.title).write_text(block.code)
            code = "\n" * (block.line - 1) + block.code  # tracebacks give the page's line numbers
            exec(compile(code, str(page), "exec"), namespace)  # noqa: S102 - the docs' own examples
        elif block.lang in SHELL:
            for args in hpo_commands(block):
                parse_command(args)
                if block.marker == "<!-- run -->":
                    from hpo.cli import cli

                    result = CliRunner().invoke(cli, args, catch_exceptions=False)
                    assert result.exit_code == 0, f"{where}: hpo {shlex.join(args)}\n{result.output}"


LIBRARY_MODULES = sorted(
    f"{pkg}.{p.relative_to(ROOT / pkg).with_suffix('').as_posix().replace('/', '.')}".removesuffix(".__init__")
    for pkg in ("hpo", "backends", "optimizers", "tasks")
    for p in (ROOT / pkg).rglob("*.py")
    if p.name != "__main__.py"
)


@pytest.mark.parametrize("module_name", LIBRARY_MODULES)
def test_docstring_examples(module_name: str, page_dir: Path) -> None:
    """The ``>>>`` examples in the module's docstrings pass as doctests."""
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        runner.run(test, out=sys.stdout.write)
    assert runner.failures == 0
