"""Data-parallel hypergradients: N = 2 gloo ranks equal one process on the concatenated batch.

Two processes are spawned once per module (``torch.multiprocessing``, a file store); each runs
every case and saves its weights and hypergradients; the tests compare them in float64 with the
single-process hypergradient on the whole minibatch (relative error 1e-10) and across ranks (bit
for bit).  BatchNorm: each rank normalises with its own shard's statistics (as DDP), and the
running statistics are averaged over ranks; the single-process reference is then a "ghost batch"
loss that normalises each half of the minibatch separately and averages the running statistics.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpo.backends.columns import ColumnLayout
from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.checking.tiny import tiny_schedule
from hpo.core.backend import HypergradientBackend
from hpo.core.grouping import grouped_rule
from hpo.core.problem import Buffers, InnerProblem, LossFn
from hpo.optimizers.adam import Adam
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.grouped import group_counts
from hpo.optimizers.sgd import SGDMomentum
from hpo.runtime.distributed import Communicator, end_process
from tests.conftest import max_rel_err, tiny_task_problem

WORLD = 2
HORIZON = 9
BACKENDS = ("forward-manual", "forward-jvp", "reverse-checkpointed")
RULES = ("sgd", "adam")
#: (case name, backend, rule, batchnorm, grad_clip, per-group schedule, loss hyperparameters)
CASES = [(f"{b}/{r}", b, r, False, None, False, False) for b in BACKENDS for r in RULES] + [
    (f"{b}/sgd/batchnorm", b, "sgd", True, None, False, False) for b in ("forward-jvp", "reverse-checkpointed")] + [
    ("reverse-checkpointed/sgd/clip", "reverse-checkpointed", "sgd", False, 0.05, False, False),
    ("forward-jvp/sgd/clip", "forward-jvp", "sgd", False, 0.05, False, False)] + [
    (f"{b}/sgd/groups", b, "sgd", False, None, True, False) for b in BACKENDS] + [
    (f"{b}/sgd/loss", b, "sgd", False, None, False, True) for b in ("forward-jvp", "reverse-checkpointed")]
#: The loss-hyperparameter case: a weight per training example (each rank picks its shard's) and label smoothing.
LOSS_HYPERS = ("example_weight", "label_smoothing")
#: The per-group case: a learning rate per layer, weight decay for biases apart from the rest.
GROUPS = {"lr": "layer", "wd": "bias-vs-rest"}


def make_backend(name: str) -> HypergradientBackend[Any]:
    """A fresh backend by name (reverse mode with three checkpoint segments)."""
    if name == "reverse-checkpointed":
        return ReverseCheckpointedBackend(every=4)
    return {"forward-manual": ForwardManualBackend, "forward-jvp": ForwardJvpBackend}[name]()


def make_rule(name: str) -> UpdateRule:
    """SGD-momentum or Adam."""
    return {"sgd": SGDMomentum(), "adam": Adam()}[name]


def problem_for(rule: str, batchnorm: bool, grad_clip: float | None, comm: Communicator | None,
                loss: bool = False) -> InnerProblem:
    """The float64 tiny-task problem (batch 8) with ``rule``, on ``comm``'s shards if given."""
    if loss:  # SGD with the loss's values
        return dataclasses.replace(tiny_task_problem(horizon=HORIZON, loss_hypers=LOSS_HYPERS), comm=comm)
    base = tiny_task_problem(horizon=HORIZON, batchnorm=batchnorm, grad_clip=grad_clip)
    return dataclasses.replace(base, rule=make_rule(rule), comm=comm)


def ghost_batch(loss_fn: LossFn, parts: int) -> LossFn:
    """The loss of ``parts`` equal slices of the minibatch, each normalised on its own, averaged;
    the new buffers are the average of the slices' buffers (what N ranks compute together)."""
    def loss(params: dict[str, torch.Tensor], buffers: Buffers, batch: tuple[torch.Tensor, torch.Tensor],
             hyper: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, Buffers]:
        x, y = batch
        per = x.shape[0] // parts
        outs = [loss_fn(params, buffers, (x[i * per:(i + 1) * per], y[i * per:(i + 1) * per]), hyper)
                for i in range(parts)]
        total = sum(o[0] for o in outs) / parts
        new = {n: (sum(o[1][n] for o in outs) / parts if v.is_floating_point() else outs[0][1][n])
               for n, v in buffers.items()}
        return total, new
    return loss


