"""``problem.batch(t)``: random access to minibatch t, equal to the sequential stream, for every task type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpo.core.problem import batch_index_stream
from hpo.optimizers import SGDMomentum
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.tasks.augment import Augment
from hpo.tasks.base import Task, classification_task
from hpo.tasks.mnist1d import mnist1d_task
from hpo.tasks.models import LeNet
from tests.conftest import tiny_task


def image_task() -> Task:
    """CIFAR-shaped random images with crop, flip and cutout (what the vision tasks use)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (70,), generator=g)
    return classification_task("images", x, y, x[:10], y[:10], lambda: LeNet(3, 4, 8), batch_size=16,
                               augment=Augment(pad=1, flip=True, cutout=4))


TASKS = {
    "tiny": lambda tmp: tiny_task(),
    "mnist1d": lambda tmp: mnist1d_task("mlp", num_samples=300, cache_dir=tmp),
    "images-augmented": lambda tmp: image_task(),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_batch_t_equals_the_stream_in_any_order(name: str, tmp_path: Path) -> None:
    task = TASKS[name](tmp_path)
    horizon = 3 * (len(task.train_rows) // task.batch_size) + 2  # several epochs and a partial one
    problem = make_problem(task, SGDMomentum(), FDSConfig(inner_steps=(horizon,), seed=5), k=1)
    stream = list(problem.batches())
    assert [t for t, _ in stream] == list(range(horizon))
    for t in reversed(range(horizon)):  # backwards: no hidden state carried from step t-1
        x, y = problem.batch(t)
        assert torch.equal(x, stream[t][1][0]) and torch.equal(y, stream[t][1][1])
    # the rows are exactly the sequential index stream (epochs of fresh permutations)
    rows = list(batch_index_stream(len(problem.train), problem.batch_size, horizon, problem.seed))
    assert all(torch.equal(problem.order[t], rows[t]) for t in range(horizon))
    if name == "images-augmented":  # augmentation happened, and differs between steps of the same indices
        raw = problem.train.data[0][problem.order[0]]
        assert not torch.equal(problem.batch(0)[0], raw)
