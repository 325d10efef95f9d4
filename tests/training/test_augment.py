"""Chip augmentation: off is the identity, a flip is a mirror image, one draw moves both chip sizes alike."""

from __future__ import annotations

from dataclasses import replace

import torch

from worker.training import augment


def _chips(size: int) -> torch.Tensor:
    return torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))


def test_no_augmentation_leaves_the_chips_as_they_are():
    chips = _chips(96)
    params = augment.draw(3, augment.NONE, torch.Generator().manual_seed(0))
    assert torch.allclose(augment.apply(chips, params), chips, atol=1e-4)  # float rounding of the sampling grid


def test_a_flip_alone_is_the_mirror_image_at_every_chip_size():
    flip_only = replace(augment.NONE, flip=1.0)
    params = augment.draw(3, flip_only, torch.Generator().manual_seed(0))
    for size in (96, 150):
        chips = _chips(size)
        assert torch.allclose(
            augment.apply(chips, params), chips.flip(-1), atol=1e-4
        )  # float rounding of the sampling grid


def test_the_same_seed_draws_the_same_changes_and_they_stay_in_range():
    settings = augment.AugmentSettings()
    a = augment.apply(_chips(96), augment.draw(3, settings, torch.Generator().manual_seed(4)))
    b = augment.apply(_chips(96), augment.draw(3, settings, torch.Generator().manual_seed(4)))
    assert torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not torch.allclose(a, _chips(96), atol=1e-3)
