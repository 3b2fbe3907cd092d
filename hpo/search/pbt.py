"""Population Based Training (Jaderberg et al., 2017) with Ray Tune's ``PopulationBasedTraining``.

A population of ``P`` members trains the task's network for the horizon ``T`` with the rule's
``torch.optim`` counterpart (SGD-momentum for ``sgd``).  The horizon is cut into ``n``
perturbation intervals, the segments of a schedule with ``n`` shared values: interval ``j`` holds
steps :math:`\\lceil jT/n \\rceil \\le t < \\lceil (j+1)T/n \\rceil`.  After each interval every
member reports its validation accuracy with a checkpoint (weights, optimizer state, interval,
and the hyperparameters its weights were trained with so far); Ray's synchronous PBT then lets
the bottom quarter copy a top-quarter member's checkpoint (exploit) and perturb its values by
0.8x or 1.2x or resample them (explore), clamped into the search range.

Because a checkpoint carries its own hyperparameter trajectory, an exploiting member inherits its
donor's history with its weights: the trajectory of the best final member is the schedule its
weights were trained with, and :func:`replay_schedule` turns it into a piecewise-constant
:class:`~hpo.core.schedule.Schedule` with ``n`` values per type, which replays exactly that sequence
from scratch.  Ray and its workers are started here, only while a run lasts (CPU, ``num_cpus=1``:
the members take turns, one thread each, like every other method), and shut down after it.

``pbt``: Ray Tune's Population Based Training over the rule's hyperparameters; its best member's schedule replayed.

The budget of ``B`` inner steps buys a population of ``B // T`` members (or ``population``, at
most that), each training once over the horizon ``T``, so the population spends at most ``B``
steps; ``settings.seconds`` stops it early.  The members' values are perturbed every ``T /
intervals`` steps (:mod:`hpo.search.pbt`).  After each interval the incumbent is the best member's
hyperparameter trajectory so far (its last values held to the end) as a piecewise-constant
schedule with ``intervals`` values per type, which ``hpo compare`` retrains from scratch with the
ordinary retrain, like any learned schedule.  Needs the ``baselines`` extra
(``pip install -e '.[baselines]'``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, final

import torch

from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule, segment_starts
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.loss_hypers import rule_of
from hpo.runtime.extras import require
from hpo.search.base import Incumbent, SearchMethod, SearchSettings
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.search.space import SearchSpace
from hpo.tasks.base import Task, init_model, split_state, stateful_loss

#: The file in each member's checkpoint directory.
STATE_FILE = "member.pt"


Trajectory = list[dict[str, float]]


@final
@dataclass(frozen=True)
class Report:
    """One member's report after perturbation interval ``interval`` (1-based): its score and trajectory so far.

    ``wall`` is the time of the report (``time.time()``, the same clock in every process) and
    ``cpu`` the CPU seconds the member's process spent on the interval (training and evaluation).
    """

    member: str
    interval: int
    val_acc: float
    val_loss: float
    trajectory: tuple[tuple[tuple[str, float], ...], ...]
    wall: float = 0.0
    cpu: float = 0.0

    def score(self) -> tuple[float, float]:
        """Sort key, larger is better: validation accuracy, then lower loss."""
        return (self.val_acc, -self.val_loss)

    def values(self) -> Trajectory:
        """The trajectory as one ``{name: value}`` per interval."""
        return [dict(step) for step in self.trajectory]


def interval_bounds(horizon: int, intervals: int) -> list[int]:
    """``[s_0, ..., s_n]``: interval ``j`` holds steps ``s_j <= t < s_{j+1}`` (the schedule's segments)."""
    return [*segment_starts(horizon, intervals), horizon]


def replay_schedule(trajectory: Sequence[Mapping[str, float]], names: Sequence[str], intervals: int) -> Schedule:
    """The piecewise-constant schedule with ``intervals`` values per type: value ``j`` is the trajectory's ``j``-th.

    A trajectory shorter than ``intervals`` (a run stopped by its time budget) holds its last values
    to the end.
    """
    if not trajectory:
        raise ValueError("an empty trajectory has no schedule")
    full = [trajectory[min(j, len(trajectory) - 1)] for j in range(intervals)]
    return Schedule({n: torch.tensor([float(v[n]) for v in full], dtype=torch.float64) for n in names})


def report_of(member: str, result: Mapping[str, Any]) -> Report:
    """The :class:`Report` in a result that :func:`train_member` reported."""
    steps = tuple(tuple(sorted((str(k), float(v)) for k, v in h.items())) for h in json.loads(result["trajectory"]))
    return Report(member, int(result["interval"]), float(result["val_acc"]), float(result["val_loss"]), steps,
                  float(result["wall"]), float(result["cpu"]))


def train_member(config: dict[str, Any], task: Task, rule: UpdateRule, fds: FDSConfig, intervals: int) -> None:
    """A Ray Tune function trainable: one member, from its checkpoint (if any) to the end of the horizon.

    Every member trains the inner problem of outer step 0 (same initialisation, batches and
    validation split), so members differ only in their hyperparameters.
    """
    from ray import tune

    torch.set_num_threads(1)
    problem = make_problem(task, rule, fds, 0)
    model = init_model(task, problem.seed, fds.dtype, fds.device)
    hyper = {n: float(config[n]) for n in rule.hyper_names}
    base = rule_of(rule)  # the optimizer's own values; the loss's (one shared value per kind) go to the loss
    opt_hyper = {n: hyper[n] for n in base.hyper_names}
    opt = base.torch_optimizer(model.parameters(), opt_hyper)
    assert opt is not None, f"optimizer {rule.name!r} has no torch.optim counterpart"
    start, trajectory = 0, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, map_location=fds.device)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start, trajectory = int(saved["interval"]), json.loads(saved["trajectory"])
    for group in opt.param_groups:  # this member's (possibly just perturbed) values, not the donor's
        group.update(base.torch_group(opt_hyper))
    bounds = interval_bounds(problem.horizon, intervals)
    for j in range(start, intervals):
        cpu0 = time.process_time()
        trajectory.append(hyper)
        diverged = train_interval(model, opt, problem, range(bounds[j], bounds[j + 1]), stateful_loss(task, hyper))
        params, buffers = split_state(model)
        with torch.no_grad():
            vloss, vacc = problem.evaluate(params, buffers)
        vloss, vacc = float(vloss), float(vacc)
        if diverged or not math.isfinite(vloss):
            vloss, vacc = math.inf, 0.0
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "interval": j + 1,
                        "trajectory": json.dumps(trajectory)}, Path(d) / STATE_FILE)
            tune.report({"val_acc": vacc, "val_loss": vloss, "interval": j + 1, "trajectory": json.dumps(trajectory),
                         "wall": time.time(), "cpu": time.process_time() - cpu0},
                        checkpoint=tune.Checkpoint.from_directory(d))


