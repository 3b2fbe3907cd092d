"""click parameter types and checks shared by the ``hpo`` commands."""

from __future__ import annotations

import math
from typing import final

import click


@final
class KeyValues(click.ParamType):
    """``name=value,name=value`` parsed into a dict with values of ``kind`` (int or float)."""

    name = "NAME=VALUE,..."

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, float]:
        """Parse the text; a one-line error names the bad piece."""
        if isinstance(value, dict):
            return value
        out: dict[str, float] = {}
        for piece in str(value).split(","):
            piece = piece.strip()
            if not piece:
                continue
            name, eq, raw = piece.partition("=")
            if not eq or not name.strip():
                self.fail(f"expected NAME=VALUE, got {piece!r}", param, ctx)
            try:
                x = self.kind(raw.strip())
            except ValueError:
                self.fail(f"{name.strip()}={raw.strip()!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
            if isinstance(x, float) and not math.isfinite(x):
                self.fail(f"{name.strip()} must be finite, got {raw.strip()}", param, ctx)
            out[name.strip()] = x
        return out


@final
class IntList(click.ParamType):
    """``300`` or ``30,300``: a comma-separated list of positive integers."""

    name = "N[,N...]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        """Parse the list; every entry must be a positive integer."""
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(p) for p in str(value).split(",") if p.strip())
        except ValueError:
            self.fail(f"expected positive integers separated by commas, got {value!r}", param, ctx)
        if not out or min(out) < 1:
            self.fail(f"expected positive integers separated by commas, got {value!r}", param, ctx)
        return out


@final
class GroupRules(click.ParamType):
    """``lr=layer,wd=bias-vs-rest`` or ``lr=conv*,fc*,bias``: a grouping rule per hyperparameter type.

    Pieces are separated by commas; a piece with ``=`` starts a type's rule, a piece without one
    adds a pattern to the rule before it (so ``lr=conv*,fc*,wd=bias-vs-rest`` gives
    ``{"lr": "conv*,fc*", "wd": "bias-vs-rest"}``).  The rules themselves are checked by
    :func:`hpo.core.grouping.check_groups` when the configuration is built.
    """

    name = "TYPE=RULE,..."

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, str]:
        """Parse the text into ``{type: rule}``; a one-line error names the bad piece."""
        if isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        last: str | None = None
        for piece in str(value).split(","):
            piece = piece.strip()
            if not piece:
                continue
            name, eq, rule = piece.partition("=")
            if eq:
                if not name.strip() or not rule.strip():
                    self.fail(f"expected TYPE=RULE, got {piece!r}", param, ctx)
                last = name.strip()
                if last in out:
                    self.fail(f"{last} is given twice", param, ctx)
                out[last] = rule.strip()
            elif last is None:
                self.fail(f"expected TYPE=RULE first (e.g. lr=layer), got {piece!r}", param, ctx)
            else:
                out[last] += "," + piece
        return out
