"""Opt-in deterministic GPU kernels (``hpo run --deterministic``); see docs/determinism.md.

On CPU our runs are already bit-for-bit repeatable.  On CUDA some kernels (cuBLAS with several
workspaces, atomic-add based scatters and backward passes, cuDNN algorithm search) may round
differently from run to run; this switches them to deterministic variants, at some speed cost.
"""

from __future__ import annotations

import os

import torch

#: cuBLAS needs a fixed workspace layout to be deterministic (set before the first cuBLAS call).
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_kernels() -> None:
    """Ask torch, cuDNN and cuBLAS for deterministic kernels (process-wide; call before any CUDA work).

    Ops without a deterministic implementation warn instead of failing (``warn_only=True``).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