def run_case(backend_name: str, rule: str, batchnorm: bool, grad_clip: float | None,
             comm: Communicator | None, ghost: bool = False, groups: bool = False, loss: bool = False) -> dict[str, Any]:
    """Weights, buffers and hypergradient after ``HORIZON`` steps of one case."""
    problem = problem_for(rule, batchnorm, grad_clip, comm, loss)
    if ghost:
        problem = dataclasses.replace(problem, loss_fn=ghost_batch(problem.loss_fn, WORLD))
    schedule = tiny_schedule(problem.rule, HORIZON)
    if groups:  # two layers, biases apart: a (2, segments) table per grouped type, rows made distinct
        problem = dataclasses.replace(problem, rule=grouped_rule(problem.rule, GROUPS, problem.params))
        wide = schedule.broadcast_groups({"lr": 2, "wd": 2})
        schedule = dataclasses.replace(wide, values={**wide.values, "lr": wide.values["lr"] * torch.tensor(
            [[1.0], [0.6]], dtype=torch.float64), "wd": wide.values["wd"] * torch.tensor([[1.0], [3.0]],
                                                                                          dtype=torch.float64)})
    if loss:  # a distinct weight per example (each rank must pick its own rows' weights)
        wide = schedule.broadcast_groups(group_counts(problem.rule))
        weights = torch.linspace(0.3, 1.0, 32, dtype=torch.float64).unsqueeze(1)
        schedule = dataclasses.replace(wide, values={**wide.values, "example_weight": weights})
    backend = make_backend(backend_name)
    state = backend.init(problem, schedule)
    for t, batch in problem.batches():
        state = backend.step(problem, schedule, state, t, batch)
    inner = backend.inner(state)
    result = backend.hypergradient(problem, schedule, state)
    return {"params": inner.params, "buffers": inner.buffers, "hypergrad": result.hypergrad,
            "loss": inner.loss, "val_loss": result.val_loss}


def worker(rank: int, store: str, out: str) -> None:
    """One rank: join the group through a file store, run every case, save the results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        comm = Communicator(rank, WORLD)
        results = {name: run_case(b, r, bn, clip, comm, groups=g, loss=lh) for name, b, r, bn, clip, g, lh in CASES}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    end_process(0)  # gloo can abort the interpreter's shutdown after torch.func (hpo.runtime.distributed.end_process)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every case's results on rank 0 and rank 1 of a 2-process gloo group."""
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(worker, args=(str(out / "store"), str(out)), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks: list[dict[str, Any]], case: str) -> None:
    _, backend, rule, batchnorm, clip, groups, loss = next(c for c in CASES if c[0] == case)
    single = run_case(backend, rule, batchnorm, clip, None, ghost=batchnorm, groups=groups, loss=loss)
    got = ranks[0][case]
    assert max_rel_err(got["hypergrad"], single["hypergrad"]) < 1e-10
    assert max_rel_err(got["params"], single["params"]) < 1e-10
    assert abs(float(got["loss"]) - float(single["loss"])) < 1e-10 * abs(float(single["loss"]))
    assert any(float(v.abs().max()) > 1e-6 for v in got["hypergrad"].values())  # not a trivially zero case


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_every_rank_ends_identical(ranks: list[dict[str, Any]], case: str) -> None:
    a, b = ranks[0][case], ranks[1][case]
    for key in ("params", "buffers", "hypergrad"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_batchnorm_uses_each_ranks_own_statistics(ranks: list[dict[str, Any]]) -> None:
    """The chosen semantics differ from normalising the whole batch: the test above is not vacuous."""
    whole = run_case("reverse-checkpointed", "sgd", True, None, None, ghost=False)
    got = ranks[0]["reverse-checkpointed/sgd/batchnorm"]
    assert max_rel_err(got["hypergrad"], whole["hypergrad"]) > 1e-6
    running = [n for n in got["buffers"] if n.endswith("running_mean")]
    assert running and not torch.equal(got["buffers"][running[0]], whole["buffers"][running[0]])


def test_a_shard_is_a_contiguous_slice_per_rank() -> None:
    x = torch.arange(8)
    assert Communicator(0, 2).shard(x).tolist() == [0, 1, 2, 3]
    assert Communicator(1, 2).shard(x).tolist() == [4, 5, 6, 7]
    assert Communicator(2, 4).shard(x).tolist() == [4, 5]


def test_one_process_never_creates_a_process_group() -> None:
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    run_case("forward-jvp", "sgd", False, None, None)
    assert not dist.is_initialized()


@pytest.fixture
def group_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A gloo group of one process (this one) whose ``all_reduce`` calls are counted."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    calls: list[int] = []
    real = dist.all_reduce

    def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counted)
    yield Communicator(0, 1), calls
    dist.destroy_process_group()


