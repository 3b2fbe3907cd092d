"""Training and validation data of a problem: rows fetched by index, batch ``t`` replayed exactly.

A batch is a tensor, a tuple or a dict of tensors (nested), with examples along dimension 0.
Data comes in one of two forms, behind one interface (:class:`Rows`):

- :class:`TensorRows`: tensors held in memory (a tensor, a tuple or a dict of them); batch
  :math:`t` is ``data[idx_t]``, optionally augmented with a generator seeded by ``(seed, t)``.
- :class:`DatasetRows`: a map-style ``torch.utils.data.Dataset`` (``__len__``/``__getitem__``)
  and a collate function.  Only batch :math:`t`'s rows are read, inside
  ``torch.random.fork_rng()`` with torch's RNG seeded by ``(seed, t)``, so random transforms in
  ``__getitem__`` (torchvision v2 draws from torch's RNG) repeat exactly when the reverse sweep
  fetches batch :math:`t` again.  No DataLoader workers: their RNG is per worker.

The index table :math:`idx_t` (epochs of fresh permutations) is drawn once from the seed
(:func:`hpo.core.problem.batch_order`); :meth:`Rows.fetch` is a pure function of
``(idx_t, seed, t)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, final

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, default_collate

from hpo.errors import ConfigError

#: A minibatch: a tensor, or a tuple / list / dict of batches (examples along dimension 0).
Batch = Tensor | tuple[Any, ...] | list[Any] | dict[str, Any]


@final
class Indexed(NamedTuple):
    """A minibatch with the training-set row of each example: what a loss with per-example
    hyperparameters needs to pick its values, :math:`w_{index_1}, \\dots, w_{index_B}`."""

    data: Any
    index: Tensor


def unindexed(batch: Any) -> tuple[Any, Tensor | None]:
    """``(data, index)`` of an :class:`Indexed` batch, ``(batch, None)`` of any other."""
    return (batch.data, batch.index) if isinstance(batch, Indexed) else (batch, None)


def tree_map(fn: Callable[[Tensor], Any], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor, the structure kept (lists become tuples).

    An :class:`Indexed` batch stays one, its rows mapped too (a data-parallel shard keeps its rows).
    """
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Indexed):
        return Indexed(tree_map(fn, batch.data), fn(batch.index))
    if isinstance(batch, Mapping):
        return {k: tree_map(fn, v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(tree_map(fn, v) for v in batch)
    return batch


def leaves(batch: Any) -> list[Tensor]:
    """The tensors of ``batch`` in order."""
    out: list[Tensor] = []
    tree_map(out.append, batch)
    return out


def batch_size_of(batch: Any) -> int:
    """Number of examples in ``batch`` (dimension 0 of its first tensor)."""
    first = leaves(batch)
    return int(first[0].shape[0]) if first and first[0].dim() > 0 else 1


def is_tensor_structure(item: Any) -> bool:
    """Whether ``item`` is a tensor, a number, or a tuple / list / dict of such (what collate accepts)."""
    if isinstance(item, (Tensor, int, float, bool)):
        return True
    if isinstance(item, Mapping):
        return len(item) > 0 and all(isinstance(k, str) and is_tensor_structure(v) for k, v in item.items())
    if isinstance(item, (tuple, list)):
        return len(item) > 0 and all(is_tensor_structure(v) for v in item)
    return False


def cast(batch: Any, dtype: torch.dtype | None, device: torch.device | str | None) -> Any:
    """``batch`` on ``device`` with its floating tensors in ``dtype`` (integer tensors keep theirs)."""
    return tree_map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None), batch)


def batch_seed(seed: int, t: int) -> int:
    """The seed of batch ``t``'s randomness (augmentation, random transforms) in a run seeded ``seed``."""
    return (int(seed) * 7 + 12345) * 1_000_003 + int(t)


#: Seed of the randomness of validation chunk ``i`` (a random transform in eval data repeats on every pass).
EVAL_SEED = -1


