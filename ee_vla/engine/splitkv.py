"""Split-KV attention for a few queries over a long cache: transformers' ``attn_implementation="ee_splitkv"``.

A decode step of the static engine attends from a handful of queries (1 for AR, 22 for OpenVLA's
Jacobi window) to every slot of the static cache (~360 for the 7B shape). torch's fused SDPA kernels
(cuDNN, CUTLASS, flash) tile the queries by 64 and give each (batch, head) one thread block that
walks the whole key range: 32 blocks for a 7B layer on a 132-SM GPU, 21 us per layer at 22 queries
(docs/performance.md, "The 7B step on an H200"; FlexAttention and the math backend are slower still).

This module splits the *keys* instead (flash-decoding): a Triton kernel gives each
(batch, head, key split) its own program, which computes the split's unnormalised softmax-weighted
sum of values with its running max and denominator; a few torch ops then merge the splits (inside a
compiled forward, Inductor fuses them into one kernel). The attention is the same function as
SDPA's with an additive mask, up to floating-point rounding.

Use it by building a model with ``attn_implementation="ee_splitkv"`` (or setting
``config._attn_implementation``) after importing this module, which registers the name with
transformers' `AttentionInterface` and `AttentionMaskInterface`. A forward runs the kernel only
where it applies, and transformers' SDPA otherwise, so the same model runs anywhere:

* Triton is importable and the tensors are on a CUDA device (or on the CPU under Triton's
  interpreter, ``TRITON_INTERPRET=1``, which is how the CPU tests run the kernel);
* the query length is at most `MAX_QUERIES` (prefills of long prompts go to SDPA);
* an explicit 4-D additive float mask is given (the static engine always passes one);
* float16, bfloat16 or float32; head dim a power of two in 16 .. 256; no dropout.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

ATTN_NAME = "ee_splitkv"
"""The `attn_implementation` name this module registers with transformers."""

MAX_QUERIES = 64
"""Longest query block the kernel takes; longer ones (prompt prefills) run SDPA."""

_NEG = -3.0e38
"""The running max's start and the score of a key past the cache's end: finite, so that no
`inf - inf` turns into NaN; a split with no visible key gets weight exp(_NEG - max) = 0 in the merge."""

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


HAS_TRITON = importlib.util.find_spec("triton") is not None
"""Whether Triton is installed (it ships with CUDA builds of torch)."""

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
"""Triton's CPU interpreter is on (read once, as Triton itself must see it before its first import):
the kernel then also takes CPU tensors."""

TARGET_PROGRAMS = 128
"""Default split plan: about this many (batch x head x split) programs, one wave on a 108- to
132-SM GPU (A100, H100, H200). A constant rather than a device query, so that a compiled forward
traces no device property and every device gets the same plan."""


if HAS_TRITON:  # imported here, after INTERPRET: Triton reads TRITON_INTERPRET when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def _splitkv_partial_kernel(
        Q, K, V, Mask, Out, Max, Sum,
        sqb, sqh, sqm, sqd,
        skb, skh, sks, skd,
        svb, svh, svs, svd,
        smb, smh, smm, sms,
        M, S, H, GROUP, scale,
        SPLIT_LEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr, NEG: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(0)
        split = tl.program_id(1)
        b = bh // H
        h = bh % H
        kh = h // GROUP
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        m_ok = offs_m < M
        q_ptr = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
        q = tl.load(q_ptr, mask=m_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], NEG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(0, SPLIT_LEN, BLOCK_N):
            n = split * SPLIT_LEN + n0 + offs_n
            n_ok = n < S
            k_ptr = K + b * skb + kh * skh + n[:, None] * sks + offs_d[None, :] * skd
            k = tl.load(k_ptr, mask=n_ok[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            bias = tl.load(
                Mask + b * smb + h * smh + offs_m[:, None] * smm + n[None, :] * sms,
                mask=m_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            qk = tl.where(n_ok[None, :], qk * scale + bias.to(tl.float32), NEG)
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v_ptr = V + b * svb + kh * svh + n[:, None] * svs + offs_d[None, :] * svd
            v = tl.load(v_ptr, mask=n_ok[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        row = (bh * NUM_SPLITS + split) * M + offs_m
        tl.store(Out + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=m_ok[:, None])
        tl.store(Max + row, m_i, mask=m_ok)
        tl.store(Sum + row, l_i, mask=m_ok)


def plan_splits(
    batch_heads: int, keys: int, block_n: int, num_splits: int | None = None, programs: int | None = None
) -> tuple[int, int]:
    """(number of key splits, keys per split, a multiple of `block_n`). By default about `programs`
    (`TARGET_PROGRAMS`) programs in all, `batch_heads` per split; at most `num_splits` when given;
    none left empty."""
    tiles = max(1, math.ceil(keys / block_n))
    programs = TARGET_PROGRAMS if programs is None else programs
    want = num_splits if num_splits is not None else max(1, programs // max(1, batch_heads))
    want = max(1, min(want, tiles))
    split_len = math.ceil(tiles / want) * block_n
    return math.ceil(keys / split_len), split_len


def kernel_applies(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, dropout: float = 0.0
) -> str | None:
    """None when `splitkv_attention` can run these inputs, else why not (what SDPA runs instead)."""
    if mask is None:
        return "no explicit mask"
    if mask.dim() != 4 or not mask.is_floating_point():
        return "the mask is not a 4-D additive float mask"
    if dropout:
        return "dropout"
    if query.dtype not in _DTYPES or key.dtype != query.dtype:
        return f"dtype {query.dtype}"
    D = query.shape[-1]
    if D < 16 or D > 256 or D & (D - 1):
        return f"head dim {D}"
    if query.shape[2] > MAX_QUERIES:
        return f"{query.shape[2]} queries > {MAX_QUERIES}"
    if query.shape[1] % key.shape[1]:
        return "query heads not a multiple of key heads"
    if not (query.device.type == "cuda" or (query.device.type == "cpu" and INTERPRET)):
        return f"device {query.device.type}"
    if not HAS_TRITON:
        return "Triton is not installed"
    return None


def splitkv_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int = 32,
    num_warps: int = 4,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for query (B, H, M, D), key/value (B, Hk, S, D) (H a multiple
    of Hk: grouped heads) and an additive mask broadcastable as (B, 1 or H, M, S).
    Returns (B, M, H, D), the layout transformers' attention functions return."""
    why = kernel_applies(query, key, mask)
    if why is not None:
        raise ValueError(f"splitkv_attention cannot run these inputs: {why}")
    B, H, M, D = query.shape
    S = key.shape[2]
    if key.shape != (B, key.shape[1], S, D) or value.shape != key.shape:
        raise ValueError(
            f"splitkv_attention: key {tuple(key.shape)} / value {tuple(value.shape)} do not match "
            f"query {tuple(query.shape)}"
        )
    mask = mask.expand(B, mask.shape[1], M, S)
    if mask.shape[1] not in (1, H):
        raise ValueError(f"splitkv_attention: mask heads {mask.shape[1]} must be 1 or {H}")
    scale = D**-0.5 if scale is None else float(scale)
    splits, split_len = plan_splits(B * H, S, block_n, num_splits)
    out, mx, total = torch.ops.ee_vla.splitkv_partial(
        query, key, value, mask, scale, splits, split_len, block_n, num_warps
    )
    # Merge the splits: each holds sum_j exp(s_j - m) v_j and sum_j exp(s_j - m) for its own max m.
    # Plain torch ops: inside a compiled forward Inductor fuses them (and the cast and transpose).
    weight = torch.exp(mx - mx.amax(1, keepdim=True))
    merged = (out * weight.unsqueeze(-1)).sum(1) / (total * weight).sum(1).unsqueeze(-1)
    return merged.view(B, H, M, D).transpose(1, 2).to(query.dtype)


