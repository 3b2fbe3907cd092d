"""Names the CLI accepts for tasks, backends and optimizers, and loading user plugins.

Besides the built-in names, every ``--task``, ``--backend`` and ``--optimizer`` option takes
``module:attr`` or ``path/to/file.py:attr``, so a user's own rule, backend or task is used without
touching (or registering into) library code.  There is no global mutable registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hpo.backend import HypergradientBackend
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.greedy import GreedyBackend
from hpo.backends.reverse_truncated import ReverseTruncatedBackend
from hpo.optimizers.adam import Adam, AdamW
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.sgd import SGDMomentum
from hpo.tasks.base import Task


def _mnist1d(model: str) -> Callable[..., Task]:
    def make(samples: int | None = None, **_: Any) -> Task:
        from hpo.tasks.mnist1d import DEFAULT_SAMPLES, mnist1d_task

        return mnist1d_task(model, num_samples=samples or DEFAULT_SAMPLES)

    return make


def _vision(dataset: str, model: str) -> Callable[..., Task]:
    def make(data_root: str | None = None, download: bool = False, augment: str | None = None,
             samples: int | None = None, **_: Any) -> Task:
        from hpo.tasks.vision import vision_task

        return vision_task(dataset, model, data_root=data_root, download=download, augment=augment, samples=samples)

    return make


#: Vision tasks read --data-root, --download and --augment (files in torchvision's layout).
VISION_TASKS: Mapping[str, Callable[..., Task]] = MappingProxyType({
    "mnist-lenet": _vision("mnist", "lenet"),
    "fashionmnist-lenet": _vision("fashionmnist", "lenet"),
    "svhn-lenet": _vision("svhn", "lenet"),
    "svhn-wrn16": _vision("svhn", "wrn16"),
    "cifar10-lenet": _vision("cifar10", "lenet"),
    "cifar10-wrn16": _vision("cifar10", "wrn16"),
    "cifar10-wrn40": _vision("cifar10", "wrn40"),
})

BUILTIN_RULES: Mapping[str, Callable[[], UpdateRule]] = MappingProxyType({
    "sgd": SGDMomentum,
    "adam": Adam,
    "adamw": AdamW,
})
BUILTIN_BACKENDS: Mapping[str, Callable[[], HypergradientBackend]] = MappingProxyType({
    "forward-manual": ForwardManualBackend,
    "forward-jvp": ForwardJvpBackend,
    "reverse-truncated": ReverseTruncatedBackend,
    "greedy": GreedyBackend,
})
BUILTIN_TASKS: Mapping[str, Callable[..., Task]] = MappingProxyType({
    "mnist1d-mlp": _mnist1d("mlp"),
    "mnist1d-cnn": _mnist1d("cnn"),
    **VISION_TASKS,
})


def load_object(spec: str) -> Any:
    """The object named by ``module:attr`` or ``path/to/file.py:attr``; ``ValueError`` if missing."""
    if ":" not in spec:
        raise ValueError(f"{spec!r} is neither a built-in name nor of the form module:attr or file.py:attr")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
            name = f"hpo_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{mod_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _resolve(kind: str, spec: str, builtins: Mapping[str, Callable[..., Any]], base: type, **kwargs: Any) -> Any:
    if spec in builtins:
        return builtins[spec](**kwargs)
    if ":" not in spec:
        raise ValueError(f"unknown {kind} {spec!r}; choose from {', '.join(sorted(builtins))} or give module:attr")
    obj = load_object(spec)
    if isinstance(obj, type) and issubclass(obj, base) or callable(obj) and not isinstance(obj, base):
        obj = obj(**kwargs)
    if not isinstance(obj, base):
        raise ValueError(f"{spec!r} is not a {base.__name__}")
    return obj


def resolve_rule(spec: str) -> UpdateRule:
    """An optimizer rule by built-in name or ``module:attr`` (a rule class, instance or factory)."""
    return _resolve("optimizer", spec, BUILTIN_RULES, UpdateRule)


def resolve_backend(spec: str) -> HypergradientBackend:
    """A backend by built-in name or ``module:attr``."""
    return _resolve("backend", spec, BUILTIN_BACKENDS, HypergradientBackend)


def resolve_task(spec: str, **kwargs: Any) -> Task:
    """A task by built-in name or ``module:attr`` (a Task or a factory taking keyword options)."""
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec](**kwargs)
    if ":" not in spec:
        raise ValueError(f"unknown task {spec!r}; choose from {', '.join(sorted(BUILTIN_TASKS))} or give module:attr")
    obj = load_object(spec)
    if callable(obj) and not isinstance(obj, Task):
        obj = obj(**kwargs)
    if not isinstance(obj, Task):
        raise ValueError(f"{spec!r} is not a Task")
    return obj
