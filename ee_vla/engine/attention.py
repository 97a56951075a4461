"""The engine's attention layers: rotary embedding, cache write and split-KV attention in one kernel.

    install_slot_attention(model)   # in place; `StaticEngine` calls it for an "ee_splitkv" model

transformers' Llama/Qwen2 attention runs, between its q/k/v projections and its output projection,
the rotary embedding of queries and keys, the cache's `update` (a `SlotLayer` writes the keys and
values at the window's slots) and the attention function: four to five kernels per layer in a
compiled step, each a few microseconds on a GPU whose step is ~3 ms for 32 layers. With the
`ee_splitkv` attention and a `StaticEngine` cache, `install_slot_attention` gives each attention
module a forward that hands the projections, unrotated, straight to
`splitkv.rope_splitkv_attention`: one kernel rotates the queries, rotates the window's keys and
writes them (and the values) into the cache, attends over the whole cache with the keys split
across programs, and merges the splits.

The new forward computes what transformers' computes, up to floating-point rounding (the rotary
embedding in float32 inside the kernel). It applies only where the kernel does; everywhere else (no
slot cache: plain transformers calls, training; another attention implementation; a prompt longer
than `splitkv.MAX_QUERIES`; a device the kernel does not run on) the module's own forward runs.

Two switches, read when a forward is traced or run: `FUSED` (on; off: the modules' own forwards,
transformers' layers with the split-KV kernel as their attention function) and `MERGE_IN_KERNEL` (on;
off: the splits are merged by torch ops after the kernel, which Inductor fuses with what follows).
The profiler's `--attn-layer fused|fused_torch_merge|transformers` sets them for a run
(`layer_mode`); docs/performance.md compares them.
"""

from __future__ import annotations

import contextlib
import functools

from torch import nn

from ee_vla.engine import splitkv
from ee_vla.engine.cache import SlotLayer
from ee_vla.models.fusion import Columns

FUSED = True
"""Run the fused kernel where it applies (False: the modules' own forwards, as before installing)."""

MERGE_IN_KERNEL = True
"""The last split of each head merges the splits inside the kernel (False: torch ops after it)."""


@contextlib.contextmanager
def layer_mode(fused: bool, merge_in_kernel: bool):
    """Set `FUSED` and `MERGE_IN_KERNEL` inside the block (engines built or compiled in it keep
    what they traced), and restore them after."""
    global FUSED, MERGE_IN_KERNEL
    saved = FUSED, MERGE_IN_KERNEL
    FUSED, MERGE_IN_KERNEL = fused, merge_in_kernel
    try:
        yield
    finally:
        FUSED, MERGE_IN_KERNEL = saved


def _attention_classes() -> tuple[type, ...]:
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    return llama.LlamaAttention, qwen2.Qwen2Attention


def _slot_layer(cache, layer_idx: int) -> SlotLayer | None:
    layers = getattr(cache, "layers", None)
    if layers is None or not 0 <= layer_idx < len(layers):
        return None
    layer = layers[layer_idx]
    return layer if isinstance(layer, SlotLayer) and layer.slots.consecutive else None


def _fused_forward(module, hidden_states, position_embeddings, attention_mask, past_key_values, kwargs):
    """The fused attention's output, or None where it does not apply."""
    if not FUSED or module.training or module.config._attn_implementation != splitkv.ATTN_NAME:
        return None
    if position_embeddings is None or getattr(module, "sliding_window", None) is not None:
        return None
    if splitkv.has_unsupported_kwargs(kwargs):
        return None
    layer = _slot_layer(past_key_values, module.layer_idx)
    if layer is None:
        return None
    B, M = hidden_states.shape[:2]
    D = module.head_dim
    heads = module.config.num_attention_heads
    if splitkv.why_not(hidden_states.dtype, hidden_states.device, heads, M, D, layer.keys, attention_mask):
        return None
    cos, sin = position_embeddings
    if cos.shape != (B, M, D) or layer.keys.shape[0] != B:
        return None
    x = hidden_states
    if isinstance(module.q_proj, Columns):  # `ee_vla.models.fusion`: q/k/v are slices of `qkv_proj`
        x = module.qkv_proj(x)
    q = module.q_proj(x).view(B, M, heads, D)
    k = module.k_proj(x).view(B, M, -1, D)
    v = module.v_proj(x).view(B, M, -1, D)
    out = splitkv.rope_splitkv_attention(
        q, k, v, cos.to(q.dtype), sin.to(q.dtype), layer.keys, layer.values, layer.slots.index, attention_mask,
        counters=layer.counters if MERGE_IN_KERNEL else None, scale=module.scaling, key_ok=layer.slots.key_ok,
    )  # fmt: skip
    return module.o_proj(out.reshape(B, M, heads * D)), None


@functools.cache
def _slot_class(base: type) -> type:
    """A subclass of `base` whose forward runs the fused kernel where it applies, `base`'s elsewhere."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        fused = _fused_forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, kwargs)
        if fused is not None:
            return fused
        return base.forward(
            self,
            hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )

    return type(f"Slot{base.__name__}", (base,), {"forward": forward, "__module__": __name__, "_ee_slot": True})


def install_slot_attention(model: nn.Module) -> int:
    """Give every Llama/Qwen2 attention module of `model` (projections fused by
    `ee_vla.models.fusion` or not) the fused forward, in place; returns how many changed (0 when
    called again). Install after `fuse_projections` (quantisation runs it), never before."""
    classes = _attention_classes()
    done = 0
    for module in model.modules():
        cls = type(module)
        if not isinstance(module, classes) or getattr(cls, "_ee_slot", False):
            continue
        module.__class__ = _slot_class(cls)
        done += 1
    return done
