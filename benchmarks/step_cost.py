"""Cost of one inner step, and peak memory against the horizon, for every hypergradient method.

Measures, on synthetic batches (CIFAR-, MNIST- or MNIST-1D-shaped) and a chosen model:

* ``sgd``: a plain training step of the same model, the fastest a user would write: the
  ``nn.Module`` itself, ``loss.backward()`` and ``torch.optim.SGD(..., foreach=True)`` on one fixed
  batch (:data:`PLAIN_STEP`); the yardstick, every other figure is also given as a multiple of it;
* ``forward-manual`` / ``forward-jvp``: one inner step with every tangent column started (the
  steady state of the last segment), for each ``--counts`` setting (lr,momentum,wd values), and
  with ``--compile inductor`` also with the step compiled (compilation happens in the warm-up);
* ``reverse-truncated``: (W graph-building steps + the reverse pass) / W, for each ``--windows`` W;
  included when a backend is registered under that name (or given by ``--reverse-truncated``
  as ``module:attr`` / ``file.py:attr``), skipped with a note otherwise;
* ``reverse-checkpointed``: a whole run of ``--checkpoint-horizon`` steps (the forward pass, then
  the recomputation and the reverse sweep) divided by its number of steps, eager and, with
  ``--compile``, compiled, for each ``--regimes`` entry (``run``: the whole run taped by the forward
  pass; ``sqrt``: a checkpoint every ``round(sqrt(T))`` steps, segments taped in the sweep;
  ``all``: every state stored, one vector-Jacobian product per step); a second table splits
  it into the forward pass and the sweep;
* peak memory and wall time of whole inner runs of ``--horizons`` steps (forward-manual,
  reverse-checkpointed, reverse-truncated with the largest window, and full reverse mode up to
  ``--full-reverse-max``);
* with ``--example-weights N``: reverse-checkpointed (and forward-jvp, when among ``--methods``) on
  a synthetic training set of N rows, without and with one loss weight per row (the built-in
  ``example_weight``, :func:`hpo.tasks.loss_hypers.with_loss_hypers`), and their ratio.  The loss
  is then :math:`\\frac1B \\sum_{i \\in b_t} w_i \\ell_i(\\theta_t)`; both settings draw the same
  minibatches from the same N rows.  forward-jvp carries one tangent column per weight (N + 9
  columns), so expect it to be slow and large: give it few ``--steps``.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the growth of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over the run.
Timings synchronise the device only around the timed loop.  Example (the GPU target setting)::

    python benchmarks/step_cost.py --model wrn16 --input cifar --batch-size 256 \\
        --counts 7,1,1 --counts 7,7,7 --windows 10,50 --horizons 100,1000,10000
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.checking.unroll import reverse_hypergradient
from hpo.core.backend import HypergradientBackend, run_inner
from hpo.core.data import TensorRows
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule, segment_starts
from hpo.optimizers.loss_hypers import WithLossHypers
from hpo.optimizers.sgd import SGDMomentum
from hpo.runtime.device import pick_device, pick_dtype, synchronize
from hpo.tasks.base import classification_task, cross_entropy, model_functions, split_state
from hpo.tasks.loss_hypers import with_loss_hypers
from hpo.tasks.mnist1d import CNN1D, MLP
from hpo.tasks.models import LeNet, wrn16_1, wrn40_2

INPUTS = {"cifar": (3, 32, 32), "mnist": (1, 28, 28), "mnist1d": (40,)}
MODELS: dict[str, Callable[[tuple[int, ...]], nn.Module]] = {
    "mlp": lambda s: MLP(in_features=math.prod(s)),
    "cnn": lambda s: CNN1D(length=math.prod(s)),
    "lenet": lambda s: LeNet(s[0], 10, s[-1]),
    "wrn16": lambda s: wrn16_1(s[0], 10),
    "wrn40": lambda s: wrn40_2(s[0], 10),
}
HYPER = {"lr": 0.05, "momentum": 0.9, "wd": 5e-4}
#: The timer (``--clock``): wall time, or this process's CPU time (steadier on a shared machine).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def clock() -> float:
    """Seconds on the chosen clock (:data:`CLOCKS`)."""
    return _clock[0]()


#: The yardstick's name in the tables.
PLAIN_STEP = "plain step (nn.Module, backward, torch.optim.SGD foreach)"
#: ``--regimes`` of reverse-checkpointed: (checkpoint interval for a horizon T, memory budget).  ``run``
#: tapes the whole run in the forward pass (no budget binds; nothing recomputed), ``sqrt`` tapes each
#: segment in the sweep (its graph fits the budget), ``sqrt-replay`` has no room for the tape and
#: recomputes each segment before its reverse steps, ``all`` stores every state.
REGIMES: dict[str, tuple[Callable[[int], int | None], int | None]] = {
    "run": (lambda T: None, None),
    "sqrt": (lambda T: max(1, round(math.sqrt(T))), None),
    "sqrt-replay": (lambda T: max(1, round(math.sqrt(T))), 1),
    "all": (lambda T: 1, None),
}


def _malloc_trim() -> None:
    """``malloc_trim(0)`` on glibc (a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory (MiB) allocated while the ``with`` block runs: CUDA allocator, or CPU peak RSS growth."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = float("nan")

    @staticmethod
    def _status(key: str) -> float:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]

    def __enter__(self) -> Self:
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                _malloc_trim()  # hand freed heap back, so RSS counts live memory only
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.base = self._status("VmRSS")
            except OSError:
                self.base = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        elif not math.isnan(self.base):
            self.mib = self._status("VmHWM") - self.base


