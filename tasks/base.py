"""A task bundles data (train/test), a model factory and the classification loss.

The model is always called functionally, ``functional_call(model, (params, buffers), x)``, so
the inner loop is a pure function of the weights.  BatchNorm running statistics are state that is
updated but not differentiated: the train-mode loss returns fresh buffers and never mutates the
ones it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hpo.core.problem import Buffers, EvalFn, LossFn
from hpo.optimizers.base import Params


@final
@dataclass(frozen=True)
class Task:
    """Data and model of one classification problem.

    ``make_model(num_classes)`` builds a fresh, randomly initialised model (seed it with
    :func:`init_model`).  ``batch_size`` is the task's default inner minibatch size.  ``augment``,
    if set, maps a training minibatch and a ``torch.Generator`` (on the data's device) to an
    augmented minibatch (see :mod:`hpo.tasks.augment`).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    make_model: Callable[[], nn.Module]
    num_classes: int
    batch_size: int = 128
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Task:
        """The task with inputs in ``dtype`` and all data on ``device``."""
        def cast(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

        return Task(self.name, cast(self.train_x), self.train_y.to(device), cast(self.test_x),
                    self.test_y.to(device), self.make_model, self.num_classes, self.batch_size, self.augment)


def init_model(task: Task, seed: int, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
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


def model_functions(model: nn.Module) -> tuple[LossFn, EvalFn]:
    """The pure train-mode loss and eval-mode (loss, correct) functions of ``model``.

    ``loss_fn(params, buffers, x, y) -> (loss, new_buffers)`` runs the model in train mode on
    cloned buffers and returns them; ``eval_fn(params, buffers, x, y) -> (loss, n_correct)`` runs
    it in eval mode.
    """
    def loss_fn(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> tuple[Tensor, Buffers]:
        new_buffers = {k: v.clone() for k, v in buffers.items()}
        model.train()
        logits = functional_call(model, (params, new_buffers), (x,))
        return cross_entropy(logits, y), new_buffers

    def eval_fn(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        model.eval()
        logits = functional_call(model, (params, buffers), (x,))
        model.train()
        correct = (logits.argmax(-1) == y).sum().to(logits.dtype)
        return cross_entropy(logits, y), correct

    return loss_fn, eval_fn
