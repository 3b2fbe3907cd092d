"""MNIST, FashionMNIST, SVHN and CIFAR-10 from a local data root, in torchvision's on-disk layout.

=============  ==============================================  ======================
dataset        files under ``data_root``                        format
=============  ==============================================  ======================
mnist          ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``       IDX (big endian)
fashionmnist   ``FashionMNIST/raw/{train,t10k}-...-ubyte``      IDX
svhn           ``SVHN/{train,test}_32x32.mat``                  MATLAB (``X`` HxWxCxN, ``y`` 1..10)
cifar10        ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``  Python pickle
=============  ==============================================  ======================

Files are downloaded (through torchvision) only when ``download=True`` (``hpo run --download``);
a missing file is a one-line :class:`DatasetMissing` error naming where it looked.  Images are
scaled to [0, 1] and normalised per channel, :math:`x = (u / 255 - m_c) / s_c`, with the usual
per-dataset train-set means and standard deviations.  The whole dataset is held as tensors (at
most 50000 x 3 x 32 x 32 floats), so it can live on the GPU for the whole run.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import final

import numpy as np
import torch
from torch import Tensor, nn

from hpo.tasks.augment import Augment
from hpo.tasks.base import Task, classification_task
from hpo.tasks.models import LeNet, wrn16_1, wrn40_2

DEFAULT_DATA_ROOT = Path("data")


@final
class DatasetMissing(ValueError):
    """A dataset file is not under the data root (a one-line, user-facing message)."""


@final
@dataclass(frozen=True)
class VisionSpec:
    """Where a dataset lives under the data root, its shape and its normalisation constants."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_IDX = ("{}-images-idx3-ubyte", "{}-labels-idx1-ubyte")
SPECS: dict[str, VisionSpec] = {
    "mnist": VisionSpec("MNIST", "MNIST/raw", tuple(f.format("train") for f in _IDX), tuple(f.format("t10k") for f in _IDX),
                        1, 28, (0.1307,), (0.3081,)),
    "fashionmnist": VisionSpec("FashionMNIST", "FashionMNIST/raw", tuple(f.format("train") for f in _IDX),
                               tuple(f.format("t10k") for f in _IDX), 1, 28, (0.2860,), (0.3530,)),
    "svhn": VisionSpec("SVHN", "SVHN", ("train_32x32.mat",), ("test_32x32.mat",), 3, 32,
                       (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": VisionSpec("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
                          ("test_batch",), 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def dataset_dir(dataset: str, data_root: str | Path) -> Path:
    """The folder that holds ``dataset``'s files under ``data_root``."""
    return Path(data_root) / SPECS[dataset].folder


def missing_files(dataset: str, data_root: str | Path) -> list[str]:
    """Names of ``dataset``'s files that are not present under ``data_root``."""
    spec, folder = SPECS[dataset], dataset_dir(dataset, data_root)
    return [f for f in spec.train_files + spec.test_files if not (folder / f).is_file()]


def download(dataset: str, data_root: str | Path) -> None:
    """Fetch ``dataset`` into ``data_root`` with torchvision (needs internet); one-line error on failure."""
    import torchvision.datasets as tvd

    root = Path(data_root)
    try:
        if dataset == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root / "SVHN"), split=split, download=True)
        else:
            cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[dataset]
            for train in (True, False):
                cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network, disk, checksum: all become one line for the user
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DatasetMissing(f"downloading {SPECS[dataset].name} into {root} failed: {msg}") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format): big-endian magic ``0x0000 08 ndim``, ``ndim`` int32 sizes, uint8 data."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetMissing(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetMissing(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _read_idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(folder / images)
    return x[:, None], read_idx(folder / labels).astype(np.int64)


