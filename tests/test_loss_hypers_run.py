"""Loss hyperparameters end to end: the CLI, a problem's own kind, outputs, retrain, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import hpo
from hpo.app.checkpoint import checkpoint_path, load_checkpoint
from hpo.app.config import RunConfig
from hpo.app.run import resume
from hpo.cli import cli
from hpo.optimizers.base import HyperSpec
from hpo.optimizers.loss_hypers import LossHyper
from hpo.tasks.base import Metric, Problem
from hpo.tasks.mnist1d import noisy_labels, noisy_split

#: A small noisy MNIST-1D run: 400 samples -> 288 training examples with 40% of their labels replaced.
SMALL = ["--samples", "400", "--label-noise", "0.4", "--batch-size", "32", "--outer-steps", "2",
         "--inner-steps", "20", "--retrain-steps", "20", "--device", "cpu", "--no-progress"]


def run_cli(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def test_noisy_labels_replace_the_chosen_fraction_by_other_classes() -> None:
    y = torch.arange(100) % 10
    noisy_y, noisy = noisy_labels(y, 0.45, 10, seed=3)
    assert int(noisy.sum()) == 45
    assert bool((noisy_y[noisy] != y[noisy]).all()) and bool((noisy_y[~noisy] == y[~noisy]).all())
    (x_tr, _), (x_va, _), mask = noisy_split(torch.randn(100, 2), y, 0.45)
    assert x_tr.shape[0] == 90 and x_va.shape[0] == 10 and mask.shape == (90,) and int(mask.sum()) == 40


def test_run_learns_per_example_weights_saved_beside_the_schedule(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    result = run_cli("run", *SMALL, "--loss-hypers", "example_weight,label_smoothing", "--backend",
                     "reverse-checkpointed", "--logdir", str(logdir))
    assert result.exit_code == 0, result.output
    summary = json.loads((logdir / "schedule.json").read_text())
    assert summary["schedule"]["example_weight"] == "example_weight.pt"  # not inlined
    weights = torch.load(logdir / "example_weight.pt", weights_only=True)
    assert weights.shape == (288, 1) and weights.dtype == torch.float64
    assert 0.0 <= float(weights.min()) and float(weights.max()) <= 1.0 and float(weights.std()) > 0  # learned
    assert "example_weight[288 values]" in result.output
    stored = load_checkpoint(checkpoint_path(logdir)).state.values["example_weight"]
    assert torch.equal(stored.double().cpu(), weights)

    again = run_cli("retrain", "--schedule", str(logdir / "schedule.json"))  # reads the tensor file, as recorded
    assert again.exit_code == 0, again.output
    assert f"test_acc={summary['results']['learned']['test_acc']:.4f}" in again.output

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"histograms": 0}).Reload()
    assert "hyper/example_weight" in acc.Tags()["histograms"]
    assert [e.step for e in acc.Histograms("hyper/example_weight")] == [0, 1]


def test_resume_carries_the_per_example_weights(tmp_path: Path) -> None:
    base = {"task": "mnist1d-mlp", "samples": 400, "label_noise": 0.4, "batch_size": 32, "inner_steps": (20,),
            "retrain_steps": 20, "device": "cpu", "loss_hypers": ("example_weight",), "backend": "reverse-checkpointed"}
    straight = hpo.run(RunConfig(**base, outer_steps=3, logdir=str(tmp_path / "a")))
    hpo.run(RunConfig(**base, outer_steps=1, logdir=str(tmp_path / "b")))
    resumed = resume(tmp_path / "b", {"outer_steps": 3})
    assert torch.equal(resumed.schedule.values["example_weight"], straight.schedule.values["example_weight"])


def own_problem() -> Problem:
    """A regression whose loss takes its own hyperparameter: a Huber threshold, one per time segment."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    y = x.sum(1) + 0.3 * torch.randn(64, generator=gen)
    delta = LossHyper(HyperSpec("delta", low=0.05, high=5.0, init=1.0, step=0.2, count=2))

    def huber(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor], hyper: dict[str, torch.Tensor]) -> torch.Tensor:
        r = (model(b[0]).squeeze(-1) - b[1]).abs()
        d = hyper["delta"]
        return torch.where(r < d, 0.5 * r ** 2, d * (r - 0.5 * d)).mean()

    def mse(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((model(b[0]).squeeze(-1) - b[1]) ** 2).mean()

    return Problem("huber", lambda: nn.Linear(3, 1), huber, (x, y), (x, y), objective=mse, hypers=(delta,),
                   metrics={"mse": Metric(mse, "lower")}, batch_size=16)


def test_a_problems_own_kind_is_one_declaration_and_is_learned(tmp_path: Path) -> None:
    result = hpo.run(RunConfig(task=own_problem(), outer_steps=2, inner_steps=(12,), retrain_steps=12,
                               val_frac=0.25, device="cpu", dtype="float64", logdir=str(tmp_path / "own")))
    delta = result.schedule.values["delta"]
    assert delta.shape == (2,) and not torch.equal(delta, torch.ones(2))  # the outer loop moved it


def test_a_loss_with_hyperparameters_needs_an_objective() -> None:
    p = own_problem()
    with pytest.raises(hpo.ConfigError, match="needs an objective"):
        Problem("x", p.make_model, p.loss, p.train, p.test, hypers=p.hypers)


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "--loss-hypers", "sample_weight"], "unknown kind 'sample_weight'; choose from example_weight"),
    (["run", "--task", "diabetes-mlp", "--loss-hypers", "class_weight"],
     "class_weight needs per-example losses, which problem 'diabetes-mlp' does not give: set logits= and classes="),
    (["run", "--loss-hypers", "l2", "--backend", "forward-manual"],
     "the loss hyperparameters l2 enter the gradient"),
    (["run", "--task", "diabetes-mlp", "--label-noise", "0.3"], "applies to the MNIST-1D tasks"),
    (["run", "--label-noise", "1.5"], "--label-noise"),
    (["compare", "--loss-hypers", "example_weight", "--methods", "auto", "--samples", "100"],
     "per-example weights in hpo compare need the problem's own validation set"),
])
def test_bad_loss_hyperparameter_input_is_one_line_exit_2(args: list[str], expected: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [*args, "--logdir", str(tmp_path / "x")])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exc_info)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and expected in err, err


