"""Batch image augmentation: shapes kept, shifts are integer translations, reproducible."""

from __future__ import annotations

import torch

from ee_vla.training.augment import augment_pixel_values, color_jitter, random_shift


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_strength_is_identity():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    y = augment_pixel_values(x, (0.5,) * 3, (0.5,) * 3, _gen())
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_shift_is_a_crop_of_the_padded_image():
    x = torch.rand(4, 3, 12, 12)
    y = random_shift(x, 2, _gen(1))
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(4):
        assert any(torch.equal(y[b], padded[b, :, i : i + 12, j : j + 12]) for i in range(5) for j in range(5)), (
            f"image {b} is not a shifted copy"
        )


def test_jitter_stays_in_range_and_is_reproducible():
    x = torch.rand(5, 3, 8, 8)
    a = color_jitter(x, 0.4, 0.4, 0.4, _gen(3))
    b = color_jitter(x, 0.4, 0.4, 0.4, _gen(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    full = augment_pixel_values(x * 2 - 1, (0.5,) * 3, (0.5,) * 3, _gen(), 0.1, 0.2, 0.2, 0.2)
    assert full.shape == x.shape and full.dtype == x.dtype
