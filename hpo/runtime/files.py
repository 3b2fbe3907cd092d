"""Checkpoints of an FDS run: written atomically after every outer step, loaded without running code.

A checkpoint is a plain dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so it holds only tensors, numbers, strings, lists and dicts::

    {"format": "hpo-fds-checkpoint", "version": 2,
     "state": OuterState.to_dict(),          # values, step sizes, last signs (float64), k;
                                             # (segments,) or, grouped, (groups, segments) each;
                                             # good (last values that trained) and kinds
                                             # (coordinate per type) when set
     "history": [OuterRecord.__dict__, ...], # one per completed outer step
     "config": RunConfig.to_dict(),          # the run's configuration (version 1: "options")
     "search_seconds": float,
     "processes": int}                        # data-parallel processes (absent: 1)

Writing goes to a temporary file in the same directory, which is flushed, ``fsync``-ed and then
renamed over the old checkpoint with :func:`os.replace` (atomic on POSIX and Windows), so a crash
at any moment leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` via ``write(file)`` so that it is replaced all at once or not at all.

    The data goes to a temporary file in the same directory (same file system), is flushed and
    ``fsync``-ed, then :func:`os.replace` renames it over ``path``; the directory is ``fsync``-ed
    too (POSIX) so the rename itself survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual umask-based mode
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name == "posix":
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
