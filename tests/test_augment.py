"""Device augmentation: correct transforms, deterministic per seed, no global RNG."""

from __future__ import annotations

import pytest
import torch

from hpo.core.data import TensorRows
from hpo.core.problem import InnerProblem
from hpo.runtime.device import device_for_tests
from hpo.tasks.augment import Augment, cutout, random_crop, random_flip

DEV = device_for_tests()


def images(n: int = 6, c: int = 2, size: int = 8) -> torch.Tensor:
    """Distinct, non-zero pixel values so every window and mirror is identifiable."""
    return (torch.arange(n * c * size * size, dtype=torch.float32, device=DEV) + 1).view(n, c, size, size)


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def test_crop_is_a_window_of_the_padded_image() -> None:
    x = images()
    out = random_crop(x, 2, gen(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(x.shape[0]):
        hits = [(a, b) for a in range(5) for b in range(5) if torch.equal(out[i], padded[i, :, a:a + 8, b:b + 8])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # not the same window for every image


def test_flip_mirrors_some_images_and_keeps_the_others() -> None:
    x = images(n=16)
    out = random_flip(x, gen(1))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(16)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(16)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_cutout_zeroes_one_clipped_square_and_nothing_else() -> None:
    x = images()
    out = cutout(x, 4, gen(2))
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    for i in range(x.shape[0]):
        mask = zero[i, 0]
        assert torch.equal(mask, zero[i, 1])  # the same square in every channel
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(mask.sum()) == len(rows) * len(cols)  # a (clipped) rectangle


def test_deterministic_per_seed_without_global_rng() -> None:
    aug = Augment(pad=2, flip=True, cutout=4)
    x = images()
    state = torch.random.get_rng_state()
    a, b, c = aug(x, gen(7)), aug(x, gen(7)), aug(x, gen(8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_inner_problem_batches_are_augmented_reproducibly() -> None:
    x = images(n=12)
    y = torch.arange(12, device=DEV)

    def problem(seed: int) -> InnerProblem:
        rows = TensorRows((x, y), Augment(pad=2, flip=True))
        return InnerProblem(None, None, {}, {}, None, rows, rows, horizon=5, batch_size=4,  # type: ignore[arg-type]
                            seed=seed)

    first = [b[1][0] for b in problem(3).batches()]
    again = [b[1][0] for b in problem(3).batches()]
    other = [b[1][0] for b in problem(4).batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].device == x.device and first[0].shape == (4, 2, 8, 8)


def test_parse() -> None:
    assert Augment.parse("crop,flip", 32) == Augment(pad=4, flip=True, cutout=0)
    assert Augment.parse("cutout", 32) == Augment(cutout=16)
    assert Augment.parse("none") is None and Augment.parse(None) is None
    with pytest.raises(ValueError, match="unknown augmentation 'zoom'"):
        Augment.parse("crop,zoom")
