"""The rows of ``hpo compare`` and its checkpoint: plain JSON, written atomically after every (seed, method) pair.

``LOGDIR/compare-checkpoint.json`` holds::

    {"format": "hpo-compare-checkpoint", "version": 1,
     "config": CompareConfig.to_dict(),      # plain values
     "done": [[seed, method], ...],          # finished pairs, in the order they ran
     "rows": [Row fields, ...]}              # every retrained result of those pairs

It is written with :func:`hpo.runtime.files.atomic_write` (temporary file, ``fsync``, ``os.replace``),
so a kill at any moment leaves the previous or the next checkpoint, never a torn one; reading it
runs no code (``json``) and checks every value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, final

from hpo import checks
from hpo.app.checkpoint import to_plain
from hpo.runtime.files import atomic_write

COMPARE_CHECKPOINT_NAME = "compare-checkpoint.json"


FORMAT = "hpo-compare-checkpoint"


VERSION = 1


#: A checkpoint is rows of numbers; a larger file is not one (e.g. ``/dev/zero``).
MAX_BYTES = 256 * 2**20


@final
@dataclass(frozen=True)
class Row:
    """One retrained result (one method, seed and budget point).

    ``search_seconds`` is the search's wall-clock time when it found this incumbent,
    ``search_val_acc`` the validation accuracy the search measured for it (None where it measured
    none, e.g. ``hand-picked``): the best so far at that time.  ``test_acc`` is its retrain's.
    """

    method: str
    seed: int
    budget: int
    steps: int
    search_seconds: float
    cpu_seconds: float
    test_acc: float
    val_acc: float | None
    retrain_steps: int
    diverged: bool
    schedule: dict[str, list[float]]
    search_val_acc: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Row:
        """A row from plain values; a one-line ``ValueError`` on any missing or ill-typed entry.

        ``search_val_acc`` may be missing (a checkpoint written before it was recorded).
        """
        names = [f.name for f in fields(cls)]
        if isinstance(d, dict) and "search_val_acc" not in d:
            d = {**d, "search_val_acc": None}
        if not isinstance(d, dict) or sorted(d) != sorted(names):
            raise ValueError("a row does not have the fields of a result")
        ok = (isinstance(d["method"], str) and all(checks.is_int(d[k]) for k in ("seed", "budget", "steps",
                                                                                  "retrain_steps"))
              and all(checks.is_number(d[k]) for k in ("search_seconds", "cpu_seconds", "test_acc"))
              and all(d[k] is None or checks.is_number(d[k]) for k in ("val_acc", "search_val_acc"))
              and isinstance(d["diverged"], bool)
              and isinstance(d["schedule"], dict) and all(
                  isinstance(k, str) and isinstance(v, list) and all(
                      checks.is_number(x) or (isinstance(x, list) and all(checks.is_number(y) for y in x)) for x in v)
                  for k, v in d["schedule"].items()))
        if not ok:
            raise ValueError(f"a row of {d.get('method')!r} holds an ill-typed value")
        return cls(**d)


@final
@dataclass(frozen=True)
class CompareCheckpoint:
    """A comparison so far: its configuration (plain values), the finished pairs and their rows."""

    config: dict[str, Any]
    done: tuple[tuple[int, str], ...]
    rows: tuple[Row, ...]

    def to_dict(self) -> dict[str, Any]:
        """The plain dictionary that is saved as JSON."""
        return {"format": FORMAT, "version": VERSION, "config": to_plain(self.config),
                "done": [[s, m] for s, m in self.done], "rows": [to_plain(asdict(r)) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: Any) -> CompareCheckpoint:
        """Inverse of :meth:`to_dict`; a one-line ``ValueError`` on anything unexpected."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("it is not an hpo compare checkpoint")
        if not checks.is_int(d.get("version")) or d["version"] > VERSION:
            raise ValueError(f"it has format version {d.get('version')!r}; this hpo reads version {VERSION} or older")
        if not isinstance(d.get("config"), dict):
            raise ValueError("it has no comparison configuration")  # noqa: TRY004 - read as malformed data, one line
        done = d.get("done")
        if not isinstance(done, list) or not all(
                isinstance(p, list) and len(p) == 2 and checks.is_int(p[0]) and isinstance(p[1], str) for p in done):
            raise ValueError("its list of finished (seed, method) pairs is malformed")
        pairs = tuple((int(s), str(m)) for s, m in done)
        if len(set(pairs)) != len(pairs):
            raise ValueError("it lists a finished (seed, method) pair twice")
        if not isinstance(d.get("rows"), list):
            raise ValueError("it has no rows")  # noqa: TRY004 - read as malformed data, one line
        rows = tuple(Row.from_dict(r) for r in d["rows"])
        if any((r.seed, r.method) not in set(pairs) for r in rows):
            raise ValueError("it holds a row of a (seed, method) pair it does not list as finished")
        return cls(dict(d["config"]), pairs, rows)

    def rows_of(self, seed: int, method: str) -> list[Row]:
        """The rows of one finished pair, in the order they were made."""
        return [r for r in self.rows if r.seed == seed and r.method == method]


def compare_checkpoint_path(logdir: str | Path) -> Path:
    """``logdir/compare-checkpoint.json``."""
    return Path(logdir) / COMPARE_CHECKPOINT_NAME


def save_compare_checkpoint(path: str | Path, checkpoint: CompareCheckpoint) -> None:
    """Atomically replace ``path`` with ``checkpoint`` as JSON."""
    data = (json.dumps(checkpoint.to_dict(), indent=1) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def load_compare_checkpoint(path: str | Path) -> CompareCheckpoint:
    """Read and check a compare checkpoint; one-line ``ValueError`` if unusable."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read compare checkpoint {path}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise ValueError(f"cannot use compare checkpoint {path}: it is larger than {MAX_BYTES // 2**20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (RecursionError, ValueError) as e:  # not UTF-8, not JSON, absurd nesting, 5000-digit integers
        raise ValueError(f"cannot read compare checkpoint {path}: it is corrupt or not JSON "
                         f"({type(e).__name__})") from None
    try:
        return CompareCheckpoint.from_dict(data)
    except ValueError as e:
        raise ValueError(f"cannot use compare checkpoint {path}: {e}") from None
