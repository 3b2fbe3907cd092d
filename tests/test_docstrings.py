"""Every public module, function, class and method of the library has a docstring.

Modules are found by walking the packages; an object counts as public when its name does not
start with ``_`` and it is defined in the module (or class body) being checked, so re-exports and
assigned helpers are checked where they are defined.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from types import ModuleType

import pytest

from tests.conftest import library_modules as all_modules

SKIP_MODULES = {"hpo.__main__"}  # running it starts the CLI


def library_modules() -> list[str]:
    """Every module of the library but ``hpo.__main__``."""
    return [m for m in all_modules() if m not in SKIP_MODULES]


def has_doc(obj: object) -> bool:
    """Whether ``obj`` carries its own non-empty docstring (a dataclass's generated one does not count)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return False
    generated = isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}(")
    return not generated


def class_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties written in ``cls``'s own body."""
    out = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, property):
            func = attr.fget
        elif isinstance(attr, (staticmethod, classmethod)):
            func = attr.__func__
        elif inspect.isfunction(attr):
            func = attr
        else:
            continue
        if getattr(func, "__qualname__", "").startswith(cls.__qualname__ + "."):
            out.append((name, func))
    return out


def undocumented(module: ModuleType) -> list[str]:
    """Qualified names of the public objects of ``module`` that lack a docstring."""
    missing = [] if has_doc(module) else [f"{module.__name__} (module docstring)"]
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if not has_doc(obj):
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module.__name__}.{name}.{m}" for m, f in class_members(obj) if not has_doc(f)]
    return missing


def test_walk_finds_the_library() -> None:
    """The walk reaches the core modules (so an empty walk cannot pass silently)."""
    names = library_modules()
    for expected in ("hpo.core.schedule", "hpo.cli", "hpo.backends.forward", "hpo.optimizers.sgd", "hpo.tasks.base"):
        assert expected in names


def test_checker_flags_missing_docstrings() -> None:
    """The checker itself reports undocumented functions, classes, methods and dataclasses."""
    mod = ModuleType("fake_module", "A module docstring.")

    def documented() -> None:
        """Yes."""

    def bare() -> None:
        pass

    @dataclasses.dataclass
    class Data:
        x: int

        def method(self) -> None:
            pass

        @property
        def prop(self) -> int:
            """Documented."""
            return 1

    for f in (documented, bare, Data):
        f.__module__ = "fake_module"
        f.__qualname__ = f.__name__
        mod.__dict__[f.__name__] = f
    Data.method.__qualname__ = "Data.method"
    Data.prop.fget.__qualname__ = "Data.prop"
    assert sorted(undocumented(mod)) == ["fake_module.Data", "fake_module.Data.method", "fake_module.bare"]


@pytest.mark.parametrize("module_name", library_modules())
def test_public_objects_have_docstrings(module_name: str) -> None:
    """Every public function, class and method defined in ``module_name`` has a docstring."""
    assert undocumented(importlib.import_module(module_name)) == []
