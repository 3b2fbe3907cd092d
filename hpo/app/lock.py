"""One process per log directory: an advisory lock the operating system drops when its holder dies.

``LOGDIR/.hpo.lock`` is locked with ``fcntl.flock`` for as long as a run (or resume) works in the
directory.  A second process is refused at once; a lock left by a killed process does not exist
(the kernel releases it), so a resume after a crash is never blocked.  Where the system has no
``fcntl`` (Windows) or the file system refuses locks, the run goes on without one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import final

from hpo.errors import ConfigError

LOCK_NAME = ".hpo.lock"


@final
class LogdirLock:
    """``with LogdirLock(logdir):`` holds the directory for this process, or raises ``ConfigError``."""

    def __init__(self, logdir: Path) -> None:
        self.path = Path(logdir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> LogdirLock:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no advisory lock; runs go on unguarded
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # e.g. no locks on this file system
                os.close(fd)
                return self
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError("logdir", f"{self.path.parent} is in use by a running process (pid {holder}); "
                                        f"wait for it or choose another log directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
