"""Search baselines: random search and TPE (optuna), over constants or shared-segment schedules.

Each trial trains a fresh network for one inner horizon with a candidate schedule on the train
part of a fresh validation split (exactly the inner problem an FDS outer step sees, from
:func:`hpo.fds.make_problem`) and scores it by validation accuracy (ties: lower loss).  A trial
costs ``horizon`` inner steps, so a budget of ``B`` steps buys ``B // horizon`` trials.

The search space is one range per hyperparameter type, ``low:high`` or ``low:high:log``, e.g.
``lr=1e-3:1:log,momentum=0:0.99,wd=1e-6:1e-2:log``.  "Constant" search samples one value per
type; "schedule" search samples every shared value of every type independently (same segment
form as the learned schedules: ``counts[name]`` values, value ``floor(n t / T)`` at step t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import final

import torch

from hpo.fds import FDSConfig, make_problem
from hpo.optimizers.base import UpdateRule
from hpo.problem import InnerProblem, evaluate
from hpo.schedule import Schedule
from hpo.step import hyper_at_step, train_step
from hpo.tasks.base import Task


@final
@dataclass(frozen=True)
class Range:
    """Sampling range of one type: uniform on ``[low, high]``, or log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    def from_unit(self, u: float) -> float:
        """Map ``u`` in [0, 1] into the range (geometrically when ``log``)."""
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


SearchSpace = dict[str, Range]


def parse_space(text: str) -> SearchSpace:
    """Parse ``name=low:high[:log],...``; ``ValueError`` (one line) on malformed input."""
    space: SearchSpace = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name, eq, rng = piece.partition("=")
        parts = rng.split(":")
        if (
            not eq
            or not name.strip()
            or len(parts) not in (2, 3)
            or (len(parts) == 3 and parts[2] not in ("log", "lin"))
        ):
            raise ValueError(f"search space entry {piece!r} is not NAME=LOW:HIGH or NAME=LOW:HIGH:log")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"search space entry {piece!r} has a bound that is not a number") from None
        log = len(parts) == 3 and parts[2] == "log"
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"search space entry {piece!r} needs finite LOW <= HIGH")
        if log and low <= 0:
            raise ValueError(f"search space entry {piece!r}: a log range needs LOW > 0")
        space[name.strip()] = Range(low, high, log)
    if not space:
        raise ValueError("the search space is empty")
    return space


def default_space(rule: UpdateRule) -> SearchSpace:
    """Each type's default range from its spec (:attr:`HyperSpec.search_range`), where it has one."""
    return {s.name: Range(*s.search_range) for s in rule.hyperparameters if s.search_range is not None}


def resolve_space(rule: UpdateRule, text: str | None) -> SearchSpace:
    """The user's space (missing types take the rule's default range) checked against ``rule``."""
    space = {**default_space(rule), **(parse_space(text) if text else {})}
    for name in space:
        if name not in rule.hyper_names:
            raise ValueError(f"optimizer {rule.name!r} has no hyperparameter {name!r} (it has {', '.join(rule.hyper_names)})")
    for s in rule.hyperparameters:
        if s.name not in space:
            raise ValueError(f"give a range for {s.name} (optimizer {rule.name!r} has no default for it)")
        r = space[s.name]
        for x in (r.low, r.high):
            if not s.contains(x):
                raise ValueError(f"{s.name} bound {x:g} is out of range ({s.range_text()})")
    return space


def sample_schedule(space: SearchSpace, counts: Mapping[str, int], gen: torch.Generator) -> Schedule:
    """Every shared value drawn independently from its type's range."""
    out = {}
    for name, r in space.items():
        u = torch.rand(int(counts.get(name, 1)), generator=gen, dtype=torch.float64)
        out[name] = torch.tensor([r.from_unit(float(x)) for x in u], dtype=torch.float64)
    return Schedule(out)


def train_and_validate(problem: InnerProblem, schedule: Schedule) -> tuple[float, float, bool]:
    """Train ``problem.horizon`` steps with ``schedule`` (no hypergradient); ``(val_loss, val_acc, diverged)``."""
    rule = problem.rule
    values = schedule.values_like(next(iter(problem.params.values())))
    params, buffers = problem.params, problem.buffers
    state = rule.init(params)
    for t, x, y in problem.batches():
        params, state, buffers, loss, _ = train_step(rule, problem.loss_fn, params, buffers, state,
                                                     hyper_at_step(values, t, problem.horizon), t, x, y,
                                                     problem.grad_clip)
        if t % 25 == 0 and not bool(torch.isfinite(loss)):
            return math.inf, 0.0, True
    vloss, vacc = evaluate(problem.eval_fn, params, buffers, problem.val_x, problem.val_y, problem.eval_batch_size)
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
    drawn peak learning rate, :mod:`hpo.search.cosine`).

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
