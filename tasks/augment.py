"""Minibatch augmentation on device tensors, deterministic given a ``torch.Generator``.

Applied to each inner minibatch after it is drawn (see :meth:`hpo.core.problem.InnerProblem.batches`),
so every backend and the reference unroll see the same augmented batches for the same seed.  No
global RNG is touched and nothing leaves the device.

- ``crop``: pad by ``pad`` pixels (zeros, i.e. the mean colour after normalisation) and take a
  random ``H x W`` window per image (as ``RandomCrop(32, padding=4)``).
- ``flip``: mirror each image left-right with probability 1/2.
- ``cutout``: zero one random ``size x size`` square per image, clipped at the border
  (DeVries & Taylor 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F
from torch import Tensor

CHOICES = ("crop", "flip", "cutout")


@final
@dataclass(frozen=True)
class Augment:
    """Random crop (``pad > 0``), horizontal flip and cutout (``cutout > 0``), applied in that order."""

    pad: int = 0
    flip: bool = False
    cutout: int = 0

    @classmethod
    def parse(cls, text: str | None, image_size: int = 32) -> Augment | None:
        """``"crop,flip,cutout"`` (any subset; ``"none"`` or empty for none) -> an :class:`Augment` or None.

        Crop pads by ``image_size // 8`` (4 for 32x32) and cutout is ``image_size // 2`` wide.
        """
        if text is None or text.strip().lower() in ("", "none"):
            return None
        parts = [p.strip().lower() for p in text.split(",") if p.strip()]
        bad = [p for p in parts if p not in CHOICES]
        if bad:
            raise ValueError(f"unknown augmentation {bad[0]!r}; choose from {', '.join(CHOICES)} (comma-separated) or none")
        return cls(pad=image_size // 8 if "crop" in parts else 0, flip="flip" in parts,
                   cutout=image_size // 2 if "cutout" in parts else 0)

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Augmented copy of the image batch ``x`` of shape ``(N, C, H, W)``; ``gen`` lives on ``x.device``."""
        if self.pad > 0:
            x = random_crop(x, self.pad, gen)
        if self.flip:
            x = random_flip(x, gen)
        if self.cutout > 0:
            x = cutout(x, self.cutout, gen)
        return x


def random_crop(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and cut a random ``H x W`` window out of each image (one gather)."""
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    return xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image along the width with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero a ``size x size`` square centred at a uniformly random pixel of each image."""
    n, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n, 1), generator=gen, device=dev)
    cx = torch.randint(0, w, (n, 1), generator=gen, device=dev)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)
    in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)
