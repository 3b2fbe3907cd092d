"""A problem: a model factory, data, a loss written against the model, and metrics with directions.

The user writes ``loss(model, batch) -> 0-d tensor`` and calls the model as in any PyTorch training
loop.  The library calls it functionally: the loss is wrapped in a module whose
``forward(fn, batch)`` is ``fn(self.model, batch)``, and

.. math::

    \\ell(\\theta; b) = \\mathtt{functional\\_call}(\\mathrm{wrapper}, \\{\\texttt{model.}k: \\theta_k\\}, (\\mathrm{loss}, b))

so every call of the model inside the loss sees the weights :math:`\\theta` being differentiated.
BatchNorm running statistics are state that is updated but not differentiated: the train-mode
loss runs on cloned buffers and returns them, never mutating the ones it was given.

The hypergradient's objective is the validation loss, :math:`L_{val}(\\theta) = \\frac1n \\sum_i
\\ell_{eval}(\\theta; b_i)` (the loss in eval mode), unless the problem names another
differentiable ``objective(model, batch)``.  Metrics are for reporting and ranking only: each is a
batch mean, averaged over the data weighted by batch size, with a direction ("higher" or "lower"
is better); ``root=True`` reports the square root of the mean (RMSE from squared errors).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, final

import torch
from torch import Tensor, nn
from torch.func import grad, jvp
from torch.utils.data import Dataset

from hpo.core.data import Batch, Indexed, Rows, TensorRows, as_rows, cast, unindexed
from hpo.core.grouping import layer_of
from hpo.core.problem import Buffers, EvalFn, LossFn, MetricLabel, ScoreFn
from hpo.errors import ConfigError
from hpo.optimizers.base import Hyper, Params
from hpo.optimizers.loss_hypers import LossHyper
from hpo.tasks.tensor_swap import TensorSwap

#: ``fn(model, batch) -> 0-d tensor``: a loss, an objective or a metric, written against the model.
ModelFn = Callable[[nn.Module, Batch], Tensor]

DIRECTIONS = ("higher", "lower")


@final
@dataclass(frozen=True)
class Metric:
    """A reported metric: ``fn(model, batch)`` is its batch mean; ``direction`` says which way is better.

    ``root=True`` reports :math:`\\sqrt{\\bar m}` of the data mean :math:`\\bar m` (RMSE from a batch
    mean of squared errors).  ``scale`` multiplies the reported value (e.g. ``1 / ln 2`` for bits).
    """

    fn: ModelFn
    direction: str
    root: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        """The direction must be ``higher`` or ``lower``."""
        if self.direction not in DIRECTIONS:
            raise ConfigError("task", f"a metric's direction must be 'higher' or 'lower', got {self.direction!r}")

    def reported(self, mean: Tensor) -> Tensor:
        """The value shown for a data mean ``mean``."""
        return (mean.sqrt() if self.root else mean) * self.scale


@final
@dataclass(frozen=True)
class Problem:
    """A user's training problem; the built-in tasks are such problems too.

    ``make_model()`` builds a fresh model (seeded by the library, see :func:`init_model`).
    ``train`` and ``test`` are tensors (a tensor, a tuple or a dict of tensors, examples along
    dimension 0) or map-style ``Dataset``\\ s, collated by ``collate`` (default:
    ``torch.utils.data.default_collate``).  The search splits its validation data off ``train``;
    ``test`` scores the retrained model.  ``loss(model, batch)`` is the train-mode minibatch loss;
    ``objective(model, batch)`` (default: ``loss``, in eval mode) is what the hypergradient
    differentiates on the validation data.  ``metrics`` maps names to :class:`Metric`; ``rank_by``
    names the one searches rank by (default: the first metric; with none, the objective, lower
    better).  ``augment(x, generator)`` augments the inputs of in-memory data
    (:mod:`hpo.tasks.augment`).  ``val`` (optional) is a fixed validation set; searches then use
    it rather than a fresh split of ``train``.

    Hyperparameters of the loss: ``hypers`` declares them (:class:`~hpo.optimizers.loss_hypers.LossHyper`),
    and ``loss(model, batch, hyper)`` then receives their values at the step, a 0-d tensor or a
    vector per kind (per-example values already picked for the batch's rows); ``objective`` must
    then be given.  The built-in kinds (:mod:`hpo.tasks.loss_hypers`) need ``logits(model, batch)``
    and ``classes`` (a classifier: class weights, label smoothing) or ``example_loss(model,
    batch)``, the ``(B,)`` per-example losses (per-example weights).

    Example (a linear regression on random data)::

        >>> import torch
        >>> x, y = torch.randn(64, 3), torch.randn(64)
        >>> p = Problem("linear", lambda: torch.nn.Linear(3, 1),
        ...             lambda model, b: ((model(b[0]).squeeze(-1) - b[1]) ** 2).mean(), (x, y), (x, y))
        >>> len(p.train), p.rank_by is None
        (64, True)
    """

    name: str
    make_model: Callable[[], nn.Module]
    loss: ModelFn
    train: Any
    test: Any
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    objective: ModelFn | None = None
    collate: Callable[[list[Any]], Any] | None = None
    batch_size: int = 128
    rank_by: str | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    hypers: tuple[LossHyper, ...] = ()
    val: Any = None
    logits: ModelFn | None = None
    example_loss: ModelFn | None = None
    classes: int | None = None

    def __post_init__(self) -> None:
        """Put the data behind :class:`~hpo.core.data.Rows` and check the metrics (one-line ``ConfigError``)."""
        if not callable(self.make_model) or not callable(self.loss):
            raise ConfigError("task", "a problem needs a model factory make_model() and a loss(model, batch)")
        object.__setattr__(self, "hypers", tuple(self.hypers))
        if self.hypers and self.objective is None:
            raise ConfigError("task", "a problem whose loss takes hyperparameters needs an objective(model, batch): "
                                      "the plain loss the hypergradient lowers on validation data")
        for h in self.hypers:
            if not isinstance(h, LossHyper):
                raise ConfigError("task", f"a problem's hypers are LossHyper declarations, got {type(h).__name__}")
        for name, data in (("train", self.train), ("test", self.test), ("val", self.val)):
            if data is None:
                continue
            rows = as_rows(data, self.collate)
            if self.augment is not None and isinstance(rows, TensorRows) and name == "train":
                rows = TensorRows(rows.data, self.augment)
            object.__setattr__(self, name, rows)
        for name, m in self.metrics.items():
            if not isinstance(m, Metric):
                raise ConfigError("task", f"metric {name!r} has no direction: write Metric(fn, 'higher') or "
                                          f"Metric(fn, 'lower')")
        if self.rank_by is None and self.metrics:
            object.__setattr__(self, "rank_by", next(iter(self.metrics)))
        if self.rank_by is not None and self.rank_by not in self.metrics:
            raise ConfigError("task", f"rank_by names {self.rank_by!r}, not one of the metrics {sorted(self.metrics)}")
        if not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise ConfigError("batch_size", f"the batch size must be a positive integer, got {self.batch_size!r}")

    @property
    def train_rows(self) -> Rows:
        """The training data as :class:`~hpo.core.data.Rows`."""
        return self.train  # type: ignore[no-any-return]

    @property
    def test_rows(self) -> Rows:
        """The test data as :class:`~hpo.core.data.Rows`."""
        return self.test  # type: ignore[no-any-return]

    @property
    def val_rows(self) -> Rows | None:
        """The problem's own validation data (None: searches split theirs off ``train``)."""
        return self.val  # type: ignore[no-any-return]

    @property
    def metric_name(self) -> str:
        """Name of the ranking metric (``loss`` for a problem without metrics)."""
        return self.rank_by or "loss"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value of the ranking metric is better."""
        return self.rank_by is not None and self.metrics[self.rank_by].direction == "higher"

    @property
    def label(self) -> MetricLabel:
        """Name and direction of the ranking metric, to show scores in the metric's own units."""
        return MetricLabel(self.metric_name, self.higher_is_better)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Problem:
        """The problem with floating data in ``dtype`` on ``device`` (a Dataset is cast batch by batch)."""
        val = None if self.val_rows is None else self.val_rows.to(dtype, device)
        return replace(self, train=self.train_rows.to(dtype, device), test=self.test_rows.to(dtype, device),
                       val=val, augment=None)

    def hyper_groups(self) -> dict[str, int]:
        """The number of values of every loss hyperparameter that is per example, class or layer.

        Per example: the training set's size; per class: ``classes``; per layer: the owners of the
        model's parameters (:func:`hpo.core.grouping.layer_of`).  A per-class kind without
        ``classes`` is a one-line ``ConfigError``.
        """
        out: dict[str, int] = {}
        for h in self.hypers:
            if h.per == "example":
                out[h.name] = len(self.train_rows)
            elif h.per == "class":
                if not self.classes:
                    raise ConfigError("task", f"{h.name} is per class, but problem {self.name!r} does not say how "
                                              f"many classes it has: set classes=")
                out[h.name] = int(self.classes)
            elif h.per == "layer":
                out[h.name] = len(layer_names(self))
        return out

    def hyper_at_start(self, dtype: torch.dtype = torch.float64) -> Hyper:
        """Every loss hyperparameter at its untuned value, shaped as a step's values (0-d, or one per group)."""
        groups = self.hyper_groups()
        return {h.name: torch.full((groups[h.name],) if h.name in groups else (), h.neutral, dtype=dtype)
                for h in self.hypers}

    def score_fn(self) -> ScoreFn:
        """``score(objective, metric means)``: the ranking metric, oriented so larger is better."""
        rank_by = self.rank_by
        if rank_by is None:
            return negative_objective
        metric = self.metrics[rank_by]
        sign = 1.0 if metric.direction == "higher" else -1.0

        def score(objective: Tensor, means: Mapping[str, Tensor]) -> Tensor:
            return sign * metric.reported(means[rank_by])

        return score

    def score_to_metric(self, score: float) -> float:
        """The ranking metric's value of a score from :meth:`score_fn` (undoes the orientation)."""
        return score if self.higher_is_better else -score

    def reported(self, objective: Tensor, means: Mapping[str, Tensor]) -> dict[str, float]:
        """``{"loss": objective, metric: reported value, ...}`` as floats."""
        out = {"loss": float(objective)}
        out.update({k: float(self.metrics[k].reported(v)) for k, v in means.items()})
        return out


#: The name the library used before problems took any data and loss; the same class.
Task = Problem


def negative_objective(objective: Tensor, means: Mapping[str, Tensor]) -> Tensor:
    """Score of a problem without metrics: minus its validation objective."""
    return -objective


def layer_names(task: Problem) -> tuple[str, ...]:
    """The layers of ``task``'s model (the owner of each parameter, in order): what a per-layer value indexes."""
    names = [name for name, _ in init_model(task, 0, torch.float32, "cpu").named_parameters()]
    return tuple(dict.fromkeys(layer_of(n) for n in names))


def init_model(task: Problem, seed: int, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """A freshly initialised model of ``task``, seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.make_model()
    return model.to(dtype=dtype, device=device)


def split_state(model: nn.Module) -> tuple[Params, Buffers]:
    """Detached copies of the model's parameters and buffers as dicts."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy, written with ``log_softmax`` so it is safe under ``jvp(grad(...))``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, y.unsqueeze(-1)).mean()


def classification_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Cross-entropy of ``model(x)`` against labels ``y`` of a batch ``(x, y)``."""
    x, y = batch
    return cross_entropy(model(x), y)


def classifier_logits(model: nn.Module, batch: Batch) -> Tensor:
    """``model(x)`` of a batch ``(x, y)``: the logits the built-in loss hyperparameters weigh."""
    return model(batch[0])  # type: ignore[index, no-any-return]


def accuracy(model: nn.Module, batch: Batch) -> Tensor:
    """Fraction of a batch ``(x, y)`` whose arg-max class is ``y`` (float64)."""
    x, y = batch
    return (model(x).argmax(-1) == y).to(torch.float64).mean()


def classification_task(name: str, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                        make_model: Callable[[], nn.Module], batch_size: int = 128,
                        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> Problem:
    """A classification problem on in-memory tensors: cross-entropy loss, accuracy (higher is better)."""
    return Problem(name, make_model, classification_loss, (train_x, train_y), (test_x, test_y),
                   metrics={"acc": Metric(accuracy, "higher")}, batch_size=batch_size, augment=augment,
                   logits=classifier_logits, classes=int(torch.cat([train_y, test_y]).max()) + 1)


def loss_values(kinds: tuple[LossHyper, ...], hyper: Mapping[str, Tensor] | None, index: Tensor | None) -> Hyper:
    """What a loss with hyperparameters receives at a step: each kind's value, per-example kinds at the
    batch's rows, :math:`w_{index_1}, \\dots, w_{index_B}` (``index`` from an :class:`~hpo.core.data.Indexed` batch)."""
    if hyper is None:
        raise ValueError("this problem's loss takes hyperparameters: pass their values")
    out = {}
    for k in kinds:
        v = hyper[k.name]
        if k.per == "example" and v.dim() > 0:  # a single shared value weighs every example alike
            if index is None:
                raise ValueError(f"{k.name} is per example: the batch must carry its rows (hpo.core.data.Indexed)")
            v = v[index.to(v.device)]
        out[k.name] = v
    return out


def stateful_loss(task: Problem, hyper: Mapping[str, float] | None = None) -> ModelFn:
    """``task.loss`` for training a stateful model (``torch.optim``, schedule-free, PBT): ``loss(model, batch)``.

    The loss's hyperparameters, if it has any, are held at the constants ``hyper[name]`` (their
    untuned values where absent), one value for every example, class and layer; an
    :class:`~hpo.core.data.Indexed` batch is unwrapped.
    """
    hypers = task.hypers
    consts = {h.name: float((hyper or {}).get(h.name, h.neutral)) for h in hypers}

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        data, _ = unindexed(batch)
        if not hypers:
            return task.loss(model, data)
        ref = next(model.parameters())
        return task.loss(model, data, {k: torch.tensor(v, dtype=ref.dtype, device=ref.device)  # type: ignore[call-arg]
                                       for k, v in consts.items()})

    return loss


def model_functions(model: nn.Module, task: Problem) -> tuple[LossFn, EvalFn]:
    """The pure train-mode loss and eval-mode (objective, metrics) functions of ``task`` on ``model``.

    ``loss_fn(params, buffers, batch, hyper=None) -> (loss, new_buffers)`` runs the user's loss in
    train mode on cloned buffers and returns them (a loss with hyperparameters receives theirs,
    :func:`loss_values`); ``eval_fn(params, buffers, batch, metrics=True) -> (objective, {name:
    batch mean})`` runs in eval mode.
    """
    swap = TensorSwap(model)
    model.train()  # every submodule, as each loss call expects (eval_fn switches back to it)
    objective = task.objective or task.loss
    metrics = dict(task.metrics)
    kinds = task.hypers

    def loss_fn(params: Params, buffers: Buffers, batch: Batch, hyper: Hyper | None = None
                ) -> tuple[Tensor, Buffers]:
        new_buffers = {k: v.clone() for k, v in buffers.items()}
        data, index = unindexed(batch)
        rest = (loss_values(kinds, hyper, index),) if kinds else ()
        if not model.training:
            model.train()
        return swap.call(task.loss, params, new_buffers, data, *rest), new_buffers

    def eval_fn(params: Params, buffers: Buffers, batch: Batch, with_metrics: bool = True
                ) -> tuple[Tensor, dict[str, Tensor]]:
        model.eval()
        try:
            value = swap.call(objective, params, buffers, batch)
            means = {k: swap.call(m.fn, params, buffers, batch) for k, m in metrics.items()} if with_metrics else {}
        finally:
            model.train()
        return value, means

    return loss_fn, eval_fn


def _check_scalar(what: str, value: Any) -> None:
    if not isinstance(value, Tensor):
        raise ConfigError("task", f"the {what} must return a tensor, got {type(value).__name__}")
    if value.dim() != 0:
        raise ConfigError("task", f"the {what} must return a scalar (0-d) tensor, got shape {tuple(value.shape)}; "
                                  f"reduce it, e.g. with .mean()")


def check_problem(task: Problem, seed: int = 0) -> None:
    """Run the problem once on a small batch in float64 and refuse what would cut the hypergradient.

    The check runs with warnings silenced (torch warns about the very ``float()`` of a weight it
    refuses), so a refusal is the one line of its ``ConfigError``.

    One line each (:class:`~hpo.errors.ConfigError` on ``task``): the loss, objective or a metric
    returns a non-tensor or a non-scalar; the loss cannot be differentiated by ``torch.func``
    (an in-place op on a weight, ``.item()``); or its directional derivative along a random
    direction differs from the central difference (``float()`` or ``.detach()`` of a weight).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked_problem(task, seed)


def checked_problem(task: Problem, seed: int) -> None:
    """The body of :func:`check_problem`."""
    model = init_model(task, seed, torch.float64, "cpu")
    n = min(4, len(task.train_rows))
    batch = cast(task.train_rows.fetch(torch.arange(n), seed, 0), torch.float64, "cpu")
    val = cast(task.test_rows.fetch(torch.arange(min(4, len(task.test_rows))), -1, 0), torch.float64, "cpu")
    loss_fn, eval_fn = model_functions(model, task)
    params, buffers = split_state(model)
    hyper = task.hyper_at_start() if task.hypers else None
    if hyper is not None:
        batch = Indexed(batch, torch.arange(n))

    def loss_of(p: Params) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return loss_fn(p, buffers, batch, hyper)[0]

    try:
        value = loss_of(params)
        _check_scalar("loss", value)
        objective, means = eval_fn(params, buffers, val)
        _check_scalar("objective" if task.objective is not None else "loss (in eval mode)", objective)
        for k, v in means.items():
            _check_scalar(f"metric {k!r}", v)
        gen = torch.Generator().manual_seed(seed)
        v_dir = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
        norm = torch.sqrt(sum((v ** 2).sum() for v in v_dir.values()))  # a unit step: no ReLU kink crossed
        v_dir = {k: v / norm for k, v in v_dir.items()}
        grad(loss_of)(params)
        _, d = jvp(loss_of, (params,), (v_dir,))
    except ConfigError:
        raise
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("task", f"the loss cannot be differentiated through the weights ({first}); remove "
                                  f"in-place ops on weights and .item()/float() of tensors that depend on them"
                          ) from None
    h = 1e-6
    plus = loss_of({k: p + h * v_dir[k] for k, p in params.items()})
    minus = loss_of({k: p - h * v_dir[k] for k, p in params.items()})
    fd = float((plus - minus) / (2 * h))
    if not math.isfinite(fd) or abs(float(d) - fd) > 1e-4 * max(1e-3, abs(fd)):
        raise ConfigError("task", f"the loss's derivative through the weights is cut ({float(d):.6g} by forward "
                                  f"mode, {fd:.6g} by finite differences): a float(), .item() or .detach() of a "
                                  f"tensor that depends on the weights stops the hypergradient")


__all__ = ["Dataset", "Metric", "Problem", "Task", "accuracy", "check_problem", "classification_loss",
           "classification_task", "cross_entropy", "init_model", "model_functions", "split_state"]