def build(model: str, shape: tuple[int, ...], batch: int, dtype: torch.dtype, device: torch.device,
          pool: int = 1, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A seeded model and ``pool`` synthetic batches of ``batch`` inputs (standard normal) and labels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MODELS[model](shape)
    x = torch.randn(pool * batch, *shape, generator=gen).to(device, dtype)
    y = torch.randint(0, 10, (pool * batch,), generator=gen).to(device)
    return net.to(device, dtype), x, y


def problem_for(net: nn.Module, x: Tensor, y: Tensor, horizon: int, batch: int) -> InnerProblem:
    """An inner problem of ``horizon`` steps on the pool ``(x, y)``; validation is one batch of it."""
    task = classification_task("synthetic", x, y, x[:batch], y[:batch], lambda: net, batch_size=batch)
    loss_fn, eval_fn = model_functions(net, task)
    params, buffers = split_state(net)
    return InnerProblem(loss_fn, eval_fn, params, buffers, SGDMomentum(), TensorRows((x, y)),
                        TensorRows((x[:batch], y[:batch])), horizon=horizon, batch_size=batch, eval_batch_size=batch,
                        score_fn=task.score_fn(), model_loss=task.loss)


def schedule_for(counts: dict[str, int], dtype: torch.dtype, device: torch.device) -> Schedule:
    """Non-zero constant values (lr 0.05, momentum 0.9, wd 5e-4) with ``counts`` copies each."""
    return Schedule.constant(HYPER, counts).to(dtype, device)


def weighted_problem(net: nn.Module, x: Tensor, y: Tensor, horizon: int, batch: int, weights: bool) -> InnerProblem:
    """An inner problem of ``horizon`` steps on the pool ``(x, y)``, with one ``example_weight`` per row when ``weights``.

    Without weights it is :func:`problem_for`'s problem; with them, the loss is the task's weighted
    cross-entropy, the rule :class:`WithLossHypers` and each minibatch carries its rows (``example_ids``).
    """
    if not weights:
        return problem_for(net, x, y, horizon, batch)
    task = with_loss_hypers(classification_task("synthetic", x, y, x[:batch], y[:batch], lambda: net, batch_size=batch),
                            ("example_weight",))
    loss_fn, eval_fn = model_functions(net, task)
    params, buffers = split_state(net)
    rule = WithLossHypers(SGDMomentum(), task.hypers, task.hyper_groups())
    return InnerProblem(loss_fn, eval_fn, params, buffers, rule, TensorRows((x, y)), TensorRows((x[:batch], y[:batch])),
                        horizon=horizon, batch_size=batch, eval_batch_size=batch, score_fn=task.score_fn(),
                        model_loss=task.loss, example_ids=torch.arange(x.shape[0], device=x.device))


def weighted_schedule(counts: dict[str, int], rows: int, weights: bool, dtype: torch.dtype,
                      device: torch.device) -> Schedule:
    """:func:`schedule_for`'s values, plus ``example_weight`` 1 for each of ``rows`` rows when ``weights``."""
    sched = Schedule.constant(HYPER, counts)
    if weights:
        sched = Schedule({**sched.values, "example_weight": torch.ones(rows, 1, dtype=torch.float64)})
    return sched.to(dtype, device)


def time_weighted(make: Callable[[], HypergradientBackend], net: nn.Module, x: Tensor, y: Tensor, batch: int,
                  counts: dict[str, int], horizon: int, weights: bool, repeats: int = 1) -> tuple[float, float]:
    """ms per inner step of a whole run of ``horizon`` steps plus its hypergradient (fastest of ``repeats``),
    on the pool ``(x, y)`` with or without per-example weights; and the peak memory (MiB) of the first run.

    A run of 4 steps warms up first.
    """
    sched = weighted_schedule(counts, x.shape[0], weights, x.dtype, x.device)

    def run(steps: int) -> float:
        backend = make()
        problem = weighted_problem(net, x, y, steps, batch, weights)
        state = backend.init(problem, sched)
        start = clock()
        for t, b in problem.batches():
            state = backend.step(problem, sched, state, t, b)
        backend.hypergradient(problem, sched, state)
        synchronize(x.device)
        return clock() - start

    run(max(4, max(counts.values())))
    with PeakMemory(x.device) as mem:
        best = run(horizon)
    for _ in range(repeats - 1):
        best = min(best, run(horizon))
    return best * 1000 / horizon, mem.mib


def example_weight_table(rows: int, model: str, shape: tuple[int, ...], batch: int, counts: dict[str, int],
                         methods: list[str], horizon: int, jvp_steps: int, repeats: int, dtype: torch.dtype,
                         device: torch.device) -> list[dict[str, Any]]:
    """Print and return ms per inner step without and with ``rows`` per-example weights (:func:`time_weighted`).

    reverse-checkpointed runs ``horizon`` steps (a checkpoint every ``round(sqrt(horizon))``);
    forward-jvp (if in ``methods``) ``jvp_steps`` steps, its hypergradient read at the end.
    """
    from hpo.backends.forward import ForwardJvpBackend
    from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend

    net, x, y = build(model, shape, batch, dtype, device, pool=math.ceil(rows / batch))
    x, y = x[:rows], y[:rows]
    label = "/".join(str(counts[k]) for k in ("lr", "momentum", "wd"))
    every = REGIMES["sqrt"][0](horizon)
    runs: list[tuple[str, Callable[[], HypergradientBackend], int]] = []
    if "reverse-checkpointed" in methods:
        runs.append((f"reverse-checkpointed sqrt (k={every}, T={horizon})",
                     lambda: ReverseCheckpointedBackend(every=every), horizon))
    if "forward-jvp" in methods:
        runs.append((f"forward-jvp (T={jvp_steps})", ForwardJvpBackend, jvp_steps))
    print(f"\n## per-example weights: {rows} training rows, model={model} batch={batch}, shared values {label}\n")
    print(f"| method | ms per inner step, no weights | with {rows} weights | ratio | peak MiB, no weights | "
          f"with weights |")
    print("|---|---|---|---|---|---|")
    out = []
    for name, make, steps in runs:
        plain, plain_mib = time_weighted(make, net, x, y, batch, counts, steps, False, repeats)
        weighted, weighted_mib = time_weighted(make, net, x, y, batch, counts, steps, True, repeats)
        print(f"| {name} | {plain:.2f} | {weighted:.2f} | {weighted / plain:.2f} | {plain_mib:.1f} | "
              f"{weighted_mib:.1f} |", flush=True)
        out.append({"method": name, "rows": rows, "ms": plain, "ms_weighted": weighted, "ratio": weighted / plain,
                    "peak_mib": plain_mib, "peak_mib_weighted": weighted_mib})
    return out


def time_sgd(net: nn.Module, x: Tensor, y: Tensor, steps: int, warmup: int, repeats: int = 1) -> tuple[float, float]:
    """ms per plain step (:data:`PLAIN_STEP`: forward, backward, foreach update) and its peak memory.

    With ``repeats``, the fastest of that many timed loops of ``steps`` steps.
    """
    opt = torch.optim.SGD(net.parameters(), lr=HYPER["lr"], momentum=HYPER["momentum"], weight_decay=HYPER["wd"],
                          foreach=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    with PeakMemory(x.device) as mem:
        start = clock()
        for _ in range(steps):
            step()
        synchronize(x.device)
        ms = (clock() - start) * 1000 / steps
    for _ in range(repeats - 1):
        start = clock()
        for _ in range(steps):
            step()
        synchronize(x.device)
        ms = min(ms, (clock() - start) * 1000 / steps)
    return ms, mem.mib


def time_forward(backend: HypergradientBackend, net: nn.Module, x: Tensor, y: Tensor, counts: dict[str, int],
                 steps: int, warmup: int) -> tuple[float, float]:
    """ms per forward-mode step with every column started (the last segment), and its peak memory."""
    n_max = max(counts.values())
    horizon = n_max * (warmup + steps)
    t0 = max(segment_starts(horizon, n)[-1] for n in counts.values())
    problem = problem_for(net, x, y, horizon, x.shape[0])
    sched = schedule_for(counts, x.dtype, x.device)
    state = backend.init(problem, sched)
    for t in range(t0, t0 + warmup):
        state = backend.step(problem, sched, state, t, (x, y))
    with PeakMemory(x.device) as mem:
        start = clock()
        for t in range(t0 + warmup, t0 + warmup + steps):
            state = backend.step(problem, sched, state, t, (x, y))
        synchronize(x.device)
        ms = (clock() - start) * 1000 / steps
    return ms, mem.mib


def time_truncated(make: Callable[..., HypergradientBackend], window: int, net: nn.Module, x: Tensor, y: Tensor,
                   counts: dict[str, int]) -> tuple[float, float]:
    """(``window`` taped steps + reverse pass) / ``window`` in ms, and the peak memory of the run."""
    sched = schedule_for(counts, x.dtype, x.device)

    def run(w: int) -> None:
        backend = make(window=w)
        problem = problem_for(net, x, y, max(w, max(counts.values())), x.shape[0])
        state = backend.init(problem, sched)
        for t in range(problem.horizon):
            state = backend.step(problem, sched, state, t, (x, y))
        backend.hypergradient(problem, sched, state)

    run(2)  # warm-up
    with PeakMemory(x.device) as mem:
        start = clock()
        run(window)
        synchronize(x.device)
        ms = (clock() - start) * 1000 / window
    return ms, mem.mib


def time_checkpointed(make: Callable[[], HypergradientBackend], net: nn.Module, x: Tensor, y: Tensor,
                      counts: dict[str, int], horizon: int, repeats: int = 1) -> tuple[float, float, float, float]:
    """A whole reverse-checkpointed run of ``horizon`` steps per inner step, in ms: total, forward pass, sweep.

    The sweep is the recomputation of every segment plus the reverse steps.  A shorter run first
    warms up (and compiles).  With ``repeats`` the fastest of that many runs (by total).  Also
    returns the peak memory (MiB) of the first.
    """
    sched = schedule_for(counts, x.dtype, x.device)

    def run(steps: int) -> tuple[float, float]:
        backend = make()
        problem = problem_for(net, x, y, steps, x.shape[0])
        state = backend.init(problem, sched)
        start = clock()
        for t, batch in problem.batches():
            state = backend.step(problem, sched, state, t, batch)
        synchronize(x.device)
        mid = clock()
        backend.hypergradient(problem, sched, state)
        synchronize(x.device)
        return mid - start, clock() - mid

    run(max(4, max(counts.values())))
    with PeakMemory(x.device) as mem:
        fwd, rev = run(horizon)
    for _ in range(repeats - 1):
        f, r = run(horizon)
        if f + r < fwd + rev:
            fwd, rev = f, r
    return (fwd + rev) * 1000 / horizon, fwd * 1000 / horizon, rev * 1000 / horizon, mem.mib


def whole_run(method: str, make: Callable[[], HypergradientBackend] | None, net: nn.Module, x: Tensor, y: Tensor,
              batch: int, horizon: int, counts: dict[str, int]) -> tuple[float, float]:
    """Seconds and peak memory (MiB) of a whole inner run of ``horizon`` steps plus its hypergradient."""
    problem = problem_for(net, x, y, horizon, batch)
    sched = schedule_for(counts, x.dtype, x.device)
    with PeakMemory(x.device) as mem:
        start = clock()
        if method == "reverse-full":
            reverse_hypergradient(problem, sched.values)
        else:
            assert make is not None
            run_inner(make(), problem, sched, check_every=max(1, horizon))
        synchronize(x.device)
        secs = clock() - start
    return secs, mem.mib


def find_truncated(spec: str) -> Callable[..., HypergradientBackend] | None:
    """The reverse-truncated backend class by registered name or ``module:attr``; None (with a note) if absent."""
    from hpo.app.registry import BUILTIN_BACKENDS, load_object

    try:
        obj = BUILTIN_BACKENDS.get(spec) if ":" not in spec else load_object(spec)
    except ValueError as e:
        print(f"note: reverse-truncated skipped ({e})")
        return None
    if obj is None:
        print(f"note: reverse-truncated skipped (no backend registered as {spec!r}; "
              f"pass --reverse-truncated module:attr or path/to/file.py:attr)")
    return obj


def parse_counts(text: str) -> dict[str, int]:
    """``7,1,1`` -> ``{"lr": 7, "momentum": 1, "wd": 1}``."""
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--counts takes lr,momentum,wd counts such as 7,1,1, got {text!r}")
    return dict(zip(("lr", "momentum", "wd"), parts))


def ints(text: str) -> list[int]:
    """``10,100`` -> ``[10, 100]`` (empty text -> ``[]``)."""
    return [int(p) for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every measurement, print Markdown tables; returns the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="wrn16")
    ap.add_argument("--input", choices=sorted(INPUTS), default="cifar", help="Shape of the synthetic batches.")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--counts", type=parse_counts, action="append", help="lr,momentum,wd shared values (repeatable).")
    ap.add_argument("--methods", default="sgd,forward-manual,forward-jvp,reverse-truncated,reverse-checkpointed")
    ap.add_argument("--windows", type=ints, default=[10, 50], help="reverse-truncated windows, e.g. 10,50.")
    ap.add_argument("--steps", type=int, default=20, help="Timed steps per measurement.")
    ap.add_argument("--checkpoint-horizon", type=int, default=100,
                    help="Steps of the timed reverse-checkpointed run (its interval is round(sqrt) of it).")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--regimes", type=lambda s: [r for r in s.split(",") if r], default=["run", "sqrt", "all"],
                    help="reverse-checkpointed regimes: run (the whole run taped in the forward pass, nothing "
                         "recomputed), sqrt (k = round(sqrt(T)), segments taped), sqrt-replay "
                         "(the same, segments recomputed), all (k = 1).")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or the process's CPU time (one thread: steadier when others share the machine).")
    ap.add_argument("--repeats", type=int, default=1,
                    help="Time the plain step and each reverse-checkpointed run this often; keep the fastest.")
    ap.add_argument("--horizons", type=ints, default=[100, 1000, 10000], help="Horizons of the memory sweep ('' skips).")
    ap.add_argument("--horizon-model", choices=sorted(MODELS), default=None, help="Model of the sweep (default --model).")
    ap.add_argument("--horizon-input", choices=sorted(INPUTS), default=None)
    ap.add_argument("--horizon-batch-size", type=int, default=None)
    ap.add_argument("--full-reverse-max", type=int, default=1000, help="Largest horizon run with full reverse mode.")
    ap.add_argument("--reverse-truncated", default="reverse-truncated", help="Registered name or module:attr / file.py:attr.")
    ap.add_argument("--compile", default=None, help="Also time the forward backends with torch.compile(backend=...), e.g. inductor.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--example-weights", type=int, default=0, metavar="N",
                    help="Also time reverse-checkpointed (and forward-jvp, if in --methods) on an N-row training set "
                         "without and with one loss weight per row (e.g. 5000).")
    ap.add_argument("--only-example-weights", action="store_true",
                    help="Skip every other measurement (with --example-weights).")
    ap.add_argument("--jvp-steps", type=int, default=5,
                    help="Steps of the forward-jvp run of --example-weights (one tangent column per weight).")
    a = ap.parse_args(argv)
    device, dtype = pick_device(a.device), pick_dtype(a.dtype)
    _clock[0] = CLOCKS[a.clock]
    if a.threads:
        torch.set_num_threads(a.threads)
    counts_list = a.counts or [parse_counts("7,1,1"), parse_counts("7,7,7")]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for regime in a.regimes:
        if regime not in REGIMES:
            ap.error(f"--regimes: unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    shape = INPUTS[a.input]
    truncated = find_truncated(a.reverse_truncated) if ("reverse-truncated" in methods or a.horizons) else None
    from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
    from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend

    forward = {"forward-manual": ForwardManualBackend, "forward-jvp": ForwardJvpBackend}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# step cost: model={a.model} input={a.input}{shape} batch={a.batch_size} device={dev_name} "
          f"dtype={a.dtype} torch={torch.__version__} clock={a.clock}")
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}, "device": dev_name, "steps": [], "horizons": []}

    net, x, y = build(a.model, shape, a.batch_size, dtype, device)
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,}")
    if a.example_weights:
        out["example_weights"] = example_weight_table(a.example_weights, a.model, shape, a.batch_size, counts_list[0],
                                                      methods, a.checkpoint_horizon, a.jvp_steps, a.repeats, dtype,
                                                      device)
        if a.only_example_weights:
            if a.json:
                a.json.write_text(json.dumps(out, indent=2) + "\n")
            return out
    print()
    print("| method | shared values (lr/mom/wd) | ms per inner step | x plain step | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    sgd_ms = float("nan")
    if "sgd" in methods:
        sgd_ms, mib = time_sgd(build(a.model, shape, a.batch_size, dtype, device)[0], x, y, a.steps, a.warmup,
                               a.repeats)
        print(f"| {PLAIN_STEP} | - | {sgd_ms:.2f} | 1.0 | {mib:.1f} |", flush=True)
        out["steps"].append({"method": "sgd", "ms": sgd_ms, "peak_mib": mib})
    for counts in counts_list:
        label = "/".join(str(counts[k]) for k in ("lr", "momentum", "wd"))
        for name, cls in forward.items():
            for comp in (None, a.compile) if a.compile else (None,):
                if name not in methods:
                    continue
                row = name if comp is None else f"{name} (compiled, {comp})"
                ms, mib = time_forward(cls() if comp is None else cls(compile=comp), net, x, y, counts, a.steps, a.warmup)
                print(f"| {row} | {label} | {ms:.2f} | {ms / sgd_ms:.1f} | {mib:.1f} |", flush=True)
                out["steps"].append({"method": row, "counts": label, "ms": ms, "ratio": ms / sgd_ms, "peak_mib": mib})
        if "reverse-checkpointed" in methods:
            for comp, regime in [(c, r) for c in ((None, a.compile) if a.compile else (None,)) for r in a.regimes]:
                every, budget = REGIMES[regime][0](a.checkpoint_horizon), REGIMES[regime][1]
                k = a.checkpoint_horizon if every is None else every
                row = f"reverse-checkpointed {regime} (k={k})" + ("" if comp is None else f" (compiled, {comp})")
                ms, fwd, rev, mib = time_checkpointed(
                    lambda comp=comp, every=every, budget=budget: ReverseCheckpointedBackend(
                        every=every, compile=comp, **({} if budget is None else {"memory_budget": budget})),
                    net, x, y, counts, a.checkpoint_horizon, a.repeats)
                print(f"| {row} | {label} | {ms:.2f} | {ms / sgd_ms:.1f} | {mib:.1f} |", flush=True)
                out["steps"].append({"method": row, "counts": label, "ms": ms, "ratio": ms / sgd_ms, "peak_mib": mib,
                                     "forward_ms": fwd, "sweep_ms": rev, "horizon": a.checkpoint_horizon})
        if "reverse-truncated" in methods and truncated is not None:
            for w in a.windows:
                ms, mib = time_truncated(truncated, w, net, x, y, counts)
                print(f"| reverse-truncated W={w} | {label} | {ms:.2f} | {ms / sgd_ms:.1f} | {mib:.1f} |", flush=True)
                out["steps"].append({"method": f"reverse-truncated W={w}", "counts": label, "ms": ms,
                                     "ratio": ms / sgd_ms, "peak_mib": mib})

    split = [r for r in out["steps"] if "sweep_ms" in r]
    if split:
        print(f"\n## reverse-checkpointed split: T={a.checkpoint_horizon}, ms per inner step (x plain step)\n")
        print("| method | shared values (lr/mom/wd) | forward pass | recompute + reverse sweep | whole run |")
        print("|---|---|---|---|---|")
        for r in split:
            print(f"| {r['method']} | {r['counts']} | {r['forward_ms']:.2f} ({r['forward_ms'] / sgd_ms:.1f}) | "
                  f"{r['sweep_ms']:.2f} ({r['sweep_ms'] / sgd_ms:.1f}) | {r['ms']:.2f} ({r['ratio']:.1f}) |")

    if a.horizons:
        hm, hi = a.horizon_model or a.model, a.horizon_input or a.input
        hb = a.horizon_batch_size or a.batch_size
        counts = counts_list[0]
        label = "/".join(str(counts[k]) for k in ("lr", "momentum", "wd"))
        print(f"\n## peak memory against horizon: model={hm} input={hi} batch={hb} shared values {label}\n")
        print("| method | horizon | seconds | peak memory (MiB) |")
        print("|---|---|---|---|")
        hnet, hx, hy = build(hm, INPUTS[hi], hb, dtype, device, pool=4)
        sweep: list[tuple[str, Callable[[], HypergradientBackend] | None, int]] = [
            ("forward-manual", ForwardManualBackend, 0), ("reverse-checkpointed", ReverseCheckpointedBackend, 0)]
        if truncated is not None and a.windows:
            w = max(a.windows)
            sweep.append((f"reverse-truncated W={w}", lambda w=w: truncated(window=w), 0))
        sweep.append(("reverse-full", None, a.full_reverse_max))
        whole_run("forward-manual", ForwardManualBackend, hnet, hx, hy, hb, 10, counts)  # warm-up
        for name, make, cap in sweep:
            for horizon in a.horizons:
                if cap and horizon > cap:
                    print(f"| {name} | {horizon} | skipped (> --full-reverse-max {cap}) | - |", flush=True)
                    continue
                secs, mib = whole_run(name, make, hnet, hx, hy, hb, horizon, counts)
                print(f"| {name} | {horizon} | {secs:.1f} | {mib:.1f} |", flush=True)
                out["horizons"].append({"method": name, "horizon": horizon, "seconds": secs, "peak_mib": mib})
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    main()