def train_interval(model: torch.nn.Module, opt: torch.optim.Optimizer, problem: InnerProblem, steps: range,
                   loss_of: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None) -> bool:
    """Train ``model`` in place on ``problem``'s batches of ``steps`` with ``loss_of`` (default: the problem's
    ``model_loss``); whether the loss stopped being finite."""
    model.train()
    for t in steps:
        batch = problem.batch(t)
        opt.zero_grad(set_to_none=True)
        loss_fn = loss_of or problem.model_loss
        assert loss_fn is not None
        loss = loss_fn(model, batch)
        loss.backward()
        if problem.grad_clip is not None:  # the clamp every other method trains under
            torch.nn.utils.clip_grad_value_(model.parameters(), problem.grad_clip)
        opt.step()
        if not bool(torch.isfinite(loss)):
            return True
    return False


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, restoring (or removing) them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_pbt(task: Task, rule: UpdateRule, fds: FDSConfig, space: SearchSpace, population: int, intervals: int,
            seconds: float | None = None) -> list[Report]:
    """Run synchronous PBT with ``population`` members for ``fds.inner_steps[0]`` steps; every member's reports.

    The initial values are drawn from ``space`` (seeded by ``fds.seed``), and so are resampled
    ones; perturbed values are clamped into it.  Once ``seconds`` have passed since this call
    (starting Ray included), a member stops after the interval it is in, and all stop once every
    member has reported at least one interval.  Ray is started (one CPU, no dashboard, logs in a temporary
    directory) unless it already runs, and shut down afterwards.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.stopper import Stopper

    domains = {n: (tune.loguniform if r.log else tune.uniform)(r.low, r.high) for n, r in space.items()
               if n in rule.hyper_names}

    def clamp(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, **{n: min(max(float(config[n]), space[n].low), space[n].high) for n in domains}}

    start = time.perf_counter()

    @final
    class Deadline(Stopper):
        """Past ``seconds``: a member stops after the interval it is in; all stop once each has reported one."""

        def __init__(self) -> None:
            self.reported: set[str] = set()

        def late(self) -> bool:
            return seconds is not None and time.perf_counter() - start >= seconds

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.reported.add(trial_id)
            return self.late()

        def stop_all(self) -> bool:
            return self.late() and len(self.reported) >= population

    reports: list[Report] = []

    @final
    class Collect(tune.Callback):
        """Every member's every report, as it arrives (not read back from Tune's result files afterwards)."""

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            reports.append(report_of(str(trial.trial_id), result))

    scheduler = PopulationBasedTraining(time_attr="interval", metric="val_acc", mode="max", perturbation_interval=1,
                                        hyperparam_mutations=domains, custom_explore_fn=clamp, synch=True)
    gpus = 1 if torch.device(fds.device).type == "cuda" else 0
    trainable = tune.with_resources(tune.with_parameters(train_member, task=task, rule=rule, fds=fds,
                                                         intervals=intervals), {"cpu": 1, "gpu": gpus})
    tmp = Path(tempfile.mkdtemp(prefix="hpo-pbt-"))
    started = not ray.is_initialized()
    rng_state = random.getstate()
    try:
        if started:
            ray.init(num_cpus=1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, _temp_dir=str(tmp / "ray"))
        random.seed(int(fds.seed))  # PBT's exploit/explore draws from Python's global generator
        tuner = tune.Tuner(
            trainable,
            param_space=domains,
            tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=population, reuse_actors=True,
                                        search_alg=BasicVariantGenerator(random_state=int(fds.seed))),
            run_config=tune.RunConfig(name="pbt", storage_path=str(tmp / "results"), verbose=0, stop=Deadline(),
                                      callbacks=[Collect()]),
        )
        # Tune prints its experiment's table even at verbose=0; its automatic CSV, JSON and TensorBoard
        # loggers would write into the temporary directory, and their writer threads die noisily
        # ("Exception in thread ... handle is closed") when a --jobs worker process exits.
        with contextlib.redirect_stdout(io.StringIO()), environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
            grid = tuner.fit()
        if grid.errors:
            raise RuntimeError(f"a PBT member failed: {grid.errors[0]}")
        return reports
    finally:
        random.setstate(rng_state)
        if started:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@final
class PBTSearch(SearchMethod):
    """Synchronous PBT with ``population`` members (default: as many as the budget buys) and ``intervals`` perturbation intervals."""

    name = "pbt"

    def __init__(self, population: int | None = None, intervals: int = 10) -> None:
        if population is not None and population < 2:
            raise ValueError(f"a PBT population needs at least 2 members, got {population}")
        if intervals < 1:
            raise ValueError(f"PBT needs at least one perturbation interval, got {intervals}")
        self.population = population
        self.intervals = intervals

    def size(self, settings: SearchSettings) -> int:
        """Members of the population: ``population`` (:meth:`check`: at most ``budget // T``), else ``budget // T``."""
        return min(self.population or settings.units, settings.units)

    def segments(self, settings: SearchSettings) -> int:
        """Perturbation intervals over the horizon: ``intervals``, at most one per step."""
        return min(self.intervals, settings.horizon)

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Ray Tune installed, a budget of two members, a ``torch.optim`` counterpart and a range per type."""
        require("ray", "Ray Tune")
        if self.population is not None and self.population > settings.units:
            raise ValueError(f"a population of {self.population} needs a budget of {self.population * settings.horizon} "
                             f"steps (one inner run each), got {settings.budget}")
        if settings.units < 2:
            raise ValueError(f"a population of 2 needs a budget of at least 2 inner runs ({2 * settings.horizon} "
                             f"steps), got {settings.budget}")
        if type(rule_of(rule)).torch_optimizer is UpdateRule.torch_optimizer:
            raise ValueError(f"optimizer {rule.name!r} has no torch.optim counterpart for the members to train with")
        missing = [n for n in rule.hyper_names if n not in settings.space]
        if missing:
            raise ValueError(f"give a search range for {', '.join(missing)} (optimizer {rule.name!r} has no default)")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run the population; the incumbent after each perturbation interval, stamped when its last member reported.

        Its CPU seconds are this process's (starting Ray, the scheduler) and the members' (training).
        """
        self.check(rule, settings)
        wall0, cpu0 = time.time(), time.process_time()
        population, n = self.size(settings), self.segments(settings)
        reports = run_pbt(task, rule, settings.fds(seed), settings.space, population, n, settings.seconds)
        driver_cpu = time.process_time() - cpu0
        return [replace(p, seconds=p.seconds - wall0, cpu_seconds=p.cpu_seconds + driver_cpu)
                for p in incumbents(reports, rule.hyper_names, population, settings.horizon, n)]


def incumbents(reports: list[Report], names: tuple[str, ...], population: int, horizon: int,
               intervals: int) -> list[Incumbent]:
    """After each interval ``j`` reached: the best report's trajectory as a schedule, and the steps spent.

    Steps after interval ``j``: each member that reported ``j`` trained ``s_j`` steps, the others
    ``s_{j-1}`` (the members take turns between the synchronised perturbations).  ``seconds`` is
    the time of the last report of interval ``j`` (``time.time()``) and ``cpu_seconds`` the
    members' CPU seconds up to it.
    """
    bounds = interval_bounds(horizon, intervals)
    points = []
    for j in range(1, intervals + 1):
        at = [r for r in reports if r.interval == j]
        if not at:
            break
        best = max(at, key=Report.score)
        steps = len(at) * bounds[j] + (population - len(at)) * bounds[j - 1]
        cpu = sum(r.cpu for r in reports if r.interval <= j)
        points.append(Incumbent(steps, max(r.wall for r in at), replay_schedule(best.values(), names, intervals),
                                best.val_acc, cpu))
    return points
