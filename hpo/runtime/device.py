"""Device and dtype, chosen in one place for the CLI, the benchmarks and the tests.

``auto`` means CUDA when a GPU is present, else CPU.  Tests use :func:`device_for_tests`, which honours
``HPO_TEST_DEVICE`` (e.g. ``cpu`` to force the CPU on a GPU machine) and otherwise is ``auto``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; asking for CUDA without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no GPU is available; use the device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}") from None


def pick_dtype(name: str = "float32") -> torch.dtype:
    """The floating dtype called ``name`` (``float32`` or ``float64``)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def cpu_threads(requested: int | None, device: torch.device | str) -> int:
    """Torch CPU threads for a run: ``requested``, or 1 by default.

    One thread per process is the default because users run seeds side by side: two processes
    with two threads each on a 2-core machine ran 10-30x slower than with one thread each
    (docs/performance.md), while one thread costs a lone run of the small default models little.
    Give more (``threads``) for a large model running alone.
    """
    return int(requested) if requested is not None else 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, restoring the caller's count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_for_tests() -> torch.device:
    """Where the tests run: ``$HPO_TEST_DEVICE`` if set, else CUDA when present, else CPU."""
    return pick_device(os.environ.get("HPO_TEST_DEVICE", "auto"))


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU); only for timing, never in the inner loop."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
