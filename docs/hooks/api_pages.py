"""MkDocs hook: generate one API-reference page per package, listing every module in it.

The pages ``api/<package>.md`` are built from the source tree on every build, so a new module
shows up in the reference without anyone editing the docs.  Modules named in ``ORDER`` come first
(reading order); the rest follow alphabetically.  Private modules (``_x.py``) and ``__main__`` are
left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PACKAGES = {
    "hpo": "The layers: runtime, core, outer optimizers, checking, search methods, reporting, application, CLI.",
    "hpo.optimizers": "Update rules: pure functions of (params, state, grads, hyperparameters).",
    "hpo.backends": "Hypergradient backends (implementations of `hpo.core.backend.HypergradientBackend`).",
    "hpo.tasks": "Tasks: data, a model and a loss, called functionally by the inner loop.",
}
#: Where each package's source lives: the design card's top-level folders, mapped into ``hpo``.
FOLDERS = {"hpo": "hpo", "hpo.optimizers": "optimizers", "hpo.backends": "backends", "hpo.tasks": "tasks"}
ORDER = {
    "hpo": ["app.config", "app.run", "app.retrain", "app.compare", "app.compare_config", "errors", "core.schedule",
            "core.torch_scheduler", "app.plan", "search.fds", "search.inner_runs", "outer.base", "outer.sign", "outer.rprop",
            "outer.sign_magnitude", "outer.adam", "outer.divergence", "outer.coordinates", "core.backend",
            "core.problem", "core.step", "checking.unroll", "search.retrain", "search.base", "app.registry",
            "core.callbacks", "reporting.tensorboard_log", "cli.main", "cli.errors"],
    "hpo.optimizers": ["base", "sgd"],
    "hpo.backends": ["forward", "columns"],
    "hpo.tasks": ["base", "mnist1d"],
}


def package_modules(root: Path, package: str) -> list[str]:
    """Dotted names of the public modules of ``package`` under ``root``, in reading order."""
    names = []
    folder = root / FOLDERS[package]
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        if any(part.startswith("_") for part in rel.parts):
            continue
        names.append(".".join(rel.parts))
    order = ORDER.get(package, [])
    names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
    return [f"{package}.{n}" for n in names]


def package_page(root: Path, package: str) -> str:
    """Markdown of the reference page of ``package``: its docstring, then every module."""
    lines = [f"# `{package}`", "", PACKAGES[package], "",
             f"::: {package}", "    options:", "      show_root_heading: false", "      members: false", ""]
    for module in package_modules(root, package):
        lines += [f"::: {module}", ""]
    return "\n".join(lines)


def source_tree(root: Path) -> Path:
    """``build/api-src/hpo``: a copy of the sources in the installed layout of the ``hpo`` namespace.

    The sub-packages live in the top-level folders (``backends/`` is ``hpo.backends``), which
    griffe cannot see from ``hpo/``; this copy puts each where the wheel puts it (a copy, since
    griffe resolves symlinks back to the real folders).
    """
    out = root / "build" / "api-src"
    shutil.rmtree(out, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "hpo", out / "hpo", ignore=ignore)
    for name, folder in FOLDERS.items():
        if name != "hpo":
            shutil.copytree(root / folder, out / "hpo" / name.removeprefix("hpo."), ignore=ignore)
    return out


def on_startup(command: str, dirty: bool) -> None:
    """Build the source tree before any plugin starts: mkdocstrings drops ``paths`` that do not exist yet."""
    source_tree(Path(__file__).resolve().parents[2])


def on_config(config: Any) -> Any:
    """Rebuild the source tree that ``mkdocs.yml``'s mkdocstrings ``paths`` points to (``mkdocs serve`` reloads)."""
    source_tree(Path(config["config_file_path"]).parent)
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated ``api/<package>.md`` pages to the site."""
    root = Path(config["config_file_path"]).parent
    for package in PACKAGES:
        page = package.removeprefix("hpo.")
        files.append(File.generated(config, f"api/{page}.md", content=package_page(root, package)))
    return files
