"""Checkpoints of an FDS run: written atomically after every outer step, loaded without running code.

A checkpoint is a plain dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so it holds only tensors, numbers, strings, lists and dicts::

    {"format": "hpo-fds-checkpoint", "version": 2,
     "state": OuterState.to_dict(),          # values, step sizes, last signs (float64), k;
                                             # (segments,) or, grouped, (groups, segments) each;
                                             # good (last values that trained), kinds
                                             # (coordinate per type) and slots (what an
                                             # outer optimizer keeps, e.g. Adam's moments)
     "history": [OuterRecord.__dict__, ...], # one per completed outer step
     "config": RunConfig.to_dict(),          # the run's configuration (version 1: "options")
     "search_seconds": float,
     "processes": int}                        # data-parallel processes (absent: 1)

Writing is atomic (:func:`hpo.runtime.files.atomic_write`), so a crash at any moment leaves either
the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import torch
from torch import Tensor

from hpo.core.callbacks import OuterRecord
from hpo.outer.coordinates import KINDS
from hpo.outer.sign import OuterState
from hpo.runtime.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


FORMAT = "hpo-fds-checkpoint"


VERSION = 2


#: Version-1 checkpoints stored the CLI's options; these were renamed as configuration fields.
V1_RENAMED = {"init_values": "init", "step_sizes": "steps", "compile_step": "compile"}


#: Version-1 options that are not part of a run's configuration.
V1_DROPPED = frozenset({"progress", "resume"})


def checkpoint_path(logdir: str | Path) -> Path:
    """Where the checkpoint of a run logging to ``logdir`` lives: ``logdir/checkpoint.pt``."""
    return Path(logdir) / CHECKPOINT_NAME


def to_plain(value: Any) -> Any:
    """``value`` as nested dicts/lists of str, int, float, bool and None (paths become strings).

    Raises ``TypeError`` for anything else, so a checkpoint never needs code to load.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


