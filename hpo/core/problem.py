"""The inner problem: what one run of inner training needs, bundled once per outer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, final

import torch
from torch import Tensor

from hpo.core.data import Batch, Indexed, Rows, batch_seed, batch_size_of, tree_map
from hpo.optimizers.base import Hyper, Params, UpdateRule
from hpo.runtime.distributed import Communicator

Buffers = dict[str, Tensor]


#: ``loss_fn(params, buffers, batch, hyper) -> (loss, new_buffers)``: the train-mode minibatch loss.  ``hyper``
#: holds the values in force at the step (:func:`hpo.core.step.hyper_at_step`); a loss with hyperparameters
#: (:mod:`hpo.optimizers.loss_hypers`) reads its own, any other ignores them.
LossFn = Callable[[Params, Buffers, Batch, Hyper], tuple[Tensor, Buffers]]


#: ``eval_fn(params, buffers, batch, metrics=True) -> (objective, {metric: batch mean})``: eval mode, no
#: buffer updates.  The objective is differentiable in ``params`` (the validation loss unless the problem
#: names another); with ``metrics=False`` the metrics are skipped (an empty dict).
EvalFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


#: ``score_fn(objective, metrics) -> score``: the problem's ranking metric, oriented so larger is better.
ScoreFn = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


@final
@dataclass(frozen=True)
class MetricLabel:
    """The name and direction of a problem's ranking metric, to show a score in its own units.

    Searches rank by a score :math:`s` that is larger when better; the metric :math:`m` is
    :math:`m = s` when ``higher`` (accuracy) and :math:`m = -s` otherwise (an RMSE, bits per
    character, or the objective itself when a problem has no metrics: ``name == "loss"``).

    Example::

        >>> MetricLabel("rmse", higher=False).value(-56.77)
        56.77
    """

    name: str = "acc"
    higher: bool = True

    def value(self, score: float) -> float:
        """The metric :math:`m` of a score :math:`s`: :math:`s` if higher is better, else :math:`-s`."""
        return score if self.higher else -score

    @property
    def is_loss(self) -> bool:
        """Whether the metric is the validation objective itself (a problem without metrics)."""
        return self.name == "loss"

    @property
    def direction(self) -> str:
        """``higher`` or ``lower``: which way is better."""
        return "higher" if self.higher else "lower"

    def describe(self) -> str:
        """``accuracy`` for the default metric, else ``rmse (lower is better)``: for axis labels and headings."""
        return "accuracy" if (self.name, self.higher) == ("acc", True) else f"{self.name} ({self.direction} is better)"


#: The label of a classifier: accuracy, higher is better (what every output showed before problems had metrics).
ACCURACY = MetricLabel()


def negative_loss(loss: Tensor, metrics: Mapping[str, Tensor]) -> Tensor:
    """The score of a problem without metrics: minus its validation objective."""
    return -loss


@final
@dataclass(frozen=True)
class InnerProblem:
    """Data, model functions, optimizer rule and horizon of one inner training run.

    ``train`` and ``val`` are :class:`~hpo.core.data.Rows` (in-memory tensors or a map-style
    Dataset); minibatch ``t`` is ``train.fetch(order[t], seed, t)``.  ``score_fn`` turns the
    validation objective and metrics into the score searches rank by (larger is better: the
    accuracy of a classifier, minus the RMSE of a regression).  ``model_loss(model, batch)`` is the
    user's loss on a stateful model, for methods that train through ``torch.optim`` (PBT,
    schedule-free).

    ``grad_clip`` clamps the inner gradient to ``[-c, c]`` and ``hz_clip`` the Hessian-tangent
    product to ``[-c, c]``, as in the authors' code; both are None (off) by default, and with
    either on the hypergradient is no longer exact.

    ``comm`` (set only in a data-parallel run, see :mod:`hpo.runtime.distributed`) makes :meth:`batch`
    return this rank's shard of every minibatch; the backends then average gradients and their
    derivatives over ranks.  The validation set is not sharded: every rank evaluates all of it.

    ``example_ids`` (set when the loss has per-example hyperparameters) holds the training-set row of
    each row of ``train``; :meth:`batch` then returns an :class:`~hpo.core.data.Indexed` batch whose
    ``index`` is ``example_ids[order[t]]``, the rows the loss picks its weights at.
    """

    loss_fn: LossFn
    eval_fn: EvalFn
    params: Params
    buffers: Buffers
    rule: UpdateRule
    train: Rows
    val: Rows
    horizon: int
    batch_size: int
    seed: int = 0
    grad_clip: float | None = None
    hz_clip: float | None = None
    eval_batch_size: int = 4096
    score_fn: ScoreFn = negative_loss
    model_loss: Callable[[Any, Batch], Tensor] | None = None
    comm: Communicator | None = None
    example_ids: Tensor | None = None

    order: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Draw the minibatch order of the whole run once: row ``t`` holds the indices of batch ``t``."""
        order = batch_order(len(self.train), self.batch_size, self.horizon, self.seed)
        object.__setattr__(self, "order", order)

    def batch(self, t: int) -> Batch:
        """Minibatch ``t`` exactly as :meth:`batches` yields it, augmentation included, in O(1).

        The reverse sweep recomputes segments from checkpoints and needs any batch again without
        replaying the steps before it.  With ``comm`` set, the whole minibatch is drawn (and
        augmented) as in one process and this rank keeps its shard of it.
        """
        batch = self.train.fetch(self.order[t], self.seed, t)
        if self.example_ids is not None:
            batch = Indexed(batch, self.example_ids[self.order[t]])
        if self.comm is not None:
            return tree_map(self.comm.shard, batch)
        return batch

    def seed_step(self, t: int) -> None:
        """Seed torch's global RNG (CPU and every CUDA device) for inner step ``t``.

        Random ops of the loss (dropout masks) then depend only on ``(seed, rank, t)``:
        :math:`\\mathrm{mask}_t = \\mathrm{draw}(\\mathrm{step\\_seed}(s, t, r))`, so the forward pass,
        a replay of any segment in the reverse sweep, the reference unroll and every finite-difference
        run draw the same masks at step ``t``, whatever ran before.  Callers run their loop inside
        ``torch.random.fork_rng`` (:func:`hpo.core.backend.run_inner` does) and call this before each step.
        """
        torch.manual_seed(step_seed(self.seed, t, self.comm.rank if self.comm is not None else 0))

    def batches(self) -> Iterator[tuple[int, Batch]]:
        """Yield ``(t, batch_t)`` for ``t = 0..horizon-1``: epochs of shuffled minibatches.

        Deterministic given ``seed``; an incomplete last batch of an epoch is dropped.  Batch ``t``'s
        randomness (augmentation, random transforms of a Dataset) is seeded by ``(seed, t)``, so
        every backend, the reference unroll and a replay see the same batches.
        """
        for t in range(self.horizon):
            yield t, self.batch(t)

    def evaluate(self, params: Params, buffers: Buffers) -> tuple[Tensor, Tensor]:
        """``(validation objective, score)`` of ``(params, buffers)``, in chunks, without gradients."""
        with torch.no_grad():
            loss, metrics = evaluate(self.eval_fn, params, buffers, self.val, self.eval_batch_size)
        return loss, self.score_fn(loss, metrics)


