"""MNIST-1D is generated offline, cached on disk, and leaves the global RNGs alone."""

import random

import numpy as np
import torch

from hpo.tasks.base import init_model
from hpo.tasks.mnist1d import load_mnist1d, mnist1d_task


def test_generation_is_cached_and_isolated(tmp_path):
    np.random.seed(123)
    random.seed(123)
    before = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    data = load_mnist1d(num_samples=300, seed=5, cache_dir=tmp_path)
    after = (np.random.random(), random.random())
    assert before == after  # make_dataset's global seeding did not leak
    assert data["train_x"].shape == (240, 40) and data["test_x"].shape == (60, 40)
    assert data["train_y"].dtype == torch.long and set(data["train_y"].tolist()) <= set(range(10))
    cached = tmp_path / "mnist1d-300-5.pt"
    assert cached.exists()
    again = load_mnist1d(num_samples=300, seed=5, cache_dir=tmp_path)
    assert torch.equal(again["train_x"], data["train_x"])
    cached.write_bytes(b"corrupt")  # a corrupt cache is regenerated, not fatal
    assert torch.equal(load_mnist1d(num_samples=300, seed=5, cache_dir=tmp_path)["test_y"], data["test_y"])


def test_models_give_logits(tmp_path):
    for model in ("mlp", "cnn"):
        task = mnist1d_task(model, num_samples=300, cache_dir=tmp_path)
        net = init_model(task, seed=0, dtype=torch.float32, device="cpu")
        assert net(task.train_rows.data[0][:4]).shape == (4, 10)
        same = init_model(task, seed=0, dtype=torch.float32, device="cpu")
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), same.parameters()))
