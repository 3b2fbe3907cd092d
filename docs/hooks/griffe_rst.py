"""Griffe extension: render the reStructuredText bits of our docstrings as Markdown.

The library's docstrings are written for ``help()`` and Sphinx-style readers: ``:func:`x```
roles, ``:math:`...``` inline maths and ``.. math::`` blocks.  mkdocstrings renders docstrings as
Markdown, so this extension rewrites them on load (the source files are not touched):

- ``:func:`x``` / ``:class:`` / ``:meth:`` / ... become ``x`` in code font;
- ``:math:`e``` becomes ``$e$`` and a ``.. math::`` block becomes ``$$ ... $$``
  (rendered by pymdownx.arithmatex);
- a paragraph ending in ``::`` (an RST literal block) ends in ``:``;
- a doctest (``>>>`` lines and their output) becomes a fenced ``pycon`` block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|py:\w+):`~?([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with RST roles, maths and literal-block markers made Markdown."""
    text = MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith(">>>"):
            pad = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            out.append(pad + "```pycon")
            while i < len(lines) and lines[i].strip() and lines[i].startswith(pad):
                out.append(lines[i])
                i += 1
            out.append(pad + "```")
            continue
        m = DIRECTIVE.match(lines[i])
        if not m:
            line = lines[i]
            if line.rstrip().endswith("::") and line.strip() != "::":
                line = line.rstrip()[:-1]
            elif line.strip() == "::":
                line = ""
            out.append(line)
            i += 1
            continue
        indent = len(m.group(1))
        body = [m.group(2)] if m.group(2).strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        pad = " " * indent
        out += [pad + "$$", *(pad + b for b in body if b), pad + "$$", ""]
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`rst_to_markdown` as griffe loads it."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        """Convert ``obj``'s docstring in place (griffe's own object, not the source)."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
