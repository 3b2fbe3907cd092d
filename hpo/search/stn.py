"""Self-Tuning Networks (MacKay et al., ICLR 2019): weights and hyperparameters trained in one run.

The network's Linear and Conv layers become structured best-response layers
(:mod:`hpo.search.stn_layers`), functions :math:`\\hat w_\\phi(\\lambda)` of the unconstrained
hyperparameters :math:`u` (``l2``: :math:`\\rho = e^{u}`, one per layer or one shared;
``label_smoothing``: :math:`\\varepsilon = \\tfrac12 \\sigma(u)`; ``input_noise``, the standard deviation of
Gaussian noise added to the inputs: :math:`e^{u}`).  The layers see :math:`z = u - u_0`,
the offset from the run's starting values.  Training alternates

* ``weight_steps`` steps on the weights :math:`\\phi`, at the rule's hand-picked setting (SGD:
  ``lr``, ``momentum``, ``wd``), of the training loss at perturbed hyperparameters, one draw per
  example :math:`\\tilde u_i = u + s \\odot n_i`, :math:`n_i \\sim N(0, I)`:

  .. math::  \\frac1B \\sum_i \\Big[\\ell_{\\varepsilon(\\tilde u_i)}(\\hat w(\\tilde u_i); x_i, y_i)
             + \\tfrac12 \\sum_l \\rho_l(\\tilde u_i) \\lVert \\hat w_l(\\tilde u_i) \\rVert^2\\Big]

* ``hyper_steps`` Adam steps (``hyper_lr``) on :math:`u` and the perturbation scale :math:`s`
  (:math:`\\log s` is trained; it starts at ``sigma``) of the validation objective (the plain loss: no
  smoothing, no L2) through the best response, with an entropy bonus :math:`\\tau \\sum \\log s`:

  .. math::  \\frac1B \\sum_i F(\\hat w(u + s \\odot n_i); x_i, y_i) - \\tau \\sum_h \\log s_h

The hyperparameters reach the validation loss only through :math:`\\hat w`, so :math:`u` moves the
way the best-response layers say the validation loss falls.

``stn``: Self-Tuning Networks over the loss hyperparameters ``l2``, ``label_smoothing`` and ``input_noise`` (those
turned on), the rest at the rule's hand-picked setting.

Each of the ``budget // T`` runs trains a freshly initialised network for the horizon ``T`` on the
train part of a fresh validation split, its hyperparameters starting where the previous run's ended
(the first: ``init``).  ``T`` inner steps are the weight steps; the hyperparameter steps use
validation minibatches and are not counted, as an FDS hypergradient is not.  The incumbent after
each run is the trajectory of the run with the best validation score (of the network at its
final :math:`u`, unperturbed), replayed as a schedule: each segment holds the mean of
:math:`\\lambda` over its steps (default 1 segment for ``l2``, 7 for ``label_smoothing`` and ``input_noise``; ``counts``
overrides), and ``lr``, ``momentum``, ``wd`` the hand-picked constants.  ``hpo compare`` retrains it
from scratch like any schedule.  Once ``settings.seconds`` have passed a run stops after its
current weight/hyperparameter cycle and its trajectory so far (the last value held) is the last
incumbent.  Dropout or input-noise rates are not tuned (the built-in problems declare none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor, nn

from hpo.core.data import Batch, Rows, batch_size_of, unindexed
from hpo.core.problem import evaluate
from hpo.core.schedule import Schedule, segment_indices
from hpo.optimizers.base import UpdateRule
from hpo.optimizers.loss_hypers import loss_names, rule_of
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.search.inner_runs import FDSConfig, make_problem, seeded_rng
from hpo.search.stn_layers import check_convertible, conditioned, convert, weight_penalty
from hpo.tasks.base import Task, init_model, layer_names

#: The loss hyperparameters an STN tunes.
TUNED = ("l2", "label_smoothing", "input_noise")

#: Segments of each tuned type in the replayed schedule, unless ``counts`` says otherwise.
DEFAULT_COUNTS: Mapping[str, int] = {"l2": 1, "label_smoothing": 7, "input_noise": 7}

#: Starting values: L2 at the geometric middle of its search range, a little label smoothing and input noise.
DEFAULT_INIT: Mapping[str, float] = {"l2": 1e-4, "label_smoothing": 0.05, "input_noise": 0.1}


@final
@dataclass(frozen=True)
class Layout:
    """Where each tuned type sits in the vector :math:`u` of ``size`` unconstrained values.

    ``l2`` values come first (``l2_values``: one per layer, one shared, or none), then
    ``label_smoothing`` (if ``smoothing``).  ``layers`` is the model's number of layers.
    """

    l2_values: int
    smoothing: bool
    layers: int
    noise: bool = False

    @property
    def size(self) -> int:
        """:math:`H`, the number of unconstrained values."""
        return self.l2_values + int(self.smoothing) + int(self.noise)

    def rho(self, u: Tensor) -> Tensor:
        """:math:`\\rho = e^{u_{l2}}`, one per layer: ``(..., layers)`` (a shared value repeated)."""
        r = u[..., : self.l2_values].exp()
        return r.expand(*r.shape[:-1], self.layers) if self.l2_values == 1 else r

    def eps(self, u: Tensor) -> Tensor:
        """:math:`\\varepsilon = \\tfrac12 \\mathrm{sigmoid}(u_{ls})`, in :math:`(0, \\tfrac12)`: ``(...)``."""
        return 0.5 * torch.sigmoid(u[..., self.l2_values])

    def sigma(self, u: Tensor) -> Tensor:
        """The input noise :math:`\\sigma = e^{u_{n}}` (the last value): ``(...)``."""
        return u[..., self.size - 1].exp()

    def unconstrained(self, l2: float, smoothing: float, dtype: torch.dtype, device: torch.device | str,
                      noise: float = 0.1) -> Tensor:
        """:math:`u` of the values ``l2`` (every layer), ``smoothing`` and ``noise``: :math:`\\log \\rho`,
        :math:`\\mathrm{logit}(2\\varepsilon)`, :math:`\\log \\sigma`."""
        parts = [math.log(l2)] * self.l2_values
        if self.smoothing:
            parts.append(math.log(2 * smoothing / (1 - 2 * smoothing)))
        if self.noise:
            parts.append(math.log(noise))
        return torch.tensor(parts, dtype=dtype, device=device)


@final
class SelfTuning:
    """One STN run's trainable state: the best-response model, :math:`u`, :math:`\\log s` and their optimizers.

    ``weights`` is the weight optimizer (built over ``model.parameters()``), ``hyper_lr`` Adam's
    learning rate for :math:`(u, \\log s)`, ``tau`` the entropy weight.  ``task.loss`` gives the
    training loss (its label smoothing one value per example) and ``task.objective`` the
    validation objective.
    """

    def __init__(self, task: Task, model: nn.Module, layout: Layout, u0: Tensor, sigma: float,
                 weights: Callable[[list[nn.Parameter]], torch.optim.Optimizer], hyper_lr: float, tau: float,
                 grad_clip: float | None = None) -> None:
        self.task, self.model, self.layout = task, model, layout
        self.center = u0.detach().clone()
        self.u = nn.Parameter(u0.detach().clone())
        self.log_sigma = nn.Parameter(torch.full_like(u0, math.log(sigma)))
        self.weights = weights(list(model.parameters()))
        self.hypers = torch.optim.Adam([self.u, self.log_sigma], lr=hyper_lr)
        self.tau = tau
        self.grad_clip = grad_clip

    def train_loss(self, batch: Batch, u: Tensor) -> Tensor:
        """The training loss with example ``i`` at hyperparameters ``u[i]`` (``u``: ``(B, H)``)."""
        data, _ = unindexed(batch)
        z = u - self.center
        hyper = {"label_smoothing": self.layout.eps(u)} if self.layout.smoothing else {}
        if self.layout.noise:
            hyper["input_noise"] = self.layout.sigma(u)
        with conditioned(self.model, z):
            loss = self.task.loss(self.model, data, hyper)  # type: ignore[call-arg]
            if self.layout.l2_values:
                loss = loss + weight_penalty(self.model, self.layout.rho(u), z)
        return loss

    def val_loss(self, batch: Batch, u: Tensor) -> Tensor:
        """The validation objective with example ``i`` seen through the best response at ``u[i]``."""
        data, _ = unindexed(batch)
        objective = self.task.objective or self.task.loss
        self.model.eval()
        try:
            with conditioned(self.model, u - self.center):
                return objective(self.model, data)
        finally:
            self.model.train()

    def weight_step(self, batch: Batch, noise: Tensor) -> Tensor:
        """One step of the weights at :math:`\\tilde u_i = u + s \\odot n_i` (``noise``: ``(B, H)``); the loss."""
        with torch.no_grad():
            u = self.u + self.log_sigma.exp() * noise
        self.weights.zero_grad(set_to_none=True)
        loss = self.train_loss(batch, u)
        loss.backward()
        if self.grad_clip is not None:  # the clamp every other method trains under
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.grad_clip)
        self.weights.step()
        return loss.detach()

    def hyper_step(self, batch: Batch, noise: Tensor) -> Tensor:
        """One Adam step of :math:`(u, \\log s)` on :math:`F(\\hat w(u + s \\odot n)) - \\tau \\sum \\log s`; the objective."""
        u = self.u + self.log_sigma.exp() * noise
        objective = self.val_loss(batch, u) - self.tau * self.log_sigma.sum()
        gu, gs = torch.autograd.grad(objective, [self.u, self.log_sigma])
        self.u.grad, self.log_sigma.grad = gu, gs
        self.hypers.step()
        return objective.detach()

    def score(self, rows: Rows) -> float:
        """The task's validation score of the network at the current :math:`u`, unperturbed."""
        objective = self.task.objective or self.task.loss
        metrics = dict(self.task.metrics)
        z = (self.u - self.center).detach()

        def eval_fn(params: object, buffers: object, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            with conditioned(self.model, z):
                return objective(self.model, batch), {k: m.fn(self.model, batch) for k, m in metrics.items()}

        self.model.eval()
        try:
            with torch.no_grad():
                loss, means = evaluate(eval_fn, {}, {}, rows)
        finally:
            self.model.train()
        if not bool(torch.isfinite(loss)):
            return -math.inf
        return float(self.task.score_fn()(loss, means))


def segment_means(trajectory: Tensor, horizon: int, count: int) -> Tensor:
    """Mean of ``trajectory`` (``(steps, ...)``, the first ``steps`` of ``horizon``) over each of ``count`` segments.

    A segment the run never reached (it stopped early) holds the last value.
    """
    done = trajectory.shape[0]
    seg = segment_indices(horizon, count)[:done]
    out = []
    for j in range(count):
        rows = trajectory[seg == j]
        out.append(rows.mean(0) if rows.shape[0] else (out[-1] if out else trajectory[-1]))
    return torch.stack(out, dim=-1)


def replay(trajectory: Tensor, layout: Layout, horizon: int, counts: Mapping[str, int], fixed: Mapping[str, float],
           names: Sequence[str], layers: Sequence[str]) -> Schedule:
    """The schedule of a run's trajectory of :math:`u` (``(steps, H)``): the ``fixed`` constants, then each
    tuned type's segment means (``l2`` a ``(layers, count)`` table when one value per layer)."""
    values = {n: torch.tensor([float(v)], dtype=torch.float64) for n, v in fixed.items()}
    groups = {}
    u = trajectory.to(torch.float64)
    if layout.l2_values:
        l2 = segment_means(u[:, : layout.l2_values].exp(), horizon, counts["l2"])
        values["l2"] = l2 if layout.l2_values > 1 else l2[0]
        if layout.l2_values > 1:
            groups["l2"] = tuple(layers)
    if layout.smoothing:
        values["label_smoothing"] = segment_means(layout.eps(u), horizon, counts["label_smoothing"])
    if layout.noise:
        values["input_noise"] = segment_means(layout.sigma(u), horizon, counts["input_noise"])
    return Schedule({n: values[n] for n in names}, groups)


@final
@dataclass(frozen=True)
class RunResult:
    """One STN run: the trajectory of :math:`u` (one row per weight step done), its last :math:`u`, its score."""

    trajectory: Tensor
    last: Tensor
    score: float
    stopped: bool


@final
class STNSearch(SearchMethod):
    """Self-Tuning Networks: ``weight_steps`` weight steps, then ``hyper_steps`` hyperparameter steps, repeated.

    ``sigma`` is the initial perturbation scale (in :math:`u`), ``tau`` the entropy weight,
    ``hyper_lr`` Adam's learning rate for the hyperparameters, ``per_layer`` one L2 value per layer
    (else one shared), ``init`` the starting values (:data:`DEFAULT_INIT`).
    """

    name = "stn"

    def __init__(self, weight_steps: int = 5, hyper_steps: int = 1, sigma: float = 0.5, tau: float = 1e-3,
                 hyper_lr: float = 0.03, per_layer: bool = True, init: Mapping[str, float] | None = None) -> None:
        if weight_steps < 1 or hyper_steps < 1:
            raise ValueError(f"stn alternates at least one weight and one hyperparameter step, got "
                             f"{weight_steps} and {hyper_steps}")
        for name, x in (("sigma", sigma), ("hyper_lr", hyper_lr)):
            if not (x > 0 and math.isfinite(x)):
                raise ValueError(f"stn's {name} must be positive, got {x:g}")
        if not (tau >= 0 and math.isfinite(tau)):
            raise ValueError(f"stn's entropy weight tau must be non-negative, got {tau:g}")
        self.init = {**DEFAULT_INIT, **(init or {})}
        if not self.init["l2"] > 0 or not 0 < self.init["label_smoothing"] < 0.5 or not self.init["input_noise"] > 0:
            raise ValueError(f"stn starts from l2 > 0, 0 < label_smoothing < 0.5 and input_noise > 0, got {self.init}")
        self.weight_steps, self.hyper_steps = weight_steps, hyper_steps
        self.sigma, self.tau, self.hyper_lr, self.per_layer = sigma, tau, hyper_lr, per_layer

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """Loss hyperparameters to tune, all among :data:`TUNED`, and a hand-picked ``torch.optim`` rule."""
        kinds = loss_names(rule)
        if not kinds:
            raise ValueError(f"it tunes loss hyperparameters ({', '.join(TUNED)}), and none is turned on")
        other = [k for k in kinds if k not in TUNED]
        if other:
            raise ValueError(f"it tunes {' and '.join(TUNED)}, not {other[0]}")
        base = rule_of(rule)
        if base.hand_picked is None:
            raise ValueError(f"optimizer {base.name!r} has no hand-picked setting to train the weights with")
        if type(base).torch_optimizer is UpdateRule.torch_optimizer:
            raise ValueError(f"optimizer {base.name!r} has no torch.optim counterpart to train the weights with")

    def check_task(self, task: Task) -> None:
        """Every module of the task's model that holds parameters must be a Linear, Conv1d or Conv2d layer."""
        check_convertible(init_model(task, 0, torch.float32, "cpu"))

    def counts(self, settings: SearchSettings, kinds: Sequence[str]) -> dict[str, int]:
        """Segments of each tuned type: ``settings.counts``, else :data:`DEFAULT_COUNTS` (at most one per step)."""
        return {k: min(int(settings.counts.get(k, DEFAULT_COUNTS[k])), settings.horizon) for k in kinds}

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """``budget // T`` runs (fewer if ``settings.seconds`` runs out); the best run's trajectory after each.

        A model with a layer that has no best response is a one-line ``ValueError`` (:meth:`check_task`).
        """
        self.check(rule, settings)
        self.check_task(task)
        watch = Stopwatch()
        kinds = loss_names(rule)
        layers = layer_names(task)
        layout = Layout(0 if "l2" not in kinds else (len(layers) if self.per_layer else 1),
                        "label_smoothing" in kinds, len(layers), "input_noise" in kinds)
        base = rule_of(rule)
        fixed = {n: float((base.hand_picked or {})[n]) for n in base.hyper_names}
        config = settings.fds(seed)
        counts = self.counts(settings, kinds)
        u = layout.unconstrained(self.init["l2"], self.init["label_smoothing"], settings.dtype, settings.device,
                                 self.init["input_noise"])
        points: list[Incumbent] = []
        best: RunResult | None = None
        steps = 0
        for k in range(max(1, settings.units)):
            run = self.run(task, rule, config, k, layout, u, fixed, lambda: watch.out_of_time(settings.seconds))
            steps += run.trajectory.shape[0]
            if best is None or run.score >= best.score:
                best = run
            schedule = replay(best.trajectory, layout, settings.horizon, counts, fixed, rule.hyper_names, layers)
            points.append(watch.stamp(steps, schedule, best.score))
            u = run.last
            if run.stopped or watch.out_of_time(settings.seconds):
                break
        return points

    def run(self, task: Task, rule: UpdateRule, config: FDSConfig, k: int, layout: Layout, u0: Tensor,
            fixed: Mapping[str, float], stop: Callable[[], bool]) -> RunResult:
        """Run ``k``: a fresh network (outer step ``k``'s initialisation, batches and split) trained with STN from ``u0``."""
        problem = make_problem(task, rule, config, k)
        model = init_model(task, problem.seed, config.dtype, config.device)
        with seeded_rng(problem.seed + 1, config.device):
            model = convert(model, layout.size, {n: i for i, n in enumerate(layer_names(task))})
        model = model.to(dtype=config.dtype, device=config.device)
        base = rule_of(rule)

        def weights(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            opt = base.torch_optimizer(params, dict(fixed))
            assert opt is not None
            return opt

        tuner = SelfTuning(task, model, layout, u0, self.sigma, weights, self.hyper_lr, self.tau, problem.grad_clip)
        gen = torch.Generator().manual_seed(problem.seed * 7_919 + 17)
        trajectory: list[Tensor] = []
        stopped = diverged = False
        for t in range(problem.horizon):
            trajectory.append(tuner.u.detach().clone())
            batch = problem.batch(t)
            noise = self.noise(gen, batch, layout, tuner.u)
            if not bool(torch.isfinite(tuner.weight_step(batch, noise))):
                diverged = True
                break
            if (t + 1) % self.weight_steps == 0:
                for _ in range(self.hyper_steps):
                    idx = torch.randint(len(problem.val), (problem.batch_size,), generator=gen)
                    val = problem.val.fetch(idx, problem.seed, t)
                    tuner.hyper_step(val, self.noise(gen, val, layout, tuner.u))
                if stop():
                    stopped = True
                    break
        score = -math.inf if diverged else tuner.score(problem.val)
        return RunResult(torch.stack(trajectory), tuner.u.detach().clone(), score, stopped)

    @staticmethod
    def noise(gen: torch.Generator, batch: Batch, layout: Layout, like: Tensor) -> Tensor:
        """Standard normal draws, one row of :math:`H` per example of ``batch``."""
        return torch.randn(batch_size_of(unindexed(batch)[0]), layout.size, generator=gen).to(dtype=like.dtype, device=like.device)
