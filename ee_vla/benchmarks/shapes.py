"""Random models of named real shapes, built directly on the target device, and their inputs.

* ``openvla-7b``: OpenVLA's language backbone, Llama-2-7B (hidden 4096, 32 layers, 32 heads,
  intermediate 11008, vocab 32064) behind a 276-token prefix (256 image patches + the prompt).
  The vision tower is excluded: the prefix is random token ids.
* ``qwen2-0.5b``: Qwen2-0.5B (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864,
  vocab 151936, tied embeddings), same 276-token prefix.
* ``tiny`` / ``small``: the project's VLA presets (`ee_vla.models.vla.PRESETS`), the whole Llava
  model: the prefill includes the vision tower, as in the policy; built to read one camera
  (`pixels`) or several (`cameras`: each adds its image tokens to the prefix).

A 7B model must never be materialised on the CPU first: `build_lm` creates the parameters under a
`torch.device(device)` context directly in the target dtype, so the 13.5 GB of bf16 weights are
allocated and randomly initialised on the GPU (seconds). Random weights: latency is real, token
values and Jacobi convergence are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

OPENVLA_PREFIX = 276
"""OpenVLA's prompt: 256 image patch tokens + ~20 text tokens."""


@dataclass(frozen=True)
class LMShape:
    """A causal LM's sizes (random weights) and the prefix length it decodes after."""

    arch: Literal["llama", "qwen2"]
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    prefix_len: int = OPENVLA_PREFIX
    tie_embeddings: bool = False


LM_SHAPES: dict[str, LMShape] = {
    "openvla-7b": LMShape("llama", 4096, 32, 32, 32, 11008, 32064),
    "qwen2-0.5b": LMShape("qwen2", 896, 24, 14, 2, 4864, 151936, tie_embeddings=True),
}
VLA_SHAPES: tuple[str, ...] = ("tiny", "small")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flex_attention", "ee_splitkv")
"""transformers attention implementations an LM shape can be built with (`build_workload`);
`ee_splitkv` is ee_vla's split-KV kernel for short query blocks (`ee_vla.engine.splitkv`)."""
SHAPES: tuple[str, ...] = (*LM_SHAPES, *VLA_SHAPES)


def check_attn_implementation(value: str, owner: str) -> None:
    """Raise ValueError naming `owner` unless `value` is one of `ATTN_IMPLEMENTATIONS`."""
    if value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{owner} must be one of {'|'.join(ATTN_IMPLEMENTATIONS)}, got {value!r}")


def build_lm(
    shape: LMShape, device: str | torch.device, dtype: torch.dtype, seed: int = 0, attn_implementation: str = "sdpa"
):
    """A randomly initialised LM of `shape`, created directly on `device` in `dtype` (eval mode),
    with transformers' `attn_implementation` (one of `ATTN_IMPLEMENTATIONS`)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if attn_implementation == "ee_splitkv":
        import ee_vla.engine.splitkv  # noqa: F401  (registers the name with transformers)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if shape.arch not in classes:
        raise ValueError(f"LMShape.arch must be llama|qwen2, got {shape.arch!r}")
    cfg_cls, model_cls = classes[shape.arch]
    cfg = cfg_cls(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls._from_config(cfg, dtype=dtype)
    return model.eval()


def random_camera_images(vla, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random (batch_size, S, S, 3) uint8 images of every camera `vla` reads (S = its image size),
    keyed by observation key, drawn from `rng` in the order of `vla.cameras`."""
    S = vla.image_size
    return {c: rng.integers(0, 256, (batch_size, S, S, 3), dtype=np.uint8) for c in vla.cameras}


@dataclass
class Workload:
    """A model, one batch of its inputs, and what a chunk of actions is for it."""

    name: str
    model: object
    inputs: dict[str, torch.Tensor]
    n_tokens: int
    """Tokens per chunk (chunk_size x action_dim)."""
    unit: int
    """Tokens per action."""
    action_range: tuple[int, int]
    vision_in_prefill: bool
    info: dict

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_workload(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    batch_size: int = 1,
    chunk_size: int = 3,
    prefix_len: int | None = None,
    left_pad: int = 0,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    cameras: Sequence[str] | None = None,
) -> Workload:
    """Build the model of shape `name` and a batch of inputs. LM shapes: random prefix ids
    (row b left-padded by b * `left_pad` tokens), the last 256 ids are the action tokens (OpenVLA's
    layout), 7 tokens per action. VLA presets: random images of each of its `cameras` (observation
    keys; None = `pixels` alone) and an instruction through the VLA's own prompt builder.
    `attn_implementation` (LM shapes): transformers' attention of the model."""
    check_attn_implementation(attn_implementation, "build_workload attn_implementation")
    if name in LM_SHAPES and cameras is not None and tuple(cameras) != ("pixels",):
        raise ValueError("cameras applies to the VLA shapes only; an LM shape's prefix is random token ids")
    if name in LM_SHAPES:
        shape = LM_SHAPES[name]
        P = prefix_len or shape.prefix_len
        model = build_lm(shape, device, dtype, seed, attn_implementation)
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, shape.vocab_size - 256, (batch_size, P), generator=g)
        mask = torch.ones_like(ids)
        for b in range(batch_size):
            mask[b, : min(b * left_pad, P - 1)] = 0
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        info = {"shape": asdict(shape), "prefix_len": P}
        return Workload(
            name, model, inputs, 7 * chunk_size, 7, (shape.vocab_size - 256, shape.vocab_size - 1), False, info
        )
    if name in VLA_SHAPES:
        from ee_vla.models.vla import VLA

        if prefix_len is not None:
            raise ValueError("prefix_len applies to LM shapes only; a VLA's prefix is its prompt")
        if attn_implementation != "sdpa":
            raise ValueError("attn_implementation applies to LM shapes only; the VLA presets use sdpa")
        vla = VLA.create(name, chunk_size=chunk_size, seed=seed, **({} if cameras is None else {"cameras": cameras}))
        vla.model.to(device=device, dtype=dtype)
        images = random_camera_images(vla, batch_size, np.random.default_rng(seed))
        instr = ["pick up the red cube and put it in the basket"] * batch_size
        inputs = vla.build_inputs(vla.camera_images(images), instr)
        info = {
            "spec": vla.meta.get("spec"),
            "prefix_len": int(inputs["input_ids"].shape[1]),
            "cameras": list(vla.cameras),
        }
        return Workload(name, vla.model, inputs, vla.n_action_tokens, vla.action_dim, vla.action_range, True, info)
    raise ValueError(f"unknown shape {name!r}: choose one of {', '.join(SHAPES)}")
