"""Vision datasets: tiny files written in each dataset's real on-disk format, loaded by the real code."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hpo.cli import cli
from hpo.runtime.device import device_for_tests
from hpo.tasks.vision import SPECS, DatasetMissing, load_raw, read_idx, vision_task


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file: magic 0x00000800 + ndim, big-endian int32 sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST/FashionMNIST raw files (uncompressed, as torchvision leaves them) under ``root/folder/raw``."""
    rng = np.random.default_rng(seed)
    out = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
           "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", out["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", out["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", out["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", out["test_y"])
    return out


def write_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py``: five pickled train batches, ``test_batch`` and ``batches.meta``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "data": x, "labels": y, "filenames": []}, f)
        xs.append(x)
        ys.extend(y)
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": tx, "labels": ty}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return {"train_x": np.concatenate(xs), "train_y": np.array(ys), "test_x": tx, "test_y": np.array(ty)}


def write_svhn(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``SVHN/{train,test}_32x32.mat``: ``X`` of shape (32, 32, 3, N), ``y`` of shape (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    out = {}
    (root / "SVHN").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # the digit 0 is stored as 10
        savemat(str(root / "SVHN" / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a", a)
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetMissing, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_loads_and_normalises(tmp_path: Path, dataset: str, folder: str) -> None:
    ref = write_mnist_like(tmp_path, folder, n_train=7, n_test=3)
    task = vision_task(dataset, "lenet", data_root=tmp_path)
    assert task.train_rows.data[0].shape == (7, 1, 28, 28) and task.test_rows.data[0].shape == (3, 1, 28, 28)
    assert task.train_rows.data[0].dtype == torch.float32
    assert torch.equal(task.train_rows.data[1], torch.as_tensor(ref["train_y"], dtype=torch.long))
    assert torch.equal(task.test_rows.data[1], torch.as_tensor(ref["test_y"], dtype=torch.long))
    m, s = SPECS[dataset].mean[0], SPECS[dataset].std[0]
    expect = (torch.as_tensor(ref["test_x"], dtype=torch.float32) / 255 - m) / s
    torch.testing.assert_close(task.test_rows.data[0][:, 0], expect)
    assert task.make_model()(task.train_rows.data[0][:2]).shape == (2, 10)


def test_cifar10_loads_all_batches_in_order(tmp_path: Path) -> None:
    ref = write_cifar10(tmp_path, per_batch=3, n_test=2)
    raw = load_raw("cifar10", tmp_path)
    assert raw["train_x"].shape == (15, 3, 32, 32) and raw["train_x"].dtype == torch.uint8
    assert torch.equal(raw["train_y"], torch.as_tensor(ref["train_y"]))
    # a CIFAR row is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    i, c, h, w = 11, 2, 5, 17
    assert int(raw["train_x"][i, c, h, w]) == int(ref["train_x"][i, c * 1024 + h * 32 + w])
    assert torch.equal(raw["test_x"].reshape(2, -1), torch.as_tensor(ref["test_x"]))
    task = vision_task("cifar10", "wrn16", data_root=tmp_path, samples=10)
    assert task.train_rows.data[0].shape == (10, 3, 32, 32)
    mean, std = SPECS["cifar10"].mean[c], SPECS["cifar10"].std[c]
    pixel = ref["train_x"][i - 5, c * 1024 + h * 32 + w]
    assert float(task.train_rows.data[0][i - 5, c, h, w]) == pytest.approx((pixel / 255 - mean) / std, rel=1e-6)


def test_svhn_loads_mat_layout_and_maps_label_10_to_0(tmp_path: Path) -> None:
    ref = write_svhn(tmp_path, n_train=5, n_test=4)
    raw = load_raw("svhn", tmp_path)
    assert raw["train_x"].shape == (5, 3, 32, 32) and raw["test_x"].shape == (4, 3, 32, 32)
    n, c, h, w = 3, 1, 7, 20
    assert int(raw["train_x"][n, c, h, w]) == int(ref["train_x"][h, w, c, n])
    expect_y = ref["train_y"][:, 0].astype(np.int64) % 10
    assert torch.equal(raw["train_y"], torch.as_tensor(expect_y))
    assert int(raw["train_y"][0]) == 0 and int(raw["train_y"].max()) <= 9


def test_missing_dataset_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing) as e:
        load_raw("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-batches-py") in msg and "enable download" in msg
    write_mnist_like(tmp_path, "MNIST", 2, 2)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissing, match="t10k-labels-idx1-ubyte"):
        load_raw("mnist", tmp_path)


def test_cli_missing_dataset_exits_2_with_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["run", "--task", "svhn-wrn16", "--data-root", str(tmp_path / "nowhere"),
                                   "--logdir", str(tmp_path / "log"), "--no-progress"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SVHN not found" in lines[0] and "'--data-root'" in lines[0]


def test_cli_runs_a_vision_task_end_to_end(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "data", "MNIST", n_train=40, n_test=10)
    res = CliRunner().invoke(cli, ["run", "--task", "mnist-lenet", "--data-root", str(tmp_path / "data"),
                                   "--augment", "crop,flip", "--outer-steps", "1", "--inner-steps", "7",
                                   "--retrain-steps", "3", "--batch-size", "8", "--logdir", str(tmp_path / "log"),
                                   "--no-progress", "--device", str(device_for_tests())])
    assert res.exit_code == 0, res.output + res.stderr
    assert "task=mnist-lenet" in res.output and (tmp_path / "log" / "schedule.json").is_file()
