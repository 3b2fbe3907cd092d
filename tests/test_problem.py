"""A user's own problem: any model, loss and data (tensors or a map-style Dataset), exact hypergradients.

Exactness: every exact backend equals the reference reverse unroll and central finite differences
in float64, on the diabetes regression (SGD and AdamW; with dropout too, its masks seeded per step) and on a Dataset with a random torchvision
v2 transform.  Replay: ``batch(t)`` of a Dataset with a random transform equals the stream in any
order.  Bad definitions: one ``ConfigError`` line each, naming what to fix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from hpo.app.task_loading import check_split
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.checking.unroll import finite_difference_hypergradient, reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.data import DatasetRows
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError
from hpo.optimizers.adam import AdamW
from hpo.optimizers.sgd import SGDMomentum
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.tasks.base import Metric, Problem, check_problem
from hpo.tasks.diabetes import diabetes_task, squared_error

F64 = torch.float64


def schedule_for(rule_name: str) -> Schedule:
    """Distinct values per segment, away from range edges."""
    if rule_name == "sgd":
        return Schedule({"lr": torch.tensor([0.05, 0.1, 0.03], dtype=F64), "momentum": torch.tensor([0.5, 0.8], dtype=F64),
                         "wd": torch.tensor([1e-2], dtype=F64)})
    return Schedule({"lr": torch.tensor([0.01, 0.02], dtype=F64), "beta1": torch.tensor([0.8], dtype=F64),
                     "beta2": torch.tensor([0.95], dtype=F64), "wd": torch.tensor([0.05, 0.1], dtype=F64)})


def assert_all_backends_exact(problem, sched: Schedule, eps: float = 1e-6, fd_rtol: float = 1e-5) -> None:
    ref = reverse_hypergradient(problem, dict(sched.values))
    fd = finite_difference_hypergradient(problem, dict(sched.values), eps=eps)
    backends = [ReverseCheckpointedBackend(every=3), ForwardJvpBackend()]
    if problem.rule.hand_tangent:
        backends.append(ForwardManualBackend())
    for k in ref:
        assert ref[k].abs().max() > 1e-8, k  # the comparison is not vacuous
        torch.testing.assert_close(ref[k], fd[k], rtol=fd_rtol, atol=1e-8, msg=f"reverse unroll vs FD {k}")
    for backend in backends:
        got = run_inner(backend, problem, sched).hypergrad
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-8, atol=1e-11, msg=f"{backend.name} {k}")


@pytest.mark.parametrize("rule", [SGDMomentum(), AdamW()], ids=["sgd", "adamw"])
def test_regression_hypergradients_are_exact(rule) -> None:
    task = diabetes_task(hidden=8, batch_size=16, samples=64)
    problem = make_problem(task, rule, FDSConfig(inner_steps=(9,), dtype=F64, val_frac=0.25, seed=3), k=0)
    assert_all_backends_exact(problem, schedule_for("sgd" if isinstance(rule, SGDMomentum) else "adamw"))


def dropout_regression(p_drop: float) -> Problem:
    """The diabetes MLP with dropout after each hidden layer (a user's model, as written in PyTorch)."""
    base = diabetes_task(hidden=8, batch_size=16, samples=64)

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Dropout(p_drop), nn.Linear(8, 8), nn.Tanh(),
                             nn.Dropout(p_drop), nn.Linear(8, 1))

    return Problem("dropout", make_model, squared_error, base.train, base.test, base.metrics, batch_size=16)