@final
@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue a run: outer state, history, configuration and time spent so far."""

    state: OuterState
    history: tuple[OuterRecord, ...]
    config: dict[str, Any] = field(default_factory=dict)
    search_seconds: float = 0.0
    #: Number of data-parallel processes of the run (``torchrun --nproc-per-node``); resume needs as many.
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The plain dictionary that is saved (loadable with ``weights_only=True``)."""
        s = self.state
        return {
            "format": FORMAT,
            "version": VERSION,
            "state": {
                "values": {k: v.detach().cpu() for k, v in s.values.items()},
                "steps": {k: v.detach().cpu() for k, v in s.steps.items()},
                "signs": {k: v.detach().cpu() for k, v in s.signs.items()},
                "k": int(s.k),
                **({"good": {k: v.detach().cpu() for k, v in s.good.items()}} if s.good is not None else {}),
                **({"kinds": dict(s.kinds)} if s.kinds is not None else {}),
                **({"slots": {n: {k: v.detach().cpu() for k, v in part.items()} for n, part in s.slots.items()}}
                   if s.slots else {}),
            },
            "history": [to_plain(r.__dict__) for r in self.history],
            "config": to_plain(self.config),
            "search_seconds": float(self.search_seconds),
            "processes": int(self.processes),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        """Inverse of :meth:`to_dict`; raises a one-line ``ValueError`` on anything unexpected."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("it is not an hpo checkpoint")
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise ValueError(f"it has format version {version!r}; this hpo reads version {VERSION} or older")
        state = state_from_dict(d.get("state"))
        history = d.get("history")
        if not isinstance(history, list) or len(history) != state.k:
            raise ValueError(f"its history does not hold one record per completed outer step ({state.k})")
        records = []
        for i, r in enumerate(history):
            try:
                rec = OuterRecord(**r)
            except TypeError:
                raise ValueError(f"its history record {i} is malformed") from None
            if rec.k != i:
                raise ValueError(f"its history record {i} is for outer step {rec.k}")
            records.append(rec)
        config = d.get("config") if version >= 2 else v1_config(d.get("options"))
        if not isinstance(config, dict):
            raise ValueError("it has no run configuration")  # noqa: TRY004 - read as malformed data, one line
        seconds = d.get("search_seconds", 0.0)
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ValueError("its search time is not a number")
        processes = d.get("processes", 1)
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError("its number of processes is not a positive whole number")
        return cls(state, tuple(records), config, float(seconds), processes)


def v1_config(options: Any) -> dict[str, Any] | None:
    """The configuration fields of a version-1 checkpoint's CLI options (None if there are none)."""
    if not isinstance(options, dict):
        return None
    return {V1_RENAMED.get(k, k): v for k, v in options.items() if k not in V1_DROPPED}


def state_from_dict(d: Any) -> OuterState:
    """Check the saved outer state (same names and shapes everywhere, finite values) and rebuild it."""
    if not isinstance(d, dict) or not isinstance(d.get("k"), int) or d["k"] < 0:
        raise ValueError("its outer state is malformed")
    parts = []
    for key in ("values", "steps", "signs"):
        part = d.get(key)
        if not isinstance(part, dict) or not part or not all(
            isinstance(v, Tensor) and v.dim() in (1, 2) and v.numel() > 0 and v.is_floating_point()
            for v in part.values()
        ):
            raise ValueError(f"its outer state has no valid {key!r}")
        parts.append(part)
    values, steps, signs = parts
    if not (set(values) == set(steps) == set(signs)) or any(
        values[k].shape != steps[k].shape or values[k].shape != signs[k].shape for k in values
    ):
        raise ValueError("its outer state has mismatched names or shapes")
    if not all(bool(torch.isfinite(v).all()) for part in parts for v in part.values()):
        raise ValueError("its outer state holds non-finite numbers")
    values, steps, signs = ({n: v.to(torch.float64) for n, v in part.items()} for part in parts)
    good, kinds = d.get("good"), d.get("kinds")
    if good is not None and not (isinstance(good, dict) and set(good) == set(values) and all(
            isinstance(v, Tensor) and v.shape == values[n].shape and bool(torch.isfinite(v).all())
            for n, v in good.items())):
        raise ValueError("its outer state has no valid 'good'")
    if kinds is not None and not (isinstance(kinds, dict) and set(kinds) <= set(values)
                                  and all(k in KINDS for k in kinds.values())):
        raise ValueError("its outer state has no valid 'kinds'")
    slots = d.get("slots") or {}
    if not (isinstance(slots, dict) and all(
            isinstance(part, dict) and set(part) == set(values) and all(
                isinstance(v, Tensor) and v.shape == values[n].shape and bool(torch.isfinite(v).all())
                for n, v in part.items()) for part in slots.values())):
        raise ValueError("its outer state has no valid 'slots'")
    return OuterState(values, steps, signs, int(d["k"]),
                      {n: v.to(torch.float64) for n, v in good.items()} if good is not None else None,
                      dict(kinds) if kinds is not None else None,
                      {s: {n: v.to(torch.float64) for n, v in part.items()} for s, part in slots.items()})


def remove_stale_temporaries(logdir: str | Path) -> None:
    """Delete temporary files (checkpoint, schedule.json) left by a process killed while writing."""
    for p in Path(logdir).glob(".*.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Atomically write ``checkpoint`` to ``path`` (see :func:`atomic_write`)."""
    data = checkpoint.to_dict()
    atomic_write(path, lambda f: torch.save(data, f))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``; one-line ``ValueError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says enough
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, foreign pickles needing code, ...: all one line
        raise ValueError(f"cannot read checkpoint {path}: it is corrupt, truncated or not plain data "
                         f"(torch.load with weights_only=True: {type(e).__name__})") from None
    try:
        return Checkpoint.from_dict(data)
    except ValueError as e:
        raise ValueError(f"cannot use checkpoint {path}: {e}") from None
