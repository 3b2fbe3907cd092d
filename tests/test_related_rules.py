"""EXAdam, Sophia and AdaHessian against pytorch-optimizer's ``EXAdam``, ``SophiaH`` and ``AdaHessian``.

On a fixed sequence of minibatches, in float64, over 25 steps, with constant and with scheduled
hyperparameters (set on the param group before each step, as a scheduler would), each rule's weights
and state equal the reference class's.  The curvature rules get the Hutchinson estimate from the
library (:func:`hpo.core.step.train_step`); the reference computes its own with ``autograd.grad`` of
the gradient, and ``torch.randint_like`` is patched while it runs so that it draws exactly the
library's probes (:func:`hpo.core.step.rademacher_probes` of ``(seed, t)``).  For a conv model the
reference is fed the estimate averaged over each kernel's spatial positions as the original
AdaHessian code does (``torch.mean(hv.abs(), dim=[2, 3], keepdim=True)``), since pytorch-optimizer 4.x
no longer averages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import pytorch_optimizer  # the parity oracle; the test extra installs it
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hpo.core.step import rademacher_probes, train_step
from hpo.optimizers import AdaHessian, EXAdam, Sophia, UpdateRule

pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")

F64 = torch.float64
STEPS = 25
SEED = 3


@dataclass(frozen=True)
class Oracle:
    """A rule, the reference class with its fixed options, the state-name map, and the group keys of a setting."""

    key: str
    rule: Callable[[], UpdateRule]
    make: Callable[[list[Tensor], dict[str, float]], torch.optim.Optimizer]
    state_names: dict[str, str]  # our state key -> the reference's

    def group(self, hyper: dict[str, float]) -> dict[str, object]:
        """The param-group entries of ``hyper``."""
        out: dict[str, object] = {"lr": hyper["lr"], "betas": (hyper["beta1"], hyper["beta2"]),
                                  "weight_decay": hyper["wd"]}
        if "rho" in hyper:
            out["p"] = hyper["rho"]
        return out


ORACLES = [
    Oracle("exadam", EXAdam,
           lambda ps, h: pytorch_optimizer.EXAdam(ps, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                                  weight_decay=h["wd"], eps=1e-8),
           {"m": "exp_avg", "v": "exp_avg_sq"}),
    Oracle("sophia", lambda: Sophia(every=3),
           lambda ps, h: pytorch_optimizer.SophiaH(ps, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                                   weight_decay=h["wd"], p=h["rho"], update_period=3, num_samples=1,
                                                   hessian_distribution="rademacher", eps=1e-12, foreach=False),
           {"m": "momentum", "h": "hessian_moment"}),
    Oracle("adahessian", lambda: AdaHessian(every=2, probes=2),
           lambda ps, h: pytorch_optimizer.AdaHessian(ps, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                                      weight_decay=h["wd"], update_period=2, num_samples=2,
                                                      hessian_distribution="rademacher", eps=1e-16, foreach=False),
           {"m": "exp_avg", "v": "exp_hessian_diag_sq"}),
]

#: Hyperparameter settings: step ``t`` of the scheduled one changes every value every 5 steps.
CONSTANT = {"lr": 0.02, "beta1": 0.9, "beta2": 0.95, "rho": 0.05, "wd": 0.1}


def scheduled(t: int) -> dict[str, float]:
    """A piecewise-constant schedule of every hyperparameter."""
    k = t // 5
    return {"lr": 0.03 / (1 + k), "beta1": 0.8 + 0.03 * k, "beta2": 0.9 + 0.015 * k, "rho": 0.05 + 0.01 * k,
            "wd": 0.1 * (k % 2)}


def mlp() -> nn.Module:
    """A 5-6-3 tanh MLP (weights and biases: no spatial dims)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)


def cnn() -> nn.Module:
    """A conv layer (2 kernels of 3x3) then a linear head, on 1x5x5 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).to(F64)


def batches(conv: bool) -> list[tuple[Tensor, Tensor]]:
    """``STEPS`` fixed minibatches of 8 points."""
    gen = torch.Generator().manual_seed(7)
    shape = (8, 1, 5, 5) if conv else (8, 5)
    return [(torch.randn(shape, generator=gen, dtype=F64), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(STEPS)]


def original_spatial_average(hz_times_z: Tensor) -> Tensor:
    """The original AdaHessian code's per-kernel estimate (amirgholami/adahessian, ``get_trace``)."""
    if hz_times_z.dim() == 4:
        return torch.mean(hz_times_z.abs(), dim=[2, 3], keepdim=True).expand_as(hz_times_z)
    return hz_times_z.abs()


