"""The inner problem: what one run of inner training needs, bundled once per outer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import final

import torch
from torch import Tensor

from hpo.optimizers.base import Params, UpdateRule
from hpo.runtime.distributed import Communicator

Buffers = dict[str, Tensor]


#: ``loss_fn(params, buffers, x, y) -> (loss, new_buffers)``: the train-mode minibatch loss.
LossFn = Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Buffers]]


#: ``eval_fn(params, buffers, x, y) -> (mean loss, number correct)``: eval mode, no buffer updates.
EvalFn = Callable[[Params, Buffers, Tensor, Tensor], tuple[Tensor, Tensor]]


@final
@dataclass(frozen=True)
class InnerProblem:
    """Data, model functions, optimizer rule and horizon of one inner training run.

    ``grad_clip`` clamps the inner gradient to ``[-c, c]`` and ``hz_clip`` the Hessian-tangent
    product to ``[-c, c]``, as in the authors' code; both are None (off) by default, and with
    either on the hypergradient is no longer exact.

    ``comm`` (set only in a data-parallel run, see :mod:`hpo.runtime.distributed`) makes :meth:`batch`
    return this rank's shard of every minibatch; the backends then average gradients and their
    derivatives over ranks.  The validation set is not sharded: every rank evaluates all of it.
    """

    loss_fn: LossFn
    eval_fn: EvalFn
    params: Params
    buffers: Buffers
    rule: UpdateRule
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    horizon: int
    batch_size: int
    seed: int = 0
    grad_clip: float | None = None
    hz_clip: float | None = None
    eval_batch_size: int = 4096
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    comm: Communicator | None = None

    order: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Draw the minibatch order of the whole run once: row ``t`` holds the indices of batch ``t``."""
        order = batch_order(self.train_x.shape[0], self.batch_size, self.horizon, self.seed, self.train_x.device)
        object.__setattr__(self, "order", order)

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        """Minibatch ``t`` exactly as :meth:`batches` yields it, augmentation included, in O(1).

        The reverse sweep recomputes segments from checkpoints and needs any batch again without
        replaying the steps before it.  With ``comm`` set, the whole minibatch is drawn (and
        augmented) as in one process and this rank keeps its shard of it.
        """
        idx = self.order[t]
        x = self.train_x[idx]
        if self.augment is not None:
            x = self.augment(x, augment_generator(self.train_x.device, self.seed, t))
        y = self.train_y[idx]
        if self.comm is not None:
            return self.comm.shard(x), self.comm.shard(y)
        return x, y

    def batches(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Yield ``(t, x_t, y_t)`` for ``t = 0..horizon-1``: epochs of shuffled minibatches.

        Deterministic given ``seed``; an incomplete last batch of an epoch is dropped.  With
        ``augment`` set, minibatch ``t`` is augmented on its device with a generator seeded by
        ``(seed, t)``, so every backend, the reference unroll and a replay see the same batches.
        """
        for t in range(self.horizon):
            yield (t, *self.batch(t))


def augment_generator(device: torch.device | str, seed: int, t: int) -> torch.Generator:
    """The generator that augments minibatch ``t`` of a run seeded ``seed`` (never the global RNG)."""
    return torch.Generator(device=device).manual_seed((int(seed) * 7 + 12345) * 1_000_003 + int(t))


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


def evaluate(problem_eval: EvalFn, params: Params, buffers: Buffers, x: Tensor, y: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy of ``params`` on ``(x, y)``, in chunks; returns 0-d tensors."""
    total_loss = torch.zeros((), dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    correct = torch.zeros((), device=x.device)
    n = x.shape[0]
    for i in range(0, n, chunk):
        loss, corr = problem_eval(params, buffers, x[i:i + chunk], y[i:i + chunk])
        total_loss = total_loss + loss.detach() * (min(n, i + chunk) - i)
        correct = correct + corr
    return total_loss / n, correct / n
