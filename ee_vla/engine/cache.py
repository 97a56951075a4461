"""A `StaticEngine`'s preallocated KV cache (a `transformers.Cache` of `SlotLayer`s, written at
the slots the engine sets before each forward) and the static input buffers of its window widths
and prompt buckets (their addresses are baked into the CUDA graphs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import CacheLayerMixin


class _Slots:
    """The cache slots written by the forward that is running now (shared by all layers).

    `consecutive`: the index is always `first, first + 1, ...` (a `StaticEngine`'s prompts and
    windows are), which the fused attention kernel (`ee_vla.engine.attention`) relies on.
    `key_ok`: None, or the (batch, capacity) bool flags of the slots that are keys, from which every
    mask of the forwards is made (a `StaticEngine`'s `_mask`: a query sees the slots up to its own
    that are keys, and its own); the fused kernel then computes the mask instead of reading it."""

    def __init__(self, index: torch.Tensor, consecutive: bool = False, key_ok: torch.Tensor | None = None):
        self.index = index
        self.consecutive = consecutive
        self.key_ok = key_ok


class SlotLayer(CacheLayerMixin):
    """One layer's preallocated keys and values (batch, kv_heads, capacity, head_dim).

    `update` writes the new entries at the slots in `slots.index` (set by the engine before each
    forward; a static buffer while a CUDA graph is captured) and returns the whole cache: the mask
    decides what each query sees. The fused attention (`ee_vla.engine.attention`) writes them
    itself, inside its kernel, and uses `counters` (None: it merges with torch ops).
    """

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: _Slots, counters: torch.Tensor | None = None):
        super().__init__()
        self.keys, self.values, self.slots = keys, values, slots
        # int32 zeros, one per (batch row, query head): the fused attention kernel's split counters
        self.counters = counters
        self.max_cache_len = keys.shape[2]
        self.dtype, self.device = keys.dtype, keys.device
        self.batch_size, self.num_heads = keys.shape[:2]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the tensors are allocated up front (their addresses must never change)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        idx = self.slots.index
        if (
            key_states.shape[2] != idx.shape[0]
            or key_states.shape[:2] != self.keys.shape[:2]
            or (key_states.shape[-1] != self.keys.shape[-1] or value_states.shape[-1] != self.values.shape[-1])
        ):
            raise ValueError(
                f"KV states of shape {tuple(key_states.shape)} do not fit a static cache of shape "
                f"{tuple(self.keys.shape)} written at {idx.shape[0]} slots"
            )
        self.keys.index_copy_(2, idx, key_states.to(self.dtype))
        self.values.index_copy_(2, idx, value_states.to(self.dtype))
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_seq_length(self) -> int:
        """0: the engine always passes explicit position ids and masks, nothing reads a length."""
        return 0

    def get_max_length(self) -> int:
        return self.max_cache_len


@dataclass
class _WidthBuffers:
    """Static inputs of one window width (their addresses are baked into its CUDA graph). Its
    position ids and cache slots are computed inside the forward from the engine's `_start`,
    `_pos_base` and `_slot_base`, so that a step copies in only its tokens and its start."""

    ids: torch.Tensor  # (B, w) token ids
    arange: torch.Tensor  # (w,) 0 .. w-1


@dataclass
class _PromptBuffers:
    """Static inputs of one prompt bucket (length Pb)."""

    ids: torch.Tensor  # (B, Pb + L) token ids, left-padded, then the L guess tokens run after the prompt
    mask: torch.Tensor  # (B, Pb + L) attention mask (long; 1 over the guess tokens)
    slots: torch.Tensor  # (Pb + L,) 0 .. Pb + L - 1
    pixels: torch.Tensor | None = None  # (B, C, H, W) images of a VLA prompt


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
