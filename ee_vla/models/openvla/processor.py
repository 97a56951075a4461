"""OpenVLA's image preprocessing, with Pillow as its processor does it.

Per image: an RGB PIL image; with the `letterbox` strategy, padded to a square with a border of
the (last tower's) mean colour; then, per vision tower, resized (`resize-naive`: to S x S;
otherwise the shorter side to S, keeping the aspect ratio) with the tower's interpolation,
centre-cropped to S x S, scaled to [0, 1] and normalised with the tower's mean and std. The
towers' 3-channel images are stacked into one (3 * towers, S, S) input. Using Pillow's resampling
(not torch's) keeps the pixels those of the processor the checkpoint was trained with.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ee_vla.models.openvla.format import ImageTransform

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_RESAMPLE["nearest"] = Image.Resampling.NEAREST


def letterbox(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad to a square (a symmetric border of `fill`, the odd pixel of an odd difference left out)."""
    (w, h), side = img.size, max(img.size)
    dx, dy = int((side - w) / 2), int((side - h) / 2)
    out = Image.new("RGB", (w + 2 * dx, h + 2 * dy), fill)
    out.paste(img, (dx, dy))
    return out


def _resize(img: Image.Image, t: ImageTransform, naive: bool) -> Image.Image:
    w, h = img.size
    if naive:
        size = (t.size, t.size)
    elif w <= h:
        size = (t.size, int(t.size * h / w))
    else:
        size = (int(t.size * w / h), t.size)
    return img if size == (w, h) else img.resize(size, _RESAMPLE[t.interpolation])


def _center_crop(img: Image.Image, s: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (s, s):
        return img
    left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
    return img.crop((left, top, left + s, top + s))


def _to_input(img: Image.Image, t: ImageTransform) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(t.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(t.std, dtype=torch.float32).view(3, 1, 1)
    return x.sub(mean).div(std)


def preprocess(
    pixels: np.ndarray, transforms: tuple[ImageTransform, ...], strategy: str, fill: tuple[int, int, int]
) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3 * len(transforms), S, S) float32, as OpenVLA's processor
    (`fill`: the letterbox border's colour)."""
    out = []
    for arr in pixels:
        img = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
        if strategy == "letterbox":
            img = letterbox(img, fill)
        parts = [_to_input(_center_crop(_resize(img, t, strategy == "resize-naive"), t.size), t) for t in transforms]
        out.append(torch.cat(parts, dim=0))
    return torch.stack(out)
