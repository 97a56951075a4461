"""The VLA's network class: transformers' Llava, with an optional convolutional stem.

`VLANetwork` is `LlavaForConditionalGeneration` (same config, same modules), except that a
vision config carrying `ee_vla_stem="conv"` replaces SigLIP's patch embedding (one linear map of each 16x16 patch) by
`ConvStem`, a few stride-2 3x3 convolutions ending in the same (B, hidden, H/p, W/p) patch grid.
Early convolutions give a from-scratch vision transformer the locality prior it otherwise has to
learn from data (Xiao et al. 2021, "Early convolutions help transformers see better"), which is
what finding a small object in the image needs. Only conv-stem models are built and loaded as
this class (`VLA.create` / `VLA.from_pretrained`); every other model stays a stock Llava, because
transformers renames the keys of a saved Llava checkpoint (`language_model.lm_head.weight` ->
`lm_head.weight`) for that class only, not for a subclass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

STEMS = ("patch", "conv")
"""Vision stems: `patch` (SigLIP's, one strided convolution) | `conv` (`ConvStem`)."""


class ConvStem(nn.Module):
    """log2(patch) stages of a stride-2 3x3 convolution and GELU (channel width doubling up to
    `dim`), then a 1x1 convolution to `dim`: (B, C, H, W) -> (B, dim, H / patch, W / patch), the
    output of the patch embedding it replaces."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        stages = round(math.log2(patch))
        if patch < 2 or 2**stages != patch:
            raise ValueError(f"ConvStem needs a patch size that is a power of two >= 2, got {patch}")
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(stages):
            w = max(dim >> (stages - 1 - i), 16)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GELU()]
            c = w
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, dim, 1)

    @property
    def weight(self) -> torch.Tensor:
        """SigLIP's embeddings read the input dtype from their patch embedding's `weight`."""
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stages(pixels))


class VLANetwork(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` whose vision stem follows `config.vision_config.ee_vla_stem`."""

    def __init__(self, config):
        super().__init__(config)
        vision = config.vision_config
        stem = getattr(vision, "ee_vla_stem", "patch")
        if stem not in STEMS:
            raise ValueError(f"vision_config.ee_vla_stem must be {'|'.join(STEMS)}, got {stem!r}")
        if stem == "conv":
            self.model.vision_tower.embeddings.patch_embedding = ConvStem(
                vision.num_channels, vision.hidden_size, vision.patch_size
            )
