"""Shared test fixtures and helpers: where the library's modules are, and the checkout kept clean."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: hpo.backends, hpo.optimizers and hpo.tasks live in their own top-level folders (package-dir), so
#: walking hpo.__path__ alone does not reach them.
PACKAGES = ("hpo", "hpo.backends", "hpo.optimizers", "hpo.tasks")


def library_modules() -> list[str]:
    """Dotted names of every module of the library (``hpo.__main__`` included)."""
    names = set()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            names.add(info.name)
    return sorted(names)


def module_path(module: str) -> Path:
    """The source file of ``module`` (found without importing it)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin)


@pytest.fixture(autouse=True)
def _keep_checkout_clean(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a fresh temporary folder, so default outputs (``runs/``) never land in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
