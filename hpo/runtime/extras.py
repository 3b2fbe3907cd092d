"""Optional dependencies: the ``baselines`` extra (``schedulefree``, ``ray[tune]``), found without importing them.

A search method that needs one asks :func:`require` in its ``check``; a missing package is a
:class:`MissingExtra`, which ``hpo compare`` turns into one line naming the extra::

    Error: Invalid value for '--methods': pbt needs Ray Tune: pip install -e '.[baselines]'
"""

from __future__ import annotations

import importlib.util
from typing import final


@final
class MissingExtra(ValueError):
    """An optional package a method needs is not installed: ``what`` it is, and the ``extra`` that installs it."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"needs {what}: pip install -e '.[{extra}]'")
        self.what = what
        self.extra = extra


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (looked up, not imported; ``sys.modules[module] = None`` counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, what: str, extra: str = "baselines") -> None:
    """:class:`MissingExtra` unless ``module`` is installed."""
    if not installed(module):
        raise MissingExtra(what, extra)
