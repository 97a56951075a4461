"""Image augmentation on a batch of model-ready images, on the model's device.

Random shift (DrQ: pad with the edge pixels and crop back at a random integer offset) and colour
jitter (brightness, contrast, saturation factors per image). Both act on the [0, 1] image, so the
batch is un-normalised with the VLA's mean/std first and normalised again afterwards. A dedicated
`torch.Generator` drives them, so a resumed run continues the same random stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> same shape, each image shifted by up to `pad` pixels in x and y."""
    if pad <= 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator, device=generator.device).to(x.device)
    rows = off[:, 0:1] + torch.arange(H, device=x.device)[None]  # (B, H)
    cols = off[:, 1:2] + torch.arange(W, device=x.device)[None]  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _factors(n: int, strength: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return (1.0 + strength * (2.0 * u - 1.0)).view(n, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor, brightness: float, contrast: float, saturation: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> jittered, clamped to [0, 1]."""
    B = x.shape[0]
    if brightness > 0:
        x = (x * _factors(B, brightness, generator, x.device)).clamp(0, 1)
    if contrast > 0:
        mean = _gray(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * _factors(B, contrast, generator, x.device) + mean).clamp(0, 1)
    if saturation > 0:
        g = _gray(x)
        x = ((x - g) * _factors(B, saturation, generator, x.device) + g).clamp(0, 1)
    return x


def augment_pixel_values(
    pixel_values: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    shift: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> torch.Tensor:
    """Augment normalised model inputs (B, 3, S, S); `shift` is the pad as a fraction of S."""
    dtype = pixel_values.dtype
    m = torch.tensor(mean, device=pixel_values.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=pixel_values.device).view(1, 3, 1, 1)
    x = pixel_values.float() * s + m
    x = random_shift(x, round(shift * x.shape[-1]), generator)
    x = color_jitter(x, brightness, contrast, saturation, generator)
    return ((x - m) / s).to(dtype)