@pytest.mark.parametrize("rule", [SGDMomentum(), AdamW()], ids=["sgd", "adamw"])
def test_dropout_hypergradients_are_exact(rule) -> None:
    """Masks seeded per step: forward, replayed and finite-difference runs all draw the same ones."""
    name = "sgd" if isinstance(rule, SGDMomentum) else "adamw"
    config = FDSConfig(inner_steps=(9,), dtype=F64, val_frac=0.25, seed=3)
    problem = make_problem(dropout_regression(0.3), rule, config, k=0)
    torch.manual_seed(11)  # the global RNG before the run does not matter
    assert_all_backends_exact(problem, schedule_for(name))
    torch.manual_seed(12)
    again = run_inner(ReverseCheckpointedBackend(every=2), problem, schedule_for(name)).hypergrad
    torch.manual_seed(11)
    first = run_inner(ForwardJvpBackend(), problem, schedule_for(name)).hypergrad
    no_masks = run_inner(ForwardJvpBackend(), make_problem(dropout_regression(0.0), rule, config, k=0),
                         schedule_for(name)).hypergrad
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=1e-10, atol=1e-13)
        assert (first[k] - no_masks[k]).norm() > 1e-3 * no_masks[k].norm(), k  # the masks change the training


def random_image_dataset():
    from torchvision.transforms import v2

    class Images(Dataset):
        """Random 3x8x8 images with a random crop and flip in ``__getitem__`` (torch's global RNG)."""

        def __init__(self, n: int) -> None:
            gen = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 3, 8, 8, generator=gen)
            self.y = torch.randint(0, 3, (n,), generator=gen)
            self.transform = v2.Compose([v2.RandomCrop(8, padding=2), v2.RandomHorizontalFlip()])
            self.reads = 0

        def __len__(self) -> int:
            return self.x.shape[0]

        def __getitem__(self, i: int):
            self.reads += 1
            return self.transform(self.x[i]), self.y[i]

    return Images


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(144, 3))


def dataset_problem(n: int = 40) -> Problem:
    images = random_image_dataset()

    def loss(model, batch):
        x, y = batch
        return -torch.log_softmax(model(x), -1).gather(-1, y.unsqueeze(-1)).mean()

    return Problem("images", conv_net, loss, images(n), images(12), batch_size=6)


def test_dataset_batch_t_equals_the_stream_with_a_random_transform() -> None:
    task = dataset_problem()
    problem = make_problem(task, SGDMomentum(), FDSConfig(inner_steps=(14,), seed=2, val_frac=0.2), k=1)
    assert isinstance(problem.train, DatasetRows)
    stream = list(problem.batches())
    state = torch.random.get_rng_state()
    for t in reversed(range(problem.horizon)):  # backwards, twice: no hidden state carried between fetches
        for _ in range(2):
            x, y = problem.batch(t)
            assert torch.equal(x, stream[t][1][0]) and torch.equal(y, stream[t][1][1])
    assert torch.equal(torch.random.get_rng_state(), state)  # fetching never moves the global RNG
    # the transform is random: the same rows differ from the raw images and between steps
    ds = task.train_rows.dataset
    rows = problem.train.indices[problem.order[0]]
    assert not torch.equal(stream[0][1][0], ds.x[rows])
    # only batch t's rows are read
    before = ds.reads
    problem.batch(5)
    assert ds.reads - before == problem.batch_size


def test_dataset_with_random_transform_hypergradient_is_exact() -> None:
    task = dataset_problem(30)
    problem = make_problem(task, SGDMomentum(), FDSConfig(inner_steps=(8,), seed=1, dtype=F64, val_frac=0.2), k=0)
    assert_all_backends_exact(problem, schedule_for("sgd"))


# Bad problem definitions: one line, naming what to fix.

def linear_problem(loss=squared_error, train=None, metrics=None, **kw) -> Problem:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=gen), torch.randn(20, generator=gen)
    return Problem("p", lambda: nn.Linear(3, 1), loss, (x, y) if train is None else train, (x, y),
                   metrics=metrics or {}, **kw)


