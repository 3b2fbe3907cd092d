"""``stn``: Self-Tuning Networks' best-response layers, one weight and one hyperparameter step by hand, the CLI."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hpo.cli.main import cli
from hpo.search.stn import Layout, SelfTuning, STNSearch, replay, segment_means
from hpo.search.stn_layers import BestResponse, conditioned, convert, weight_penalty
from hpo.tasks.base import Problem, classification_task
from hpo.tasks.loss_hypers import l2_term, with_loss_hypers
from hpo.tasks.mnist1d import CNN1D, MLP

HERE = Path(__file__).resolve()


def layer_index(model: nn.Module) -> dict[str, int]:
    """Each layer's position among the model's layers (what a per-layer L2 value indexes)."""
    names = dict.fromkeys(n.rpartition(".")[0] for n, _ in model.named_parameters())
    return {n: i for i, n in enumerate(names)}


@pytest.mark.parametrize("make, shape", [(MLP, (7, 40)), (lambda: CNN1D(channels=4), (7, 1, 40))])
def test_best_response_layers_equal_the_plain_layers_when_the_gates_are_zero(make, shape) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    plain = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    stn = convert(plain, hypers=3, layers=layer_index(plain))
    layers = [m for m in stn.modules() if isinstance(m, BestResponse)]
    assert len(layers) == len(layer_index(plain))
    z = torch.randn(7, 3, dtype=torch.float64)
    with conditioned(stn, z):  # the gates start at zero: A = 0
        assert torch.equal(stn(x), plain(x))
    for m in layers:  # nonzero gates, but at z = 0 ...
        nn.init.normal_(m.gate.weight)
    with conditioned(stn, torch.zeros(7, 3, dtype=torch.float64)):
        assert torch.equal(stn(x), plain(x))
        rho = torch.tensor([1e-2, 2e-3, 3e-1, 4e-2][: len(layers)], dtype=torch.float64)
        names = list(layer_index(plain))  # ... and the L2 penalty is the plain one
        expected = l2_term(plain, rho, {n: i for i, n in enumerate(names)})
        assert torch.allclose(weight_penalty(stn, rho, torch.zeros(3, dtype=torch.float64)), expected, rtol=1e-12)
    with conditioned(stn, z):  # ... and with z != 0 the output changes
        assert not torch.allclose(stn(x), plain(x))


def tiny(classes: int = 3) -> Problem:
    """8 training and 8 test examples in 2-D, a 2-2-3 tanh network, label smoothing and per-layer L2."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 2, generator=gen, dtype=torch.float64), torch.arange(8) % classes
    task = classification_task("tiny", x, y, x, y, lambda: nn.Sequential(nn.Linear(2, 2), nn.Tanh(),
                                                                            nn.Linear(2, classes)), batch_size=4)
    return with_loss_hypers(task, ("l2", "label_smoothing"))


def effective(model: nn.Module, g: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's weights seen by one example with gates ``g``: :math:`W + diag(g) W_h`, :math:`b + g b_h`."""
    layers = [m for m in model.modules() if isinstance(m, BestResponse)]
    return [(m.layer.weight + gi[:, None] * m.hyper.weight, m.layer.bias + gi * m.hyper.bias)
            for m, gi in zip(layers, g)]


def per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, eps: torch.Tensor | None,
                rho: torch.Tensor | None) -> torch.Tensor:
    """The loss of one example written out: its own weights, smoothed cross-entropy, L2 of those weights."""
    layers = [m for m in model.modules() if isinstance(m, BestResponse)]
    ws = effective(model, [m.gate.weight @ z for m in layers])
    h = torch.tanh(ws[0][0] @ x + ws[0][1])
    logp = torch.log_softmax(ws[1][0] @ h + ws[1][1], -1)
    e = 0.0 if eps is None else eps
    loss = -(1 - e) * logp[y] - e * logp.mean()
    if rho is not None:
        loss = loss + 0.5 * sum(rho[i] * ((w * w).sum() + (b * b).sum()) for i, (w, b) in enumerate(ws))
    return loss


def fresh(task: Problem, lr: float = 0.1, momentum: float = 0.9, wd: float = 0.01) -> SelfTuning:
    """A float64 STN on ``task`` with nonzero gates, L2 per layer and label smoothing, SGD-momentum."""
    torch.manual_seed(1)
    model = convert(task.make_model().double(), 3, {"0": 0, "2": 1})
    for m in model.modules():
        if isinstance(m, BestResponse):
            nn.init.normal_(m.gate.weight, std=0.5)
    layout = Layout(l2_values=2, smoothing=True, layers=2)
    u0 = layout.unconstrained(1e-2, 0.1, torch.float64, "cpu") + torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64)
    return SelfTuning(task, model, layout, u0, 0.5,
                      lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=wd), hyper_lr=0.05,
                      tau=0.01)


