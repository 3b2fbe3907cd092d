"""MkDocs hook: generate one API-reference page per package, listing every module in it.

The pages ``api/<package>.md`` are built from the source tree on every build, so a new module
shows up in the reference without anyone editing the docs.  Modules named in ``ORDER`` come first
(reading order); the rest follow alphabetically.  Private modules (``_x.py``) and ``__main__`` are
left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PACKAGES = {
    "hpo": "The schedule, the outer loop, the backend interface, retraining, the CLI and logging.",
    "optimizers": "Update rules: pure functions of (params, state, grads, hyperparameters).",
    "backends": "Hypergradient backends (implementations of `hpo.backend.HypergradientBackend`).",
    "tasks": "Tasks: data, a model and a loss, called functionally by the inner loop.",
}
ORDER = {
    "hpo": ["schedule", "torch_scheduler", "fds", "outer", "backend", "problem", "unroll", "retrain",
            "registry", "callbacks", "console", "tensorboard_log", "cli", "cli_types"],
    "optimizers": ["base", "sgd"],
    "backends": ["forward", "columns"],
    "tasks": ["base", "mnist1d"],
}


def package_modules(root: Path, package: str) -> list[str]:
    """Dotted names of the public modules of ``package`` under ``root``, in reading order."""
    names = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root / package).with_suffix("")
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


def on_files(files: Files, config: Any) -> Files:
    """Add the generated ``api/<package>.md`` pages to the site."""
    root = Path(config["config_file_path"]).parent
    for package in PACKAGES:
        files.append(File.generated(config, f"api/{package}.md", content=package_page(root, package)))
    return files