class NotTensors(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return "a string"


class Empty(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(i)


def per_example(model, batch):
    return (model(batch[0]).squeeze(-1) - batch[1]) ** 2


def not_a_tensor(model, batch):
    return 1.0


def with_item(model, batch):
    return squared_error(model, batch) * float(model.weight.sum())


def in_place(model, batch):
    model.weight.mul_(2.0)
    return squared_error(model, batch)


@pytest.mark.filterwarnings("ignore:Converting a tensor")
@pytest.mark.parametrize("make,expect", [
    (lambda: check_problem(linear_problem(per_example)), "must return a scalar (0-d) tensor, got shape (4,)"),
    (lambda: check_problem(linear_problem(not_a_tensor)), "must return a tensor, got float"),
    (lambda: check_problem(linear_problem(with_item)), "float(), .item() or .detach()"),
    (lambda: check_problem(linear_problem(in_place)), "remove in-place ops on weights"),
    (lambda: linear_problem(train=NotTensors()), "a Dataset item must be a tensor"),
    (lambda: linear_problem(train=Empty()), "the dataset is empty"),
    (lambda: linear_problem(metrics={"mse": squared_error}), "metric 'mse' has no direction"),
    (lambda: Metric(squared_error, "down"), "direction must be 'higher' or 'lower'"),
    (lambda: check_split(20, 0.25, batch_size=32), "a batch of 32 is larger than the 15 training examples"),
])
def test_bad_problem_is_one_line(make, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_a_good_problem_passes_the_check() -> None:
    check_problem(linear_problem(metrics={"mse": Metric(squared_error, "lower")}))
    check_problem(dataset_problem())


# Labels: every output shows the ranking metric by its own name, in its own units.

def test_regression_run_prints_and_writes_the_rmse(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from hpo.cli import cli

    logdir = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", "--task", "diabetes-mlp", "--samples", "64", "--outer-steps", "2",
                                   "--inner-steps", "10", "--retrain-steps", "10", "--no-progress",
                                   "--logdir", str(logdir)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("outer ")]
    assert len(lines) == 2 and all("  val_rmse=" in ln and "val_acc" not in ln for ln in lines)
    saved = json.loads((logdir / "schedule.json").read_text())
    for rec, line in zip(saved["history"], lines):
        assert "val_acc" not in rec and 20.0 < rec["val_rmse"] < 200.0  # an RMSE in the target's units, positive
        assert f"val_rmse={rec['val_rmse']:.4f}" in line
    learned = saved["results"]["learned"]
    assert "test_acc" not in learned and learned["test_rmse"] == pytest.approx(learned["metrics"]["rmse"])
    assert f"learned schedule   test_rmse={learned['test_rmse']:.4f}" in res.output
    assert saved["results"]["hand_picked"]["test_rmse"] > 0


def test_compare_outputs_name_the_metric_and_keep_accuracy_as_it_was() -> None:
    from hpo.app.compare_checkpoint import Row
    from hpo.app.compare_outputs import csv_text, summary_table
    from hpo.core.problem import ACCURACY, MetricLabel

    rows = [Row("auto", s, 20, 20, 1.0, 1.0, -50.0 - s, -40.0, 10, False, {"lr": [0.1]}, -45.0) for s in (0, 1)]
    rmse = MetricLabel("rmse", higher=False)
    header, first = csv_text(rows, rmse).splitlines()[:2]
    assert header.split(",")[6:9] == ["search_val_rmse", "val_rmse", "test_rmse"]
    assert first.split(",")[6:9] == ["45.0000", "40.0000", "50.0000"]
    table = summary_table(rows, ("auto",), 20, rmse)
    assert "| method | val rmse | test rmse |" in table and "| auto | 40.0000 ± 0.0000 | 50.5000 ± 0.7071 |" in table
    acc_rows = [Row("auto", 0, 20, 20, 1.0, 1.0, 0.75, 0.5, 10, False, {"lr": [0.1]}, 0.6)]
    assert csv_text(acc_rows, ACCURACY) == csv_text(acc_rows)
    assert csv_text(acc_rows).splitlines()[0].split(",")[6:9] == ["search_val_acc", "val_acc", "test_acc"]
    assert "| method | val acc | test acc |" in summary_table(acc_rows, ("auto",), 20)


def test_a_problem_without_metrics_shows_its_loss_once() -> None:
    from hpo.core.callbacks import OuterRecord

    task = linear_problem()
    assert task.label.is_loss and not task.label.higher
    rec = OuterRecord(0, 10, 10, 0.25, -0.25, {}, {}, {}, False, 0.1, metric="loss", higher=False)
    assert rec.val_metric == 0.25 and "val_acc" not in rec.to_json() and rec.to_json()["val_loss"] == 0.25
    acc = OuterRecord(0, 10, 10, 0.9, 0.625, {}, {}, {}, False, 0.1)
    assert list(acc.to_json())[:5] == ["k", "horizon", "steps_run", "val_loss", "val_acc"]
    assert acc.to_json()["val_acc"] == 0.625


# The character-level Transformer: LayerNorm, causal attention, GELU and dropout seeded per step.

def tiny_transformer(dropout: float = 0.1) -> Problem:
    """1 layer, width 8, 2 heads, context 6, on the first 2,100 bytes of the standard library."""
    from hpo.tasks.char_transformer import char_transformer_task

    return char_transformer_task(chars=2_100, context=6, width=8, layers=1, heads=2, dropout=dropout, batch_size=4,
                                 samples=40)


@pytest.mark.parametrize("rule", [SGDMomentum(), AdamW()], ids=["sgd", "adamw"])
def test_transformer_hypergradients_are_exact(rule) -> None:
    name = "sgd" if isinstance(rule, SGDMomentum) else "adamw"
    config = FDSConfig(inner_steps=(7,), dtype=F64, val_frac=0.25, seed=5)
    problem = make_problem(tiny_transformer(), rule, config, k=0)
    sched = schedule_for(name) if name == "adamw" else Schedule(
        {"lr": torch.tensor([0.5, 1.0, 0.3], dtype=F64), "momentum": torch.tensor([0.5, 0.8], dtype=F64),
         "wd": torch.tensor([1e-2], dtype=F64)})
    assert_all_backends_exact(problem, sched)
    no_masks = run_inner(ForwardJvpBackend(), make_problem(tiny_transformer(0.0), rule, config, k=0), sched).hypergrad
    got = run_inner(ForwardJvpBackend(), problem, sched).hypergrad
    assert any((got[k] - no_masks[k]).norm() > 1e-3 * no_masks[k].norm() for k in got)  # dropout is on


def test_char_transformer_task_reads_the_standard_library_deterministically() -> None:
    import math

    from hpo.tasks.char_transformer import VOCAB, stdlib_bytes, stdlib_sources

    files = stdlib_sources()
    assert [p.name for p in files] == sorted(p.name for p in files) and files[0].suffix == ".py"
    head = files[0].read_bytes()[:100]
    tokens = stdlib_bytes(1000)
    assert tokens.shape == (1000,) and tokens.dtype == torch.int64 and int(tokens.max()) < VOCAB
    assert bytes(tokens[:100].tolist()) == bytes(b if b < VOCAB else 0 for b in head)
    assert torch.equal(stdlib_bytes(1000), tokens)
    task = tiny_transformer()
    assert task.metric_name == "bpc" and not task.higher_is_better and len(task.train) == 40
    assert task.train_rows.data.shape == (40, 7)
    loss = 4.0  # nats; bits per character is loss / ln 2
    assert task.metrics["bpc"].reported(torch.tensor(loss)).item() == pytest.approx(loss / math.log(2))
    with pytest.raises(ConfigError, match="^task: char-transformer needs 10000000000 characters"):
        stdlib_bytes(10_000_000_000)


def test_char_transformer_runs_from_any_folder_and_reports_bits_per_character(tmp_path, monkeypatch) -> None:
    import json

    from click.testing import CliRunner

    from hpo.cli import cli

    monkeypatch.chdir(tmp_path)  # the corpus is the standard library: nothing relative to the repository
    res = CliRunner().invoke(cli, ["run", "--task", "char-transformer", "--optimizer", "adamw", "--samples", "64",
                                   "--batch-size", "4", "--outer-steps", "2", "--inner-steps", "8",
                                   "--retrain-steps", "8", "--no-progress", "--logdir", "run"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "schedule.json").read_text())
    assert saved["task"] == "char-transformer" and saved["optimizer"] == "adamw"
    bpc = saved["history"][0]["val_bpc"]
    assert 5.0 < bpc < 7.5  # about log2(128) = 7 bits before training, a little less after 8 steps
    assert f"val_bpc={bpc:.4f}" in res.output and "learned schedule   test_bpc=" in res.output
