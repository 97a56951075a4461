"""LoRA for distillation (`DistillConfig.lora_rank`), through peft.

`add_lora` puts rank-r adapters (peft's `inject_adapter_in_model`) on the language model's
attention and MLP projections and freezes every other weight: a 7B student then trains a few
million parameters. `merged_lora` folds the adapters into their base weights for as long as a save
takes, with the base layers back in their places, so the saved model has the plain layout (an ee_vla
model or an OpenVLA checkpoint, loadable without peft); training then continues unmerged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The language model's projections that get adapters (Llama, Qwen2 and Mistral names)."""


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None = None) -> int:
    """Adapters of `rank` (scaling alpha / rank, alpha = 2 * rank by default) on the Llava-style
    `model`'s language model; every other parameter frozen. Returns the trainable parameter count."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ImportError("lora_rank needs peft: pip install peft (or ee_vla[lora])") from e
    lm = model.model.language_model
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, lm)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m).__module__.startswith("peft.tuners.lora")]


@contextmanager
def merged_lora(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, `model` holds plain layers with the adapters folded in (a no-op without
    adapters); afterwards the adapter layers are back and unmerged."""
    swaps = []
    for name, layer in _lora_layers(model):
        if not hasattr(layer, "base_layer") or not hasattr(layer, "merge"):
            continue  # the adapters' own submodules
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer.merge()
        setattr(parent, attr, layer.base_layer)
        swaps.append((parent, attr, layer))
    try:
        yield
    finally:
        for parent, attr, layer in swaps:
            setattr(parent, attr, layer)
            layer.unmerge()
