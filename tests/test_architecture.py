"""The shape of the house: one namespace, layers that import one way, click only in the CLI.

The import graph is read from the source (``ast``), so a cycle hidden behind a lazy import or a
``TYPE_CHECKING`` block is found as well.  Every class is either abstract or final.
"""

from __future__ import annotations

import abc
import ast
import importlib
import inspect
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, library_modules, module_path

#: The layers, lowest first; a module may import only from its own layer or below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("hpo.errors", "hpo.checks", "hpo.runtime")),
    ("rules", ("hpo.optimizers",)),
    ("core", ("hpo.core", "hpo.outer")),
    ("tasks and backends", ("hpo.tasks", "hpo.backends")),
    ("checking", ("hpo.checking",)),
    ("search methods", ("hpo.search",)),
    ("reporting", ("hpo.reporting",)),
    ("application", ("hpo.app", "hpo")),
    ("cli", ("hpo.cli", "hpo.__main__")),
]


def layer_of(module: str) -> int:
    """Index of the layer ``module`` belongs to (the longest matching prefix wins)."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def imports_of(module: str) -> set[str]:
    """Library modules that ``module``'s source imports, anywhere in the file."""
    tree = ast.parse(module_path(module).read_text())
    known = set(library_modules())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from hpo import checks`` imports the module hpo.checks, not names of the package hpo
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n.startswith("hpo")}
    out.discard(module)
    return out


def graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the whole library."""
    return {m: imports_of(m) for m in library_modules()}


def test_every_library_module_is_reached() -> None:
    mods = library_modules()
    for expected in ("hpo.app.config", "hpo.app.run", "hpo.cli.main", "hpo.backends.forward", "hpo.optimizers.sgd",
                     "hpo.tasks.base", "hpo.search.base"):
        assert expected in mods


def test_layers_import_only_downwards() -> None:
    bad = []
    for module, deps in graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(module):
                bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not bad, "\n".join(sorted(bad))


def test_import_graph_has_no_cycle() -> None:
    g = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for dep in sorted(g.get(node, ())):
            if dep != "hpo":  # importing a submodule runs hpo/__init__ first; that is not an edge
                visit(dep, [*path, node])
        done.add(node)

    for m in sorted(g):
        visit(m, [])


def test_a_cycle_would_be_found() -> None:
    """The cycle check itself works: a two-module cycle in a fake graph is reported."""
    g = {"a": {"b"}, "b": {"a"}}
    with pytest.raises(AssertionError, match="import cycle"):
        def visit(node: str, path: list[str]) -> None:
            if node in path:
                raise AssertionError("import cycle: " + " -> ".join([*path, node]))
            for dep in g[node]:
                visit(dep, [*path, node])
        visit("a", [])


def test_no_lazy_exports_or_type_checking_imports() -> None:
    for module in library_modules():
        src = module_path(module).read_text()
        assert "TYPE_CHECKING" not in src, module
        assert "def __getattr__(name" not in src, module


def test_only_the_cli_imports_click() -> None:
    """Importing every non-CLI module in a fresh interpreter leaves click unimported."""
    mods = [m for m in library_modules() if not m.startswith("hpo.cli") and m != "hpo.__main__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "bad = [m for m in sys.modules if m == 'click' or m.startswith('click.')]\nprint(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_class_is_abstract_or_final() -> None:
    bad = []
    for module in library_modules():
        if module == "hpo.__main__":
            continue
        mod = importlib.import_module(module)
        for name, cls in vars(mod).items():
            if not inspect.isclass(cls) or cls.__module__ != module:
                continue
            abstract = inspect.isabstract(cls) or abc.ABC in cls.__bases__
            final = getattr(cls, "__final__", False)
            if not (abstract or final):
                bad.append(f"{module}.{name}")
    assert not bad, "neither abstract nor final: " + ", ".join(sorted(bad))


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A user's project folder whose own modules have the generic names the library must not claim."""
    for name in ("tasks.py", "optimizers.py", "backends.py"):
        (tmp_path / name).write_text("raise ImportError('the user module was imported instead of hpo')\n")
    return tmp_path


def test_imports_work_from_a_folder_with_generic_module_names(user_folder: Path) -> None:
    code = ("import hpo, hpo.search.fds, hpo.app.config, hpo.app.run, hpo.optimizers, hpo.backends.forward, hpo.tasks.base, "
            "hpo.app.registry, hpo.checking.check_rule; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=user_folder, capture_output=True, text=True,
                         timeout=300, env=env, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_cli_help_works_from_a_folder_with_generic_module_names(user_folder: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hpo", "run", "--help"], cwd=user_folder, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0 and "Usage: python -m hpo run" in out.stdout, out.stderr


def test_the_wheel_holds_only_the_hpo_package(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"hpo"}, top
    for expected in ("hpo/optimizers/sgd.py", "hpo/backends/forward.py", "hpo/tasks/base.py", "hpo/cli/main.py",
                     "hpo/app/run.py"):
        assert expected in names