def test_forward_mode_sends_one_flat_buffer_per_step(group_of_one: Any) -> None:
    comm, calls = group_of_one
    problem = problem_for("sgd", False, None, comm)
    schedule = tiny_schedule(problem.rule, HORIZON)
    run_case("forward-manual", "sgd", False, None, comm)
    n_params = sum(p.numel() for p in problem.params.values())
    assert len(calls) == HORIZON  # one all_reduce per inner step, not one per tensor
    started = [sum(1 for s in ColumnLayout.build(schedule.counts, HORIZON).starts if s <= t) for t in range(HORIZON)]
    assert calls == [n_params * (1 + k) + 1 for k in started]  # gradient, k columns, the loss


def test_reverse_mode_sends_the_gradient_and_one_vector_hessian_product(group_of_one: Any) -> None:
    comm, calls = group_of_one
    run_case("reverse-checkpointed", "sgd", False, None, comm)
    n_params = sum(p.numel() for p in problem_for("sgd", False, None, None).params.values())
    segments = -(-HORIZON // 4)  # every = 4
    replayed = HORIZON - segments  # the last step of each segment is not recomputed
    assert len(calls) == HORIZON + replayed + 2 * HORIZON
    assert sorted(set(calls)) == [n_params, n_params + 1]  # plain steps also send the loss


def test_a_run_not_launched_by_torchrun_never_joins_a_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo import RunConfig, run

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("init_process_group called in a one-process run")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1 sets this: still one process
    result = run(RunConfig(outer_steps=1, inner_steps=(8,), samples=300, retrain_steps=6, logdir=str(tmp_path / "r")))
    assert result.learned is not None and (tmp_path / "r" / "schedule.json").exists()


def test_launch_environment_is_read_and_checked() -> None:
    from hpo.errors import ConfigError
    from hpo.runtime.distributed import launched_world_size, timeout_seconds

    assert launched_world_size({}) == 1 and launched_world_size({"WORLD_SIZE": "4"}) == 4
    assert timeout_seconds({}) == 120.0 and timeout_seconds({"HPO_DIST_TIMEOUT": "7.5"}) == 7.5
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not a whole number"):
        launched_world_size({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="HPO_DIST_TIMEOUT must be positive, got 0"):
        timeout_seconds({"HPO_DIST_TIMEOUT": "0"})


@pytest.mark.parametrize(("code", "status", "err"), [(None, 0, ""), (2, 2, ""), ("bad launch", 1, "bad launch\n")])
def test_end_process_flushes_and_exits_with_the_status(code: object, status: int, err: str) -> None:
    import subprocess
    import sys

    script = f"from hpo.runtime.distributed import end_process\nprint('written', end='')\nend_process({code!r})\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (status, "written", err)


def test_compare_refuses_a_torchrun_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.app.compare import compare
    from hpo.app.compare_config import CompareConfig
    from hpo.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="hpo compare runs in one process and spreads its pairs with jobs"):
        compare(CompareConfig(methods=("hand-picked",), samples=300, inner_steps=10, budget=(10,), seeds=(0,)))
