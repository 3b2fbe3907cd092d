"""MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``.

The data is generated procedurally (never downloaded) and cached on disk after the first
generation.  ``make_dataset`` seeds numpy's and Python's global RNGs; that is isolated here.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import final

import numpy as np
import torch
from torch import Tensor, nn

from hpo.tasks.base import Task, classification_task

DEFAULT_SAMPLES = 5000


def default_cache_dir() -> Path:
    """``$HPO_DATA`` or ``~/.cache/hpo``: where generated datasets are cached."""
    return Path(os.environ.get("HPO_DATA", Path.home() / ".cache" / "hpo"))


def generate_mnist1d(num_samples: int, seed: int = 42) -> dict[str, Tensor]:
    """Generate MNIST-1D with ``num_samples`` samples (80% train), leaving global RNGs untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "train_x": torch.as_tensor(data["x"], dtype=torch.float32),
        "train_y": torch.as_tensor(data["y"], dtype=torch.long),
        "test_x": torch.as_tensor(data["x_test"], dtype=torch.float32),
        "test_y": torch.as_tensor(data["y_test"], dtype=torch.long),
    }


def load_mnist1d(num_samples: int = DEFAULT_SAMPLES, seed: int = 42, cache_dir: Path | None = None) -> dict[str, Tensor]:
    """MNIST-1D tensors, from the on-disk cache or freshly generated (and then cached)."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = cache_dir / f"mnist1d-{num_samples}-{seed}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001, S110 - a corrupt cache is regenerated
            pass
    data = generate_mnist1d(num_samples, seed)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(data, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is best effort: a read-only home still works
    return data


@final
class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden -> hidden -> classes``."""

    def __init__(self, in_features: int = 40, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch ``(N, in_features)``."""
        return self.net(x.flatten(1))


@final
class CNN1D(nn.Module):
    """Small 1-D convolutional network for length-40 signals."""

    def __init__(self, channels: int = 32, num_classes: int = 10, length: int = 40) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(channels * ((length + 3) // 4), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch ``(N, length)``."""
        return self.head(self.features(x.view(x.shape[0], 1, -1)).flatten(1))


#: The fraction of a noisy training set kept aside, clean, as the problem's validation set.
CLEAN_VAL_FRACTION = 0.1


def noisy_labels(y: Tensor, fraction: float, classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(labels, noisy)``: ``round(fraction n)`` labels, chosen by ``seed``, replaced by another class.

    Each chosen label becomes :math:`(y + r) \bmod C` with :math:`r` uniform in ``1..C-1`` (never
    its own class); ``noisy`` marks them.

    Example:
        >>> y, noisy = noisy_labels(torch.zeros(10, dtype=torch.long), 0.3, 10)
        >>> int(noisy.sum()), bool((y[noisy] != 0).all()), bool((y[~noisy] == 0).all())
        (3, True, True)
    """
    gen = torch.Generator().manual_seed(int(seed) + 77)
    n = y.shape[0]
    chosen = torch.randperm(n, generator=gen)[:round(fraction * n)]
    shift = torch.randint(1, classes, (chosen.shape[0],), generator=gen)
    out = y.clone()
    out[chosen] = (y[chosen] + shift) % classes
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[chosen] = True
    return out, noisy


def noisy_split(x: Tensor, y: Tensor, fraction: float, classes: int = 10,
                seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]:
    """``(train, val, noisy)``: a clean validation set (:data:`CLEAN_VAL_FRACTION` of the examples, drawn
    by ``seed``) and the rest with a fraction ``fraction`` of its labels replaced (:func:`noisy_labels`)."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed) + 5))
    n_val = max(1, round(CLEAN_VAL_FRACTION * x.shape[0]))
    va, tr = perm[:n_val], perm[n_val:]
    y_tr, noisy = noisy_labels(y[tr], fraction, classes, seed)
    return (x[tr], y_tr), (x[va], y[va]), noisy


def mnist1d_task(model: str = "mlp", num_samples: int = DEFAULT_SAMPLES, seed: int = 42, cache_dir: Path | None = None,
                 label_noise: float | None = None) -> Task:
    """MNIST-1D with an ``"mlp"`` or a ``"cnn"``.

    ``label_noise`` P: a clean validation set of :data:`CLEAN_VAL_FRACTION` of the training examples
    is kept aside (the problem's ``val``), and a seeded fraction P of the remaining labels is
    replaced by other classes (:func:`noisy_split`); the test set stays clean.
    """
    data = load_mnist1d(num_samples, seed, cache_dir)
    makers = {"mlp": lambda: MLP(), "cnn": lambda: CNN1D()}
    if model not in makers:
        raise ValueError(f"unknown MNIST-1D model {model!r}; choose from {sorted(makers)}")
    task = classification_task(f"mnist1d-{model}", data["train_x"], data["train_y"], data["test_x"], data["test_y"],
                               makers[model], batch_size=128)
    if label_noise is None:
        return task
    (x, y), val, _ = noisy_split(data["train_x"], data["train_y"], label_noise)
    return replace(task, name=f"{task.name}-noisy{label_noise:g}", train=(x, y), val=val)
