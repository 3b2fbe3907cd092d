"""``hpo run --resume LOGDIR``: restore a run's options from its checkpoint and write new checkpoints.

Precedence on resume: the checkpoint's options win.  Options given again on the command line must
equal the saved ones (a differing value is a one-line error), except the few in
:data:`MAY_CHANGE_ON_RESUME`, which override the saved value: ``--outer-steps`` (to extend or
shorten the run), ``--device`` (e.g. to finish on another machine) and ``--progress``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from hpo.callbacks import OuterRecord
from hpo.checkpoint import (
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    to_plain,
)
from hpo.outer import OuterState

#: Options that may differ from the checkpoint's on ``--resume`` (the new value is used).
MAY_CHANGE_ON_RESUME = frozenset({"outer_steps", "device", "progress"})
#: Options never stored in a checkpoint.
NOT_SAVED = frozenset({"resume"})


def saved_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options to store in a checkpoint: every CLI option but ``--resume``, as plain values."""
    return to_plain({k: v for k, v in options.items() if k not in NOT_SAVED})


def _restore(param: click.Parameter, value: Any) -> Any:
    """A saved plain value back in the type the option's parser gives (tuples, paths)."""
    if value is None:
        return None
    if isinstance(param.type, click.Path):
        return Path(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _show(value: Any) -> str:
    """An option value as a user would type it."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "''"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def resume_options(ctx: click.Context, given: dict[str, Any]) -> tuple[Checkpoint, dict[str, Any]]:
    """Load ``LOGDIR/checkpoint.pt`` and merge its options with ``given``; one-line errors (exit 2)."""
    logdir = Path(given["resume"])
    if not logdir.is_dir():
        raise click.BadParameter(f"{logdir} is not a directory of an earlier run", param_hint="--resume")
    if not checkpoint_path(logdir).exists():
        raise click.BadParameter(f"no checkpoint in {logdir} (a run stopped before its first outer step finished "
                                 f"has none: start it again)", param_hint="--resume")
    try:
        ckpt = load_checkpoint(checkpoint_path(logdir))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--resume") from None
    params = {p.name: p for p in ctx.command.params if p.name is not None}
    unknown = sorted(set(ckpt.options) - set(params))
    if unknown:
        raise click.BadParameter(f"the checkpoint has options this version of hpo does not know: {', '.join(unknown)}",
                                 param_hint="--resume")
    merged = dict(given)
    for name, value in ckpt.options.items():
        param = params[name]
        explicit = ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        if name == "logdir":
            if explicit and given[name] is not None and Path(given[name]).resolve() != logdir.resolve():
                raise click.BadParameter(f"--logdir {given[name]} conflicts with --resume {logdir} (the run resumes "
                                         f"in its own directory)", param_hint="--logdir")
            continue
        if explicit and name in MAY_CHANGE_ON_RESUME:
            continue
        if explicit and to_plain(given[name]) != value:
            flag = param.opts[0] if param.opts else name
            raise click.BadParameter(
                f"{flag} {_show(given[name])} conflicts with the run being resumed ({flag} {_show(value)}); "
                f"only {', '.join('--' + n.replace('_', '-') for n in sorted(MAY_CHANGE_ON_RESUME))} may change",
                param_hint=flag)
        merged[name] = _restore(param, value)
    merged["logdir"] = logdir
    remove_stale_temporaries(logdir)
    return ckpt, merged


class CheckpointWriter:
    """``after_step`` hook of :func:`hpo.fds.run_fds`: writes ``LOGDIR/checkpoint.pt`` after every outer step."""

    def __init__(self, logdir: Path, options: dict[str, Any], seconds_before: float = 0.0) -> None:
        self.path = checkpoint_path(logdir)
        self.options = saved_options(options)
        self.seconds_before = seconds_before
        self.start = time.perf_counter()

    def seconds(self) -> float:
        """Search time of the whole run, earlier processes included."""
        return self.seconds_before + time.perf_counter() - self.start

    def __call__(self, state: OuterState, history: tuple[OuterRecord, ...]) -> None:
        """Atomically replace the checkpoint; a write error is one line (exit 1)."""
        try:
            save_checkpoint(self.path, Checkpoint(state, history, self.options, self.seconds()))
        except OSError as e:
            raise click.ClickException(f"cannot write checkpoint {self.path}: {e.strerror or e}") from None