def _read_cifar(folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    return np.concatenate(xs), np.asarray(ys, dtype=np.int64)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetMissing("reading SVHN needs scipy: pip install scipy") from None
    mat = loadmat(str(path))
    x = np.transpose(mat["X"], (3, 2, 0, 1))  # H, W, C, N -> N, C, H, W
    y = mat["y"].astype(np.int64).reshape(-1)
    y[y == 10] = 0  # SVHN labels the digit 0 as 10
    return np.ascontiguousarray(x), y


def load_raw(dataset: str, data_root: str | Path = DEFAULT_DATA_ROOT, download_missing: bool = False) -> dict[str, Tensor]:
    """uint8 images ``(N, C, H, W)`` and int64 labels of the train and test splits.

    Raises :class:`DatasetMissing` (one line: where it looked, how to get it) when files are absent
    and ``download_missing`` is False.
    """
    if dataset not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(SPECS)}")
    spec, folder = SPECS[dataset], dataset_dir(dataset, data_root)
    missing = missing_files(dataset, data_root)
    if missing and download_missing:
        download(dataset, data_root)
        missing = missing_files(dataset, data_root)
    if missing:
        raise DatasetMissing(f"{spec.name} not found: no {missing[0]} in {folder}; enable download to fetch it "
                             f"(or point the data root at a folder where it already is)")
    if dataset == "cifar10":
        tr = _read_cifar(folder, spec.train_files[:-1])
        te = _read_cifar(folder, spec.test_files)
    elif dataset == "svhn":
        tr, te = _read_svhn(folder / spec.train_files[0]), _read_svhn(folder / spec.test_files[0])
    else:
        tr, te = _read_idx_pair(folder, *spec.train_files), _read_idx_pair(folder, *spec.test_files)
    for (x, y), split in ((tr, "train"), (te, "test")):
        if x.shape[0] != y.shape[0]:
            raise DatasetMissing(f"{spec.name} {split} split in {folder} has {x.shape[0]} images but {y.shape[0]} labels")
    return {"train_x": torch.from_numpy(np.array(tr[0])), "train_y": torch.from_numpy(tr[1]),
            "test_x": torch.from_numpy(np.array(te[0])), "test_y": torch.from_numpy(te[1])}


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x / 255 - mean_c) / std_c`` for uint8 images ``(N, C, H, W)``, as float32."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


MODELS: dict[str, Callable[[VisionSpec], nn.Module]] = {
    "lenet": lambda s: LeNet(s.channels, 10, s.image_size),
    "wrn16": lambda s: wrn16_1(s.channels, 10),
    "wrn40": lambda s: wrn40_2(s.channels, 10),
}


def vision_task(
    dataset: str,
    model: str,
    data_root: str | Path | None = None,
    download: bool = False,
    augment: str | None = None,
    samples: int | None = None,
    batch_size: int = 128,
) -> Task:
    """A :class:`Task` of ``dataset`` (mnist, fashionmnist, svhn, cifar10) with ``model`` (lenet, wrn16, wrn40).

    ``augment`` is e.g. ``"crop,flip"`` or ``"crop,flip,cutout"``; ``samples`` keeps only the first
    ``samples`` training images (for quick runs).
    """
    if dataset not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(SPECS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    spec = SPECS[dataset]
    if model.startswith("wrn") and spec.image_size != 32:
        raise ValueError(f"{model} takes 32x32 images; {spec.name} is {spec.image_size}x{spec.image_size} (use lenet)")
    aug = Augment.parse(augment, spec.image_size)
    raw = load_raw(dataset, DEFAULT_DATA_ROOT if data_root is None else data_root, download)
    n = raw["train_x"].shape[0] if samples is None else min(int(samples), raw["train_x"].shape[0])
    make = MODELS[model]
    return classification_task(
        f"{dataset}-{model}",
        normalize(raw["train_x"][:n], spec.mean, spec.std),
        raw["train_y"][:n],
        normalize(raw["test_x"], spec.mean, spec.std),
        raw["test_y"],
        lambda: make(spec),
        batch_size=batch_size,
        augment=aug,
    )