def test_retrain_refuses_weights_of_another_training_set_in_one_line(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    assert run_cli("run", *SMALL, "--outer-steps", "1", "--loss-hypers", "example_weight", "--logdir",
                   str(logdir)).exit_code == 0
    result = CliRunner().invoke(cli, ["retrain", "--schedule", str(logdir / "schedule.json"), "--samples", "300"])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "holds 288 example_weight values but mnist1d-mlp-noisy0.4 has 216 training examples" in err, err


def test_l2_per_layer_is_named_by_layer_beside_grouped_learning_rates(tmp_path: Path) -> None:
    logdir = tmp_path / "l2"
    result = run_cli("run", "--samples", "400", "--groups", "lr=layer", "--loss-hypers", "l2", "--outer-steps", "1",
                     "--inner-steps", "10", "--device", "cpu", "--no-progress", "--logdir", str(logdir))
    assert result.exit_code == 0, result.output
    assert "l2 per group (layer): 3 groups net.0, net.2, net.4" in result.output
    summary = json.loads((logdir / "schedule.json").read_text())
    assert summary["groups"]["l2"] == ["net.0", "net.2", "net.4"]
    again = run_cli("retrain", "--schedule", str(logdir / "schedule.json"))
    assert again.exit_code == 0, again.output
    assert f"test_acc={summary['results']['learned']['test_acc']:.4f}" in again.output


def test_the_default_outer_optimizer_is_adam_for_per_example_weights_and_sign_otherwise() -> None:
    from hpo.outer.adam import Adam as AdamOuter
    from hpo.outer.sign import SignDescent

    assert isinstance(RunConfig().resolved_outer, SignDescent)
    assert isinstance(RunConfig(loss_hypers=("label_smoothing", "l2")).resolved_outer, SignDescent)
    assert isinstance(RunConfig(loss_hypers=("example_weight",), label_noise=0.4).resolved_outer, AdamOuter)
    assert isinstance(RunConfig(loss_hypers=("example_weight",), outer="sign").resolved_outer, SignDescent)


def test_every_kind_of_method_runs_with_loss_hyperparameters(tmp_path: Path) -> None:
    """PBT's members and online-greedy tune one shared value per kind; schedule-free trains on the plain loss."""
    import csv

    result = run_cli("compare", "--samples", "300", "--label-noise", "0.4", "--loss-hypers", "l2,label_smoothing",
                     "--methods", "pbt,online-greedy,schedule-free,auto", "--seeds", "0", "--inner-steps", "20",
                     "--budget", "40", "--device", "cpu", "--logdir", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    rows = {r["method"]: json.loads(r["schedule"]) for r in csv.DictReader((tmp_path / "c" / "results.csv").open())}
    assert set(rows) == {"pbt", "online-greedy", "schedule-free", "auto"}
    for method in ("pbt", "online-greedy", "auto"):
        assert len(rows[method]["l2"]) == 3 and "label_smoothing" in rows[method]  # sized for the task's layers
    assert "l2" not in rows["schedule-free"]