def test_one_weight_step_equals_the_hand_computed_step() -> None:
    task = tiny()
    tuner = fresh(task)
    x, y = task.train_rows.fetch(torch.arange(4), 0, 0)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = copy.deepcopy(tuner.model)  # the weights before the step, to differentiate the written-out loss
    u_tilde = tuner.u.detach() + 0.5 * noise  # each example's perturbed hyperparameters (s = 0.5)
    rho, eps = torch.exp(u_tilde[:, :2]), 0.5 * torch.sigmoid(u_tilde[:, 2])
    z = u_tilde - tuner.center
    loss = torch.stack([per_example(ref, x[i], y[i], z[i], eps[i], rho[i]) for i in range(4)]).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    got = tuner.weight_step((x, y), noise)
    assert math.isclose(float(got), float(loss.detach()), rel_tol=1e-12)
    for (name, p), p0, g in zip(tuner.model.named_parameters(), ref.parameters(), grads):
        v = g + 0.01 * p0.detach()  # first SGD-momentum step: v = g + wd theta, theta' = theta - lr v
        assert torch.allclose(p.detach(), p0.detach() - 0.1 * v, rtol=0, atol=1e-14), name
    assert torch.equal(tuner.u.detach(), tuner.center)  # a weight step leaves the hyperparameters