@torch.library.custom_op("ee_vla::splitkv_partial", mutates_args=())
def _splitkv_partial(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    splits: int,
    split_len: int,
    block_n: int,
    num_warps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton kernel as a torch op (opaque to torch.compile, which traces around it): per
    (batch x head, split, query) the split's unnormalised output (float32, D), max and sum."""
    B, H, M, D = query.shape
    out = torch.empty(B * H, splits, M, D, device=query.device, dtype=torch.float32)
    mx = torch.empty(B * H, splits, M, device=query.device, dtype=torch.float32)
    total = torch.empty_like(mx)
    mask_h = 0 if mask.shape[1] == 1 else mask.stride(1)
    _splitkv_partial_kernel[(B * H, splits)](
        query, key, value, mask, out, mx, total,
        *query.stride(), *key.stride(), *value.stride(),
        mask.stride(0), mask_h, mask.stride(2), mask.stride(3),
        M, key.shape[2], H, H // key.shape[1], scale,
        SPLIT_LEN=split_len, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_N=block_n, HEAD_DIM=D,
        NUM_SPLITS=splits, IEEE=query.dtype == torch.float32, NEG=_NEG, num_warps=num_warps,
    )  # fmt: skip
    return out, mx, total


@_splitkv_partial.register_fake
def _(query, key, value, mask, scale, splits, split_len, block_n, num_warps):
    B, H, M, D = query.shape
    out = query.new_empty(B * H, splits, M, D, dtype=torch.float32)
    mx = query.new_empty(B * H, splits, M, dtype=torch.float32)
    return out, mx, torch.empty_like(mx)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (what `ALL_ATTENTION_FUNCTIONS[name]` is called
    with): the split-KV kernel where `kernel_applies`, transformers' SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "sliding_window", "cache"))
    if special or kernel_applies(query, key, attention_mask, dropout) is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return splitkv_attention(query, key, value, attention_mask, scaling), None


def register() -> None:
    """Register `ATTN_NAME` with transformers (attention and mask interfaces; masks as SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


register()