def step_seed(seed: int, t: int, rank: int = 0) -> int:
    """The global RNG's seed at inner step ``t`` of a run seeded ``seed`` on data-parallel rank ``rank``.

    Distinct from :func:`~hpo.core.data.batch_seed` (the augmentation's), so dropout masks and
    augmentation draws are not the same stream; each rank draws its own masks for its shard.
    """
    return (batch_seed(seed, t) ^ 0x5EED_D209) + (int(rank) << 44)


def augment_generator(device: torch.device | str, seed: int, t: int) -> torch.Generator:
    """The generator that augments minibatch ``t`` of a run seeded ``seed`` (never the global RNG)."""
    return torch.Generator(device=device).manual_seed(batch_seed(seed, t))


def batch_order(n: int, batch_size: int, horizon: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """``(horizon, b)`` indices: row ``t`` is minibatch ``t`` of :func:`batch_index_stream`."""
    rows = list(batch_index_stream(n, batch_size, horizon, seed))
    order = torch.stack(rows) if rows else torch.zeros((0, min(batch_size, n)), dtype=torch.long)
    return order.to(device) if device is not None else order


def batch_index_stream(n: int, batch_size: int, horizon: int, seed: int,
                       device: torch.device | str | None = None) -> Iterator[Tensor]:
    """Minibatch indices for ``horizon`` steps: a fresh permutation of ``range(n)`` per epoch.

    The permutation is drawn on the CPU (the same for every device) and moved to ``device`` once
    per epoch, not once per step.
    """
    bs = min(batch_size, n)
    per_epoch = n // bs
    gen = torch.Generator().manual_seed(int(seed))
    t = 0
    while t < horizon:
        perm = torch.randperm(n, generator=gen)
        if device is not None:
            perm = perm.to(device)
        for b in range(per_epoch):
            if t >= horizon:
                return
            yield perm[b * bs:(b + 1) * bs]
            t += 1


def evaluate(eval_fn: EvalFn, params: Params, buffers: Buffers, rows: Rows,
             chunk: int = 4096) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean objective and mean metrics of ``params`` over ``rows``, in chunks; 0-d tensors.

    Each chunk's values are weighted by its size: :math:`\\bar m = \\frac1n \\sum_c n_c m_c`.
    Metrics are summed in float64, so equal counts give equal accuracies whatever the dtype.
    """
    n = len(rows)
    total_loss: Tensor | None = None
    totals: dict[str, Tensor] = {}
    for batch in rows.chunks(chunk):
        loss, metrics = eval_fn(params, buffers, batch)
        size = batch_size_of(batch)
        total_loss = loss.detach() * size if total_loss is None else total_loss + loss.detach() * size
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0) + v.detach().double() * size
    assert total_loss is not None
    return total_loss / n, {k: v / n for k, v in totals.items()}
