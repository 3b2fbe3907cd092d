"""Atomic file writes: a crash at any moment leaves the old file or the new one, never a torn one.

Writing goes to a temporary file in the same directory, which is flushed, ``fsync``-ed and then
renamed over the target with :func:`os.replace` (atomic on POSIX and Windows).  Checkpoints,
schedule files and comparison tables are written this way.
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
