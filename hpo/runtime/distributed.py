"""Data parallelism over ``torch.distributed``: one process per rank, launched by ``torchrun``.

Minibatch ``t`` of ``b`` rows is cut into ``N`` contiguous shards of ``b / N`` rows, one per rank.
Each rank's loss is the mean over its shard, so the mean over ranks of the per-rank gradients is the
gradient of the whole minibatch (equal shards):

.. math::

    g_t = \\frac1N \\sum_{r=1}^{N} \\nabla_\\theta L(\\theta_t; x_t^{(r)}, y_t^{(r)})
        = \\nabla_\\theta L(\\theta_t; x_t, y_t)

and so is every linear function of it: Hessian-tangent products :math:`H_t Z_t` (forward mode) and
vector-Hessian products :math:`a^\\top H_t` (reverse mode).  :meth:`Communicator.mean` averages a
list of tensors across ranks in one flat buffer (one ``all_reduce`` call, not one per tensor); every
rank receives the same bits, so every rank keeps identical weights, schedule and hypergradient.

A process not launched by ``torchrun`` (no ``WORLD_SIZE`` above 1 in its environment) never creates
a process group and takes none of these paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, final

import torch
import torch.distributed as dist
from torch import Tensor

from hpo.errors import ConfigError, RunError

#: Seconds a rank waits for the others in one collective before it gives up (``HPO_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 120.0


@final
class RankError(RunError):
    """What one rank of a data-parallel run alone ran into (e.g. another rank stopped answering).

    The message starts with ``rank r:``; the CLI prints it on every rank that has one (exit 2).
    """


@final
@dataclass(frozen=True)
class Communicator:
    """This process's place in a data-parallel group: ``rank`` of ``world_size`` processes."""

    rank: int
    world_size: int
    #: Whether :func:`join` created the process group (then :func:`leave` destroys it).
    owns_group: bool = False

    def shard(self, x: Tensor) -> Tensor:
        """Rows ``[r b / N, (r + 1) b / N)`` of ``x`` (``b`` rows): this rank's part of a minibatch."""
        b = x.shape[0]
        per = b // self.world_size
        return x[self.rank * per:(self.rank + 1) * per]

    def mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The mean over ranks of every tensor, through one flat buffer and one ``all_reduce``.

        :math:`\\bar x = \\frac1N \\sum_r x^{(r)}`; the tensors may differ in shape, not in dtype or
        device.  Raises :class:`RankError` (one line) if another rank stops answering.
        """
        if not tensors:
            return []
        flat = torch.cat([t.reshape(-1) for t in tensors])
        try:
            dist.all_reduce(flat)
        except RuntimeError as e:  # gloo: a closed socket or the timeout (DistError is a RuntimeError)
            raise RankError(lost_message(self.rank, e)) from None
        flat = flat / self.world_size
        out, i = [], 0
        for t in tensors:
            out.append(flat[i:i + t.numel()].view(t.shape))
            i += t.numel()
        return out

    def mean_tree(self, tree: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`mean` of every tensor of a dict, same keys."""
        return dict(zip(tree, self.mean(list(tree.values()))))

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object, e.g. a backend's name)."""
        box = [value]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as e:
            raise RankError(lost_message(self.rank, e)) from None
        return box[0]

    def same_everywhere(self, settings: Mapping[str, Any]) -> None:
        """Raise :class:`~hpo.errors.ConfigError` (the first differing field) unless every rank has ``settings``.

        Each rank hashes its settings (canonical JSON, SHA-256) and the hashes are gathered; on a
        mismatch the settings themselves are gathered to name the field.
        """
        mine = config_hash(settings)
        hashes: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(hashes, mine)
            if len(set(hashes)) == 1:
                return
            every: list[Any] = [None] * self.world_size
            dist.all_gather_object(every, json.loads(json.dumps(settings, default=str)))
        except RuntimeError as e:
            raise RankError(lost_message(self.rank, e)) from None
        first = every[0]
        for r, other in enumerate(every[1:], start=1):
            for key in sorted(set(first) | set(other)):
                if first.get(key) != other.get(key):
                    raise ConfigError(key, f"rank {r} was launched with {other.get(key)!r}, rank 0 with "
                                           f"{first.get(key)!r}; every rank must get the same options")
        raise ConfigError("processes", "the ranks were launched with different options")


def config_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys): equal settings, equal hash."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def lost_message(rank: int, cause: BaseException) -> str:
    """The one line a rank prints when the group broke under it."""
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[source/file.cc:561] " prefix
    first = first.split(". ")[0].rstrip(".")
    return f"rank {rank}: another process of the data-parallel run stopped answering ({first[:160]}); stopping"


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when absent): the number of data-parallel processes."""
    env = os.environ if environ is None else environ
    text = env.get("WORLD_SIZE", "1")
    try:
        n = int(text)
    except ValueError:
        raise ConfigError("processes", f"WORLD_SIZE={text!r} is not a whole number") from None
    if n < 1:
        raise ConfigError("processes", f"WORLD_SIZE must be at least 1, got {n}")
    return n


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``HPO_DIST_TIMEOUT`` in seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if environ is None else environ
    text = env.get("HPO_DIST_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError("processes", f"HPO_DIST_TIMEOUT={text!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError("processes", f"HPO_DIST_TIMEOUT must be positive, got {value:g}")
    return value


def join(device: torch.device | str) -> Communicator | None:
    """Join the process group ``torchrun`` set up (gloo on CPU, NCCL on CUDA); None for one process.

    Reads ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` from the environment.  A group
    already initialised (e.g. by the caller) is used as it is.
    """
    world = launched_world_size()
    if world == 1:
        return None
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
        except (RuntimeError, ValueError) as e:
            rank = os.environ.get("RANK", "?")
            raise RankError(f"rank {rank}: cannot join the data-parallel group: "
                            f"{str(e).strip().splitlines()[0][:200]}") from None
    if dist.get_world_size() != world:
        raise ConfigError("processes", f"WORLD_SIZE is {world} but the process group has {dist.get_world_size()}")
    return Communicator(dist.get_rank(), world, owns_group=created)


def leave(comm: Communicator | None) -> None:
    """Destroy the process group if :func:`join` created it (nothing for one process; idempotent).

    The ranks first meet at a barrier, so that they leave together after their last collective; a
    rank that is gone already is not waited for.  (A process can still abort at exit: see
    :func:`end_process`.)
    """
    if comm is not None and comm.owns_group and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:
            pass  # another rank has gone: nothing to wait for
        dist.destroy_process_group()


def end_process(code: int | str | None) -> NoReturn:
    """End this process of a data-parallel launch now: flush its output, then ``os._exit(code)``.

    A workaround, not a design: with torch 2.14 and gloo, once ``torch.func`` has run in a process,
    ``destroy_process_group`` leaves gloo's threads running, and the interpreter's shutdown then
    aborts about one run in four ("terminate called without an active exception", SIGABRT) after
    the work is done and written.  Skipping the shutdown avoids it.  Only the CLI of a ``torchrun``
    launch calls this; a script of your own that runs :func:`hpo.run` under ``torchrun`` should
    end the same way.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if code is None else int(code))
