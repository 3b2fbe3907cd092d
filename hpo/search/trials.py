"""The trial searches: random search and TPE (optuna), over constants, shared-segment schedules or
cosine schedules with warm-up (``random-constant``, ``random-schedule``, ``tpe``, ``tpe-schedule``,
``cosine-random``, ``cosine-tpe``).

Each trial trains a fresh network for one inner horizon with a candidate schedule on the train
part of a fresh validation split (exactly the inner problem an FDS outer step sees, from
:func:`hpo.search.inner_runs.make_problem`) and scores it by validation accuracy (ties: lower loss).  A trial
costs ``horizon`` inner steps, so a budget of ``B`` steps buys ``B // horizon`` trials.

The search space is one range per hyperparameter type (:mod:`hpo.search.space`).

Cosine decay with linear warm-up (:class:`CosineWarmup`) is the schedule practitioners tune by
random search or TPE.
A trial draws a peak learning rate and constant values of the other types; the learning rate then
follows, over the fraction :math:`u \\in [0, 1)` of training,

.. math::

    \\eta(u) = \\eta_{peak}\\, u / w \\quad (u < w), \\qquad
    \\eta(u) = \\tfrac12 \\eta_{peak} \\big(1 + \\cos(\\pi (u - w) / (1 - w))\\big) \\quad (u \\ge w)

with warm-up fraction :math:`w` (5%), sampled at the middle of each of ``segments`` equal
segments, so it is an ordinary shared schedule that retrains and stretches like any other.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import final

import torch

from hpo.core.backend import rng_devices
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, plain_train_step
from hpo.optimizers.base import UpdateRule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.inner_runs import FDSConfig, make_problem
from hpo.search.space import SearchSpace, sample_schedule
from hpo.tasks.base import Task


def train_and_validate(problem: InnerProblem, schedule: Schedule) -> tuple[float, float, bool]:
    """Train ``problem.horizon`` steps with ``schedule`` (no hypergradient); ``(val_loss, val_acc, diverged)``."""
    rule = problem.rule
    values = schedule.values_like(next(iter(problem.params.values())))
    params, buffers = problem.params, problem.buffers
    state = rule.init(params)
    with torch.random.fork_rng(devices=rng_devices(problem)):
        for t, batch in problem.batches():
            problem.seed_step(t)  # dropout masks as FDS's runs draw them
            params, state, buffers, loss, _ = plain_train_step(rule, problem.loss_fn, params, buffers, state,
                                                               hyper_at_step(values, t, problem.horizon), t, batch,
                                                               problem.grad_clip, seed=problem.seed)
            if t % 25 == 0 and not bool(torch.isfinite(loss)):
                return math.inf, 0.0, True
    vloss, vacc = problem.evaluate(params, buffers)
    if not math.isfinite(float(vloss)):
        return math.inf, float(vacc), True
    return float(vloss), float(vacc), False


@final
@dataclass(frozen=True)
class Trial:
    """One evaluated candidate."""

    k: int
    schedule: Schedule
    val_loss: float
    val_acc: float
    steps: int
    diverged: bool

    def score(self) -> tuple[float, float]:
        """Sort key, larger is better: validation accuracy, then lower loss."""
        return (self.val_acc, -self.val_loss)


#: Asked after every trial: true means start no further trial.
Stop = Callable[[], bool]


#: Turns a drawn schedule into the schedule a trial evaluates.
Shape = Callable[[Schedule], Schedule]


def _evaluate(task: Task, rule: UpdateRule, config: FDSConfig, k: int, schedule: Schedule) -> Trial:
    problem = make_problem(task, rule, config, k)
    vloss, vacc, div = train_and_validate(problem, schedule)
    return Trial(k, schedule, vloss, vacc, problem.horizon, div)


def random_search(
    task: Task,
    rule: UpdateRule,
    config: FDSConfig,
    space: SearchSpace,
    trials: int,
    counts: Mapping[str, int] | None = None,
    stop: Stop | None = None,
    shape: Shape | None = None,
) -> list[Trial]:
    """``trials`` random candidates; ``counts=None`` samples constants, else shared-segment schedules.

    ``shape`` turns each drawn schedule into the one evaluated (e.g. a cosine schedule around a
    drawn peak learning rate, :mod:`hpo.search.trials`).

    ``stop()`` is asked after every trial; when it is true no further trial starts (a time budget).
    """
    gen = torch.Generator().manual_seed(int(config.seed) * 7_919 + 17)
    out = []
    for k in range(trials):
        drawn = sample_schedule(space, counts or {}, gen)
        out.append(_evaluate(task, rule, config, k, shape(drawn) if shape is not None else drawn))
        if stop is not None and stop():
            break
    return out


def tpe_search(
    task: Task,
    rule: UpdateRule,
    config: FDSConfig,
    space: SearchSpace,
    trials: int,
    counts: Mapping[str, int] | None = None,
    stop: Stop | None = None,
    shape: Shape | None = None,
) -> list[Trial]:
    """``trials`` candidates proposed by optuna's TPE sampler (seeded), maximising validation accuracy.

    ``stop()`` is asked after every trial, as in :func:`random_search`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = dict(counts or {})
    sampler = optuna.samplers.TPESampler(seed=int(config.seed), n_startup_trials=min(10, max(1, trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out: list[Trial] = []

    def objective(ot: optuna.Trial) -> float:
        vals = {}
        for name, r in space.items():
            n = int(counts.get(name, 1))
            vals[name] = torch.tensor(
                [ot.suggest_float(f"{name}_{j}" if n > 1 else name, r.low, r.high, log=r.log) for j in range(n)],
                dtype=torch.float64,
            )
        drawn = Schedule(vals)
        trial = _evaluate(task, rule, config, len(out), shape(drawn) if shape is not None else drawn)
        out.append(trial)
        return trial.val_acc - 1e-6 * min(trial.val_loss, 1e6)

    def maybe_stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if stop is not None and stop():
            study.stop()

    study.optimize(objective, n_trials=trials, callbacks=[maybe_stop])
    return out


def best_so_far(trials: list[Trial]) -> list[Trial]:
    """The incumbent after each trial."""
    best: list[Trial] = []
    for t in trials:
        best.append(t if not best or t.score() > best[-1].score() else best[-1])
    return best


@final
@dataclass(frozen=True)
class CosineWarmup:
    """Turns a drawn constant setting into a cosine-with-warm-up learning-rate schedule.

    Example:
        >>> s = CosineWarmup(segments=4, warmup=0.25)(Schedule.constant({"lr": 1.0, "wd": 0.0}))
        >>> [round(x, 4) for x in s.values["lr"].tolist()]
        [0.5, 0.933, 0.5, 0.067]
    """

    segments: int = 50
    warmup: float = 0.05
    lr: str = "lr"

    def check(self, rule: UpdateRule) -> None:
        """The rule must have a learning rate called ``lr``."""
        if self.lr not in rule.hyper_names:
            raise ValueError(f"a cosine schedule needs a hyperparameter {self.lr!r}; optimizer {rule.name!r} has "
                             f"{', '.join(rule.hyper_names)}")

    def factor(self, u: float) -> float:
        """The multiple of the peak learning rate at fraction ``u`` of training."""
        if u < self.warmup:
            return u / self.warmup
        return 0.5 * (1.0 + math.cos(math.pi * (u - self.warmup) / (1.0 - self.warmup)))

    def __call__(self, schedule: Schedule) -> Schedule:
        """The cosine schedule whose peak is ``schedule``'s first learning rate; other types as drawn."""
        peak = float(schedule.values[self.lr][0])
        lr = [peak * self.factor((j + 0.5) / self.segments) for j in range(self.segments)]
        return Schedule({**schedule.values, self.lr: torch.tensor(lr, dtype=torch.float64)})


#: A trial loop: ``(task, rule, config, space, trials, counts, stop=..., shape=...) -> trials``.
Sampler = Callable[..., list[Trial]]


class TrialSearch(SearchMethod):
    """``budget // T`` trials; the incumbent is the best validation accuracy so far.

    ``schedules`` False draws constants; True draws a value per shared segment.  ``shape``, if
    given, turns each draw into the schedule evaluated (e.g. :class:`~hpo.search.trials.CosineWarmup`).
    """

    def __init__(self, schedules: bool = False, shape: CosineWarmup | None = None) -> None:
        self.schedules = schedules
        self.shape = shape

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Every hyperparameter of the rule needs a range (and the shape its hyperparameters)."""
        if self.shape is not None:
            self.shape.check(rule)
        missing = [n for n in rule.hyper_names if n not in settings.space]
        if missing:
            raise ValueError(f"give a search range for {', '.join(missing)} (optimizer {rule.name!r} has no default)")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run the trials, then stamp the best-so-far after each (time spread evenly over trials)."""
        watch = Stopwatch()
        config = settings.fds(seed)
        counts = config.resolved_counts(rule) if self.schedules else None
        trials = self.sampler()(task, rule, config, settings.space, settings.units, counts,
                                stop=lambda: watch.out_of_time(settings.seconds), shape=self.shape)
        points, steps = [], 0
        for trial, best in zip(trials, best_so_far(trials)):
            steps += trial.steps
            points.append(Incumbent(steps, 0.0, best.schedule, best.val_acc))
        return watch.spread(points)

    @abstractmethod
    def sampler(self) -> Sampler:
        """The trial loop: :func:`~hpo.search.trials.random_search` or :func:`~hpo.search.trials.tpe_search`."""


@final
class RandomSearch(TrialSearch):
    """``random-constant`` / ``random-schedule`` / ``cosine-random``: independent uniform (or log-uniform) draws."""

    name = "random"

    def sampler(self) -> Sampler:
        """Random candidates."""
        return random_search


@final
class TPESearch(TrialSearch):
    """``tpe`` / ``tpe-schedule`` / ``cosine-tpe``: optuna's TPE sampler, seeded."""

    name = "tpe"

    def sampler(self) -> Sampler:
        """TPE candidates."""
        return tpe_search
