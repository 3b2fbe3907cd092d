"""Names the library accepts for tasks, backends, optimizers and search methods, and loading plugins.

Adding a backend, rule, task or search method is one file and one line in a table here.

Besides the built-in names, every ``--task``, ``--backend`` and ``--optimizer`` option takes
``module:attr`` or ``path/to/file.py:attr``, so a user's own rule, backend or task is used without
touching (or registering into) library code.  There is no global mutable registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hpo.backends.auto_backend import AutoBackend
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend, ForwardModeBackend
from hpo.backends.greedy import GreedyBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.backends.reverse_truncated import ReverseTruncatedBackend
from hpo.core.backend import HypergradientBackend
from hpo.errors import ConfigError
from hpo.optimizers.adahessian import AdaHessian
from hpo.optimizers.adam import Adam, AdamW
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.exadam import EXAdam
from hpo.optimizers.loss_hypers import example_names
from hpo.optimizers.sgd import SGDMomentum
from hpo.optimizers.sophia import Sophia
from hpo.outer.adam import Adam as OuterAdam
from hpo.outer.base import OuterOptimizer
from hpo.outer.rprop import Rprop
from hpo.outer.sign import SignDescent
from hpo.outer.sign_magnitude import SignMagnitude
from hpo.search.base import SearchMethod
from hpo.search.fds import FDSSearch
from hpo.search.hand_picked import HandPicked
from hpo.search.online_greedy import OnlineGreedySearch
from hpo.search.pbt import PBTSearch
from hpo.search.schedule_free import ScheduleFreeSearch
from hpo.search.stn import STNSearch
from hpo.search.trials import CosineWarmup, RandomSearch, TPESearch
from hpo.tasks.base import Task


def _mnist1d(model: str) -> Callable[..., Task]:
    def make(samples: int | None = None, label_noise: float | None = None, **_: Any) -> Task:
        from hpo.tasks.mnist1d import DEFAULT_SAMPLES, mnist1d_task

        return mnist1d_task(model, num_samples=samples or DEFAULT_SAMPLES, label_noise=label_noise)

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
    "exadam": EXAdam,
    "sophia": Sophia,
    "adahessian": AdaHessian,
})


BUILTIN_BACKENDS: Mapping[str, Callable[[], HypergradientBackend]] = MappingProxyType({
    "auto": AutoBackend,
    "reverse-checkpointed": ReverseCheckpointedBackend,
    "forward-manual": ForwardManualBackend,
    "forward-jvp": ForwardJvpBackend,
    "reverse-truncated": ReverseTruncatedBackend,
    "greedy": GreedyBackend,
})


#: Outer optimizers (``--outer NAME``); a new one is one file in ``hpo/outer`` and one line here.
OUTER_OPTIMIZERS: Mapping[str, type[OuterOptimizer]] = MappingProxyType({
    "sign": SignDescent,
    "rprop": Rprop,
    "sign-magnitude": SignMagnitude,
    "adam": OuterAdam,
})
"""Outer optimizers by name (``--outer``); a new one is one file in ``hpo/outer`` and one line here."""


#: Search methods of ``hpo compare`` besides the backends (each backend name is FDS with that backend).
SEARCH_METHODS: Mapping[str, Callable[[], SearchMethod]] = MappingProxyType({
    "online-greedy": OnlineGreedySearch,
    "random-constant": partial(RandomSearch, schedules=False),
    "random-schedule": partial(RandomSearch, schedules=True),
    "tpe": partial(TPESearch, schedules=False),
    "tpe-schedule": partial(TPESearch, schedules=True),
    "cosine-random": partial(RandomSearch, shape=CosineWarmup()),
    "cosine-tpe": partial(TPESearch, shape=CosineWarmup()),
    "schedule-free": ScheduleFreeSearch,
    "pbt": PBTSearch,
    "stn": STNSearch,
    "hand-picked": HandPicked,
})


"""Search methods of ``hpo compare`` by name; a new method is one file in ``hpo/search`` and one line here."""


def _diabetes(samples: int | None = None, **_: Any) -> Task:
    from hpo.tasks.diabetes import diabetes_task

    return diabetes_task(samples=samples)


def _char_transformer(samples: int | None = None, **_: Any) -> Task:
    from hpo.tasks.char_transformer import char_transformer_task

    return char_transformer_task(samples=samples)


BUILTIN_TASKS: Mapping[str, Callable[..., Task]] = MappingProxyType({
    "mnist1d-mlp": _mnist1d("mlp"),
    "mnist1d-cnn": _mnist1d("cnn"),
    "diabetes-mlp": _diabetes,
    "char-transformer": _char_transformer,
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
    except Exception as e:  # noqa: BLE001 - a user's module: any import failure is one line
        raise ValueError(f"cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{mod_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _build(kind: str, spec: str, obj: Any, base: type, **kwargs: Any) -> Any:
    """``obj`` itself if it is a ``base`` instance, else the instance its class or factory builds."""
    if isinstance(obj, base):
        return obj
    foreign_class = isinstance(obj, type) and not issubclass(obj, base)
    if foreign_class or not callable(obj):
        what = obj.__module__ + "." + obj.__qualname__ if isinstance(obj, type) else type(obj).__name__
        raise ValueError(f"{spec!r} is a {what}, not a {base.__name__} (a {kind} is a {base.__name__} subclass, "
                         f"instance or factory)")
    try:
        built = obj(**kwargs)
    except Exception as e:  # noqa: BLE001 - a user's constructor: any failure is one line
        raise ValueError(f"cannot build {kind} {spec!r}: {type(e).__name__}: {e}") from None
    if not isinstance(built, base):
        raise ValueError(f"{spec!r} returned a {type(built).__name__}, not a {base.__name__}")  # noqa: TRY004
    return built


def _resolve(kind: str, spec: str, builtins: Mapping[str, Callable[..., Any]], base: type, **kwargs: Any) -> Any:
    if spec in builtins:
        return builtins[spec](**kwargs)
    if ":" not in spec:
        hint = " (a file needs :ClassName, e.g. my_rule.py:MyRule)" if spec.endswith(".py") else ""
        raise ValueError(f"unknown {kind} {spec!r}; choose from {', '.join(sorted(builtins))} or give module:attr"
                         f"{hint}")
    return _build(kind, spec, load_object(spec), base, **kwargs)


def resolve_rule(spec: str) -> UpdateRule:
    """An optimizer rule by built-in name or ``module:attr`` (a rule class, instance or factory)."""
    return _resolve("optimizer", spec, BUILTIN_RULES, UpdateRule)


def resolve_backend(spec: str, **options: Any) -> HypergradientBackend:
    """A backend by built-in name or ``module:attr``, built with ``options``."""
    return _resolve("backend", spec, BUILTIN_BACKENDS, HypergradientBackend, **options)


def make_backend(spec: str, rule: UpdateRule, window: int | None = None, compile: bool = False,
                 hz_clip: float | None = None, memory_budget: int | str | None = None) -> HypergradientBackend:
    """The backend ``spec`` with its options, checked against ``rule``; ``ConfigError`` naming the field.

    ``window`` applies to ``reverse-truncated`` only, ``compile`` to the forward-mode backends,
    ``memory_budget`` to ``reverse-checkpointed`` and ``auto``.
    """
    try:
        backend = resolve_backend(spec)
    except ValueError as e:
        raise ConfigError("backend", str(e)) from None
    if window is not None:
        if not isinstance(backend, ReverseTruncatedBackend):
            raise ConfigError("window", f"applies only to the reverse-truncated backend, not {backend.name!r}")
        backend = ReverseTruncatedBackend(window)
    if compile:
        if not isinstance(backend, (ForwardModeBackend, ReverseCheckpointedBackend, AutoBackend)):
            raise ConfigError("compile", f"applies to the forward-mode, reverse-checkpointed and auto backends, "
                                         f"not {backend.name!r}")
        backend = type(backend)(compile="inductor")
    if memory_budget is not None:
        if not isinstance(backend, (ReverseCheckpointedBackend, AutoBackend)):
            raise ConfigError("memory_budget", f"applies to the reverse-checkpointed and auto backends, "
                                               f"not {backend.name!r}")
        backend = type(backend)(compile=backend.compile, memory_budget=memory_budget)
    if hz_clip is not None and not backend.supports_hz_clip:
        raise ConfigError("hz_clip", f"applies to forward mode (the forward-manual, forward-jvp and auto backends), "
                                     f"not {backend.name!r}")
    try:
        backend.check_rule(rule)
    except ValueError as e:
        raise ConfigError("backend", str(e)) from None
    return backend


#: ``--outer auto``: the outer optimizer for a rule, by what it tunes (see :func:`outer_name`).
AUTO_OUTER = "auto"

#: The outer optimizer ``auto`` picks when a weight per training example is tuned (measured in
#: docs/results-hyper-cleaning.md: it separates noisy from clean examples better than sign steps).
PER_EXAMPLE_OUTER = "adam"


def outer_name(name: str, rule: UpdateRule) -> str:
    """``name``, or for ``auto``: :data:`PER_EXAMPLE_OUTER` when ``rule`` tunes per-example loss weights, else ``sign``."""
    if name != AUTO_OUTER:
        return name
    return PER_EXAMPLE_OUTER if example_names(rule) else "sign"


def make_outer(name: str, options: Mapping[str, float] | None = None, rule: UpdateRule | None = None) -> OuterOptimizer:
    """The outer optimizer ``name`` (``auto`` resolved for ``rule``, :func:`outer_name`) with ``options`` (its
    dataclass fields); ``ConfigError`` naming the field."""
    if name == AUTO_OUTER:
        name = "sign" if rule is None else outer_name(name, rule)
    if name not in OUTER_OPTIMIZERS:
        raise ConfigError("outer", f"unknown outer optimizer {name!r} (choose from auto, {', '.join(OUTER_OPTIMIZERS)})")
    cls = OUTER_OPTIMIZERS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for key in options or {}:
        if key not in known:
            raise ConfigError("outer_options", f"{name} has no option {key!r} (its options: {', '.join(known)})")
    optimizer = cls(**{k: float(v) for k, v in (options or {}).items()})
    try:
        optimizer.check()
    except ValueError as e:
        raise ConfigError("outer_options", f"{name}: {e}") from None
    return optimizer


def check_task_name(spec: str) -> None:
    """``ValueError`` unless ``spec`` is a built-in task or of the form ``module:attr``."""
    if spec not in BUILTIN_TASKS and ":" not in spec:
        raise ValueError(f"unknown task {spec!r}; choose from {', '.join(sorted(BUILTIN_TASKS))} or give module:attr")


def resolve_task(spec: str, **kwargs: Any) -> Task:
    """A task by built-in name or ``module:attr`` (a Task or a factory taking keyword options)."""
    check_task_name(spec)
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec](**kwargs)
    return _build("task", spec, load_object(spec), Task, **kwargs)


#: The options of ``stn`` that ``--stn-option`` sets, with their types.
STN_OPTIONS: Mapping[str, type] = MappingProxyType({"weight_steps": int, "hyper_steps": int, "sigma": float,
                                                    "tau": float, "hyper_lr": float, "per_layer": bool})


def resolve_method(spec: str, window: int | None = None, population: int | None = None,
                   stn_options: Mapping[str, float] | None = None) -> SearchMethod:
    """A search method of ``hpo compare``: a name of :data:`SEARCH_METHODS`, or a backend (FDS with it).

    ``window`` sets reverse-truncated's window, ``population`` the size of pbt's population and
    ``stn_options`` the options of ``stn`` (:data:`STN_OPTIONS`: the ratio of weight to
    hyperparameter steps, the perturbation scale ``sigma``, ...); ``ValueError`` on an unknown one.
    """
    if spec == "pbt" and population is not None:
        return PBTSearch(population=population)
    if spec == "stn" and stn_options:
        for key, value in stn_options.items():
            if key not in STN_OPTIONS:
                raise ValueError(f"stn has no option {key!r} (its options: {', '.join(STN_OPTIONS)})")
            if STN_OPTIONS[key] is not float and float(value) != int(value):
                raise ValueError(f"stn's {key} must be a whole number, got {value:g}")
        return STNSearch(**{k: STN_OPTIONS[k](int(v) if STN_OPTIONS[k] is not float else v)
                            for k, v in stn_options.items()})
    if spec in SEARCH_METHODS:
        return SEARCH_METHODS[spec]()
    try:
        backend = resolve_backend(spec)
    except ValueError as e:
        raise ValueError(f"{e} (or a search method: {', '.join(SEARCH_METHODS)})") from None
    if window is not None and isinstance(backend, ReverseTruncatedBackend):
        backend = ReverseTruncatedBackend(window)
    return FDSSearch(backend)