#: Every rule on the MLP; AdaHessian also on the CNN, where its spatial averaging of conv kernels acts.
MODEL_CASES = [(o, False) for o in ORACLES] + [(o, True) for o in ORACLES if o.key == "adahessian"]


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "scheduled"])
@pytest.mark.parametrize(("oracle", "conv"), MODEL_CASES, ids=[f"{o.key}-{'cnn' if c else 'mlp'}" for o, c in MODEL_CASES])
def test_rule_equals_pytorch_optimizer(oracle: Oracle, schedule: bool, conv: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights and state equal the reference's to 1e-10 (relative) after every one of 25 steps."""
    rule = oracle.rule()
    model = mlp() if conv is False else cnn()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    leaves = [params[n].clone().requires_grad_() for n in names]
    hyper_at = scheduled if schedule else (lambda t: CONSTANT)
    opt = oracle.make(leaves, hyper_at(0))
    state = rule.init(params)

    def loss_fn(p: dict[str, Tensor], buffers: dict[str, Tensor], batch: tuple[Tensor, Tensor],
                hyper: dict[str, Tensor] | None = None) -> tuple[Tensor, dict]:
        x, y = batch
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y), buffers

    for t, (x, y) in enumerate(batches(conv)):
        h = hyper_at(t)
        hyper = {k: torch.tensor(v, dtype=F64) for k, v in h.items() if k in rule.hyper_names}
        probes = rademacher_probes(params, SEED, t, rule.curvature.probes) if rule.curvature is not None else None
        params, state, *_ = train_step(rule, loss_fn, params, {}, state, hyper, t, (x, y), seed=SEED)

        for group in opt.param_groups:
            group.update(oracle.group(h))
        for leaf in leaves:
            leaf.grad = None
        loss = nn.functional.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
        if probes is None:
            loss.backward()
            opt.step()
        elif conv:  # the reference gets the original code's averaged estimate, from its own autograd HVP
            grads = torch.autograd.grad(loss, leaves, create_graph=True)
            for leaf, g in zip(leaves, grads):
                leaf.grad = g.detach()
            hessian = None
            if rule.curvature.due(t):
                count = rule.curvature.probes
                hz = [torch.zeros_like(p) for p in leaves]
                for i in range(count):
                    zs = [probes[n][i] for n in names]
                    hvs = torch.autograd.grad(grads, leaves, grad_outputs=zs, retain_graph=True)
                    hz = [a + hv * z / count for a, hv, z in zip(hz, hvs, zs)]
                hessian = [original_spatial_average(d) for d in hz]
            opt.step(hessian=hessian)
        else:  # the reference computes z * Hz itself, drawing the library's probes
            loss.backward(create_graph=True)
            queue = [probes[n][i] for i in range(rule.curvature.probes) for n in names]
            monkeypatch.setattr(torch, "randint_like", lambda p, low, high, q=queue: (q.pop(0) + 1) / 2)
            opt.step()
            monkeypatch.undo()
            assert not rule.curvature.due(t) or not queue, "the reference drew a different number of probes"
        for n, leaf in zip(names, leaves):
            torch.testing.assert_close(params[n], leaf.detach(), rtol=1e-10, atol=1e-13, msg=f"{n} step {t}")
            for ours, theirs in oracle.state_names.items():
                torch.testing.assert_close(state[ours][n], opt.state[leaf][theirs].detach(), rtol=1e-10, atol=1e-13,
                                           msg=f"state {ours} of {n} step {t}")


def test_spatial_average_is_the_original_for_2d_kernels() -> None:
    """The rule's averaging equals the original code's for a 4-D kernel, squared (what enters ``v``)."""
    from hpo.optimizers.adahessian import spatial_average

    d = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(spatial_average(d) ** 2, original_spatial_average(d) ** 2)
    w = torch.randn(4, 5, dtype=F64)
    torch.testing.assert_close(spatial_average(w) ** 2, original_spatial_average(w) ** 2)


@pytest.mark.parametrize("backend", ["forward-manual", "greedy", "reverse-truncated"])
def test_backends_that_cannot_differentiate_curvature_refuse_in_one_line(backend: str, tmp_path) -> None:
    """``hpo run --optimizer sophia --backend B``: one line naming the field, exit 2, before any work."""
    from click.testing import CliRunner

    from hpo.cli import cli

    result = CliRunner().invoke(cli, ["run", "--optimizer", "sophia", "--backend", backend,
                                      "--logdir", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "'--backend': optimizer 'sophia' uses a curvature estimate" in result.output


def test_rules_without_curvature_never_compute_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """sgd/adam/adamw take the plain path of train_step and forward mode: no probes, no estimate."""
    from hpo.backends import forward
    from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
    from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
    from hpo.checking.tiny import tiny_problem, tiny_schedule
    from hpo.core import step
    from hpo.core.backend import run_inner
    from hpo.optimizers import Adam, AdamW, SGDMomentum

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rule without curvature computed an estimate")

    for module in (step, forward):
        monkeypatch.setattr(module, "rademacher_probes", forbidden)
        monkeypatch.setattr(module, "gradient_and_curvature", forbidden)
    for rule in (SGDMomentum(), Adam(), AdamW()):
        problem = tiny_problem(rule, horizon=4)
        for backend in (ForwardManualBackend(), ForwardJvpBackend(), ReverseCheckpointedBackend()):
            assert not run_inner(backend, problem, tiny_schedule(rule, 4)).diverged