class Rows(ABC):
    """Examples indexed ``0..len-1``: the interface every problem's data is read through."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abstractmethod
    def fetch(self, idx: Tensor, seed: int, t: int) -> Batch:
        """The batch of rows ``idx`` at step ``t`` of a run seeded ``seed``; the same on every call."""

    @abstractmethod
    def subset(self, idx: Tensor) -> Rows:
        """The rows ``idx`` (in that order) as data of their own."""

    @abstractmethod
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Rows:
        """The data with floating tensors in ``dtype``, on ``device``."""

    def chunks(self, size: int) -> Iterator[Batch]:
        """Consecutive batches of at most ``size`` rows, in order: the validation pass."""
        n = len(self)
        for j, i in enumerate(range(0, n, size)):
            yield self.fetch(torch.arange(i, min(n, i + size)), EVAL_SEED, j)


@final
class TensorRows(Rows):
    """Rows of in-memory tensors: ``data`` is a tensor, a tuple or a dict of tensors of equal length.

    ``augment(x, generator)``, if set, augments the first tensor of a training batch with a
    generator seeded by :func:`batch_seed` (on the data's device; never the global RNG).
    """

    def __init__(self, data: Batch, augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> None:
        tensors = leaves(data)
        if not tensors or not is_tensor_structure(data):
            raise ConfigError("task", "data must be a tensor, a tuple or a dict of tensors, or a map-style Dataset")
        n = int(tensors[0].shape[0]) if tensors[0].dim() else 0
        if any(x.dim() == 0 or x.shape[0] != n for x in tensors):
            raise ConfigError("task", "every data tensor must have the same length along dimension 0")
        self.data = tree_map(lambda x: x, data)
        self.augment = augment
        self.n = n

    def __len__(self) -> int:
        """Number of rows."""
        return self.n

    def first(self) -> Tensor:
        """The first tensor (the inputs, by convention)."""
        return leaves(self.data)[0]

    def fetch(self, idx: Tensor, seed: int, t: int) -> Batch:
        """``data[idx]``, the first tensor augmented with the generator of ``(seed, t)`` when ``augment`` is set."""
        device = self.first().device
        idx = idx.to(device)
        batch = tree_map(lambda x: x[idx], self.data)
        if self.augment is None or seed == EVAL_SEED:
            return batch
        gen = torch.Generator(device=device).manual_seed(batch_seed(seed, t))
        if isinstance(batch, Tensor):
            return self.augment(batch, gen)
        done = [False]

        def first_only(x: Tensor) -> Tensor:
            if done[0]:
                return x
            done[0] = True
            return self.augment(x, gen)  # type: ignore[misc]

        return tree_map(first_only, batch)

    def subset(self, idx: Tensor) -> TensorRows:
        """The rows ``idx``, indexed out once."""
        idx = idx.to(self.first().device)
        return TensorRows(tree_map(lambda x: x[idx], self.data), self.augment)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TensorRows:
        """Floating tensors in ``dtype``, everything on ``device``."""
        return TensorRows(cast(self.data, dtype, device), self.augment)


@final
class DatasetRows(Rows):
    """Rows of a map-style ``Dataset``, read one batch at a time and collated.

    ``indices`` maps row ``i`` to dataset item ``indices[i]`` (a validation split is such a view;
    nothing is copied).  Each fetch reads its items inside ``torch.random.fork_rng()`` with torch's
    RNG seeded by :func:`batch_seed` ``(seed, t)``, then collates and casts them.
    """

    def __init__(self, dataset: Dataset[Any], collate: Callable[[list[Any]], Any] | None = None,
                 indices: Tensor | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(type(dataset), "__getitem__"):
            raise ConfigError("task", "data must be a map-style Dataset (__len__ and __getitem__), "
                                      "not an IterableDataset: batch t must be fetched again by index")
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("task", "a Dataset must define __len__") from None
        self.dataset = dataset
        self.collate = collate
        self.indices = indices
        self.dtype = dtype
        self.device = device
        self.n = n if indices is None else int(indices.shape[0])

    def __len__(self) -> int:
        """Number of rows (of the view)."""
        return self.n

    def item(self, i: int) -> Any:
        """Dataset item of row ``i``."""
        return self.dataset[int(i) if self.indices is None else int(self.indices[i])]

    def fetch(self, idx: Tensor, seed: int, t: int) -> Batch:
        """Rows ``idx`` read under torch's RNG seeded by ``(seed, t)``, collated and cast."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(seed, t))
            items = [self.item(i) for i in idx.tolist()]
        batch = self.collate(items) if self.collate is not None else default_collate(items)
        return cast(tree_map(lambda x: x, batch), self.dtype, self.device)

    def subset(self, idx: Tensor) -> DatasetRows:
        """A view of rows ``idx``."""
        idx = idx.cpu()
        base = idx if self.indices is None else self.indices[idx]
        return DatasetRows(self.dataset, self.collate, base, self.dtype, self.device)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DatasetRows:
        """Batches will come cast to ``dtype`` on ``device``."""
        return DatasetRows(self.dataset, self.collate, self.indices, dtype or self.dtype, device or self.device)


def as_rows(data: Batch | Dataset[Any] | Rows, collate: Callable[[list[Any]], Any] | None = None,
            field: str = "task") -> Rows:
    """``data`` (tensors, a map-style Dataset, or already :class:`Rows`) behind the :class:`Rows` interface.

    An empty dataset, or a Dataset whose first item is not a tensor structure, is a
    :class:`~hpo.errors.ConfigError` on ``field``.
    """
    if isinstance(data, Rows):
        rows = data
    elif isinstance(data, (Tensor, tuple, list, Mapping)) and not isinstance(data, Dataset):
        if isinstance(data, list) and not all(isinstance(v, Tensor) for v in data):
            raise ConfigError(field, "a list of data must hold tensors; use a Dataset for a list of examples")
        rows = TensorRows(tuple(data) if isinstance(data, list) else data)
    elif isinstance(data, Dataset):
        rows = DatasetRows(data, collate)
    else:
        raise ConfigError(field, f"data must be tensors or a map-style Dataset, got {type(data).__name__}")
    if len(rows) == 0:
        raise ConfigError(field, "the dataset is empty")
    if isinstance(rows, DatasetRows):
        first = rows.item(0)
        if not is_tensor_structure(first):
            raise ConfigError(field, f"a Dataset item must be a tensor, or a tuple or dict of tensors; item 0 is a "
                                     f"{type(first).__name__} (convert it in __getitem__, e.g. with ToTensor)")
    return rows


def check_batch_size(batch_size: int, n: int, field: str = "batch_size") -> None:
    """A minibatch cannot be larger than the data it is drawn from."""
    if batch_size > n:
        raise ConfigError(field, f"a batch of {batch_size} is larger than the {n} training examples; "
                                 f"lower the batch size")