def test_one_hyperparameter_step_equals_the_hand_computed_step() -> None:
    task = tiny()
    tuner = fresh(task)
    x, y = task.train_rows.fetch(torch.arange(4, 8), 0, 0)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    u0, c = tuner.u.detach().clone(), tuner.center

    def objective(u: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
        """Validation loss (no smoothing, no L2) through the best response, minus the entropy bonus."""
        ut = u + log_s.exp() * noise
        val = torch.stack([per_example(tuner.model, x[i], y[i], ut[i] - c, None, None) for i in range(4)]).mean()
        return val - 0.01 * log_s.sum()

    u = u0.clone().requires_grad_(True)
    log_s = torch.full((3,), math.log(0.5), dtype=torch.float64, requires_grad=True)
    gu, gs = torch.autograd.grad(objective(u, log_s), [u, log_s])
    h = 1e-6  # the written-out objective's gradient agrees with central differences
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = h
        with torch.no_grad():
            fd = (objective(u + e, log_s) - objective(u - e, log_s)) / (2 * h)
        assert math.isclose(float(fd), float(gu[i]), rel_tol=1e-6, abs_tol=1e-10)
    weights = [p.detach().clone() for p in tuner.model.parameters()]
    got = tuner.hyper_step((x, y), noise)
    assert math.isclose(float(got), float(objective(u, log_s).detach()), rel_tol=1e-12)
    # Adam's first step: m_hat = g, v_hat = g^2, so the move is lr * g / (|g| + 1e-8)
    assert torch.allclose(tuner.u.detach(), u0 - 0.05 * gu / (gu.abs() + 1e-8), rtol=0, atol=1e-14)
    assert torch.allclose(tuner.log_sigma.detach(), log_s.detach() - 0.05 * gs / (gs.abs() + 1e-8), rtol=0, atol=1e-14)
    assert all(torch.equal(a, b.detach()) for a, b in zip(weights, tuner.model.parameters()))  # weights untouched
    assert float(gu.abs().min()) > 0  # the validation loss reaches every hyperparameter through the best response


def test_the_trajectory_is_replayed_as_segment_means() -> None:
    layout = Layout(l2_values=2, smoothing=True, layers=2)
    steps = torch.arange(10, dtype=torch.float64)
    traj = torch.stack([torch.log(1 + steps), torch.log(2 + steps), torch.zeros(10, dtype=torch.float64)], 1)
    s = replay(traj, layout, 10, {"l2": 2, "label_smoothing": 3}, {"lr": 0.1}, ("lr", "l2", "label_smoothing"),
               ("a", "b"))
    assert s.values["lr"].tolist() == [0.1]
    assert s.values["l2"].tolist() == [[3.0, 8.0], [4.0, 9.0]]  # means of 1..5, 6..10 and of 2..6, 7..11
    assert torch.allclose(s.values["label_smoothing"], torch.full((3,), 0.25, dtype=torch.float64))
    assert s.group_names("l2") == ("a", "b")
    # a run stopped after 5 of 10 steps (segments 0-3, 4-6, 7-9) holds its last segment mean to the end
    assert segment_means(steps[:5, None], 10, 3)[0].tolist() == [1.5, 4.0, 4.0]


def test_stn_in_hpo_compare_end_to_end(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compare", "--task", "mnist1d-mlp", "--samples", "300", "--methods", "stn,hand-picked",
                                 "--loss-hypers", "l2,label_smoothing", "--seeds", "0", "--inner-steps", "20",
                                 "--budget", "20,40", "--device", "cpu", "--logdir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rows = [row for row in csv.DictReader((tmp_path / "c" / "results.csv").open()) if row["method"] == "stn"]
    assert [int(row["budget"]) for row in rows] == [20, 40]
    for row in rows:
        acc = float(row["test_acc"])
        assert 0.1 <= acc <= 1.0
        assert float(row["search_seconds"]) > 0 and float(row["cpu_seconds"]) > 0
        schedule = json.loads(row["schedule"])
        assert schedule["lr"] == [0.1] and schedule["momentum"] == [0.9] and schedule["wd"] == [0.0005]
        assert len(schedule["label_smoothing"]) == 7 and all(0 < v < 0.5 for v in schedule["label_smoothing"])
        assert len(schedule["l2"]) == 3 and all(len(v) == 1 and v[0] > 0 for v in schedule["l2"])


def test_stn_stops_at_its_time_budget() -> None:
    from hpo.app.config import with_loss_kinds
    from hpo.app.registry import resolve_rule
    from hpo.search.base import SearchSettings
    from hpo.search.space import default_space

    task = tiny()
    rule = with_loss_kinds(resolve_rule("sgd"), "tiny", ("l2", "label_smoothing"))
    settings = SearchSettings(horizon=40, budget=400, space=default_space(rule), seconds=1e-9, val_frac=0.25)
    points = STNSearch().search(task, rule, settings, 0)
    assert len(points) == 1 and points[0].steps == 5  # one cycle of 5 weight steps, then out of time
    assert points[0].schedule.values["label_smoothing"].shape == (7,)


class LSTMClassifier(nn.Module):
    """An LSTM over a sequence of scalars, then a linear read-out: no best response for the LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out[:, -1])  # type: ignore[no-any-return]


def lstm_task(**_: object) -> Problem:
    """Random sequences of 5 scalars in 3 classes, for an LSTM."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    return classification_task("lstm", x, y, x[:10], y[:10], LSTMClassifier, batch_size=8)


def test_a_model_without_best_response_layers_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compare", "--task", f"{HERE}:lstm_task", "--methods", "stn",
                                 "--loss-hypers", "l2", "--seeds", "0", "--inner-steps", "8", "--budget", "8",
                                 "--val-frac", "0.25", "--device", "cpu", "--logdir", str(tmp_path / "c")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Invalid value for '--methods': stn: module 'rnn' is a LSTM" in lines[0], r.output
    assert not (tmp_path / "c").exists()  # refused before the comparison starts


def test_stn_without_loss_hyperparameters_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compare", "--methods", "stn", "--seeds", "0", "--inner-steps", "8", "--budget", "8",
                                 "--device", "cpu", "--logdir", str(tmp_path / "c")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "stn: it tunes loss hyperparameters" in r.output
    assert not (tmp_path / "c").exists()


def test_stn_options_set_the_ratio_and_the_perturbation_scale() -> None:
    from hpo.app.compare_config import CompareConfig

    cfg = CompareConfig(methods=("stn",), loss_hypers=("l2", "label_smoothing"), label_noise=0.4,
                        stn_options={"weight_steps": 3, "hyper_steps": 2, "sigma": 0.2})
    method = cfg.resolved_methods["stn"]
    assert (method.weight_steps, method.hyper_steps, method.sigma) == (3, 2, 0.2)


@pytest.mark.parametrize(("args", "expected"), [
    (["--stn-option", "speed=2"], "stn has no option 'speed'"),
    (["--stn-option", "weight_steps=2.5"], "stn's weight_steps must be a whole number"),
    (["--stn-option", "sigma=-1"], "sigma must be positive"),
])
def test_bad_stn_options_are_one_line_exit_2(args: list[str], expected: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["compare", "--methods", "stn", "--loss-hypers", "l2,label_smoothing",
                                      "--label-noise", "0.4", *args, "--logdir", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "--stn-option" in err and expected in err, err


def test_stn_tunes_the_input_noise_when_it_is_turned_on(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compare", "--task", "mnist1d-mlp", "--samples", "300", "--methods", "stn",
                                 "--loss-hypers", "l2,input_noise", "--seeds", "0", "--inner-steps", "20",
                                 "--budget", "40", "--device", "cpu", "--logdir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    (row,) = [row for row in csv.DictReader((tmp_path / "c" / "results.csv").open()) if row["method"] == "stn"]
    schedule = json.loads(row["schedule"])
    noise = schedule["input_noise"]
    assert len(noise) == 7 and all(v > 0 for v in noise) and len(set(noise)) > 1  # a trajectory, from 0.1
    assert abs(noise[0] - 0.1) < 0.05 and "label_smoothing" not in schedule


def test_noisy_inputs_replay_with_the_seeded_rng() -> None:
    from hpo.tasks.loss_hypers import noisy_inputs

    x, y = torch.ones(4, 3), torch.zeros(4)
    torch.manual_seed(5)
    a = noisy_inputs((x, y), torch.tensor([0.0, 1.0, 2.0, 0.5]))
    torch.manual_seed(5)
    n = torch.randn(4, 3)
    assert torch.equal(a[0], x + torch.tensor([[0.0], [1.0], [2.0], [0.5]]) * n) and a[1] is y
