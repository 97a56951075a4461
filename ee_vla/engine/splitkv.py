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
    def _rotate_halves(X, Cos, Sin, x_rows, cs_rows, sxd, scd, offs_h, HALF: tl.constexpr, mask):
        """The rotary embedding of rows `X + x_rows` by `Cos/Sin + cs_rows` (x cos + rotate_half(x)
        sin), by halves of the head dim: (x1 cos1 - x2 sin1, x2 cos2 + x1 sin2), float32."""
        lo, hi = offs_h[None, :], (offs_h + HALF)[None, :]
        x1 = tl.load(X + x_rows + lo * sxd, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + x_rows + hi * sxd, mask=mask, other=0.0).to(tl.float32)
        c1 = tl.load(Cos + cs_rows + lo * scd, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(Cos + cs_rows + hi * scd, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(Sin + cs_rows + lo * scd, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(Sin + cs_rows + hi * scd, mask=mask, other=0.0).to(tl.float32)
        return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2

    @triton.jit
    def _splitkv_partial_kernel(
        Q, K, V, Mask, Out, Max, Sum,
        sqb, sqh, sqm, sqd,
        skb, skh, sks, skd,
        svb, svh, svs, svd,
        smb, smh, smm, sms,
        M, S, H, GROUP, scale,
        KN, VN, Cos, Sin, Slots,
        snb, snh, snm, snd,
        scb, scm, scd,
        Final, Counter,
        sfb, sfh, sfm, sfd,
        KeyOk, sob, son,
        SPLIT_LEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
        NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr, NEG: tl.constexpr, ROPE: tl.constexpr,
        MERGE: tl.constexpr, KEY_OK: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """One (batch x head, key split) program. With ROPE, Q, KN and VN are the window's queries,
        keys and values before the rotary embedding (KN/VN strided by `sn*`, K/V the cache), and the
        window goes to the M consecutive cache slots from `Slots[0]`: the program first rotates the
        window's keys that fall in its split and writes them (and their values) into the cache,
        waits for its threads' writes (a block barrier), then rotates its queries and runs as
        without ROPE. The heads of a group write the same values to the same slots. With MERGE, the
        split that finishes last merges every split of its (batch x head) into Final (B, M, H, D)
        and resets the counter. With KEY_OK (needs ROPE), the mask is not read: query m (at slot
        `Slots[0] + m`) sees key slot n where n <= its slot and `KeyOk[b, n]` is set or n is its own
        slot, the rule of `StaticEngine`'s masks, computed from the (B, S) flags instead of loaded as a
        (M, S) tile per key tile.

        With ROPE the rotation works on the two halves of the head dim (x1, x2): x1 cos1 - x2 sin1 and
        x2 cos2 + x1 sin2 (transformers' x cos + rotate_half(x) sin, for any cos and sin), and the
        scores are the sum of the two halves' products, so no element is loaded twice.

        With PDL (launched with programmatic dependent launch) the program waits for the kernel
        before it to finish, then lets the kernel after it start: that one's programs can run
        beside the attention (e.g. prefetch their weights) and wait for its result themselves."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        bh = tl.program_id(0)
        split = tl.program_id(1)
        b = bh // H
        h = bh % H
        kh = h // GROUP
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        HALF: tl.constexpr = HEAD_DIM // 2
        HALF_DOTS: tl.constexpr = ROPE and HALF >= 16  # a GPU's tl.dot needs an inner size of at least 16
        offs_h = tl.arange(0, HALF)
        m_ok = offs_m < M
        q_rows = b * sqb + h * sqh + offs_m[:, None] * sqm
        if ROPE:
            first = tl.load(Slots).to(tl.int32)
            for t0 in range(0, SPLIT_LEN, BLOCK_N):  # the split's tiles that hold window slots
                lo = split * SPLIT_LEN + t0
                if (lo < first + M) & (lo + BLOCK_N > first):
                    n = lo + offs_n
                    ok = ((n >= first) & (n < first + M) & (n < S))[:, None]
                    j = n - first
                    k1, k2 = _rotate_halves(
                        KN, Cos, Sin, b * snb + kh * snh + j[:, None] * snm, b * scb + j[:, None] * scm,
                        snd, scd, offs_h, HALF, ok,
                    )  # fmt: skip
                    k_ptr = K + b * skb + kh * skh + n[:, None] * sks
                    tl.store(k_ptr + offs_h[None, :] * skd, k1.to(K.dtype.element_ty), mask=ok)
                    tl.store(k_ptr + (offs_h + HALF)[None, :] * skd, k2.to(K.dtype.element_ty), mask=ok)
                    v_new = tl.load(
                        VN + b * snb + kh * snh + j[:, None] * snm + offs_d[None, :] * snd, mask=ok, other=0.0
                    )
                    tl.store(
                        V + b * svb + kh * svh + n[:, None] * svs + offs_d[None, :] * svd,
                        v_new.to(V.dtype.element_ty),
                        mask=ok,
                    )
            tl.debug_barrier()  # this block's cache writes, visible to all its threads
            q1, q2 = _rotate_halves(
                Q, Cos, Sin, q_rows, b * scb + offs_m[:, None] * scm,
                sqd, scd, offs_h, HALF, m_ok[:, None],
            )  # fmt: skip
            q1, q2 = q1.to(Q.dtype.element_ty), q2.to(Q.dtype.element_ty)
            if not HALF_DOTS:  # the halves side by side: (BLOCK_M, HALF, 2) -> (BLOCK_M, 2, HALF) -> rows
                q = tl.reshape(tl.permute(tl.join(q1, q2), (0, 2, 1)), (BLOCK_M, HEAD_DIM))
        else:
            q = tl.load(Q + q_rows + offs_d[None, :] * sqd, mask=m_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], NEG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(0, SPLIT_LEN, BLOCK_N):
            n = split * SPLIT_LEN + n0 + offs_n
            n_ok = n < S
            k_ptr = K + b * skb + kh * skh + n[:, None] * sks
            v_ptr = V + b * svb + kh * svh + n[:, None] * svs + offs_d[None, :] * svd
            v = tl.load(v_ptr, mask=n_ok[:, None], other=0.0)
            if HALF_DOTS:
                k1 = tl.load(k_ptr + offs_h[None, :] * skd, mask=n_ok[:, None], other=0.0)
                k2 = tl.load(k_ptr + (offs_h + HALF)[None, :] * skd, mask=n_ok[:, None], other=0.0)
                if IEEE:
                    qk = tl.dot(q1, tl.trans(k1), input_precision="ieee")
                    qk += tl.dot(q2, tl.trans(k2), input_precision="ieee")
                else:
                    qk = tl.dot(q1, tl.trans(k1)) + tl.dot(q2, tl.trans(k2))
            else:
                k = tl.load(k_ptr + offs_d[None, :] * skd, mask=n_ok[:, None], other=0.0)
                if IEEE:
                    qk = tl.dot(q, tl.trans(k), input_precision="ieee")
                else:
                    qk = tl.dot(q, tl.trans(k))
            if KEY_OK:
                key_ok = tl.load(KeyOk + b * sob + n * son, mask=n_ok, other=0) != 0
                own = first + offs_m
                seen = (n[None, :] <= own[:, None]) & (key_ok[None, :] | (n[None, :] == own[:, None]))
                qk = tl.where(seen & n_ok[None, :], qk * scale, NEG)
            else:
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
        if MERGE:
            # every thread's stores, then one release/acquire counter per (batch x head): the split
            # that counts last sees the others' partial results (loaded past L1, from L2)
            tl.debug_barrier()
            done = tl.atomic_add(Counter + bh, 1, sem="acq_rel", scope="gpu")
            if done == NUM_SPLITS - 1:
                base = bh * NUM_SPLITS * M + offs_m
                top = tl.full([BLOCK_M], NEG, tl.float32)
                for sp in tl.static_range(NUM_SPLITS):
                    top = tl.maximum(top, tl.load(Max + base + sp * M, mask=m_ok, other=NEG, cache_modifier=".cg"))
                num = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
                den = tl.zeros([BLOCK_M], tl.float32)
                for sp in tl.static_range(NUM_SPLITS):
                    r = base + sp * M
                    w = tl.exp(tl.load(Max + r, mask=m_ok, other=NEG, cache_modifier=".cg") - top)
                    den += w * tl.load(Sum + r, mask=m_ok, other=0.0, cache_modifier=".cg")
                    part = tl.load(
                        Out + r[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=m_ok[:, None],
                        other=0.0,
                        cache_modifier=".cg",
                    )
                    num += w[:, None] * part
                den = tl.where(m_ok, den, 1.0)
                f_ptr = Final + b * sfb + h * sfh + offs_m[:, None] * sfm + offs_d[None, :] * sfd
                tl.store(f_ptr, (num / den[:, None]).to(Final.dtype.element_ty), mask=m_ok[:, None])
                tl.atomic_xchg(Counter + bh, 0)


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
    return why_not(query.dtype, query.device, query.shape[1], query.shape[2], query.shape[-1], key, mask, dropout)


def why_not(
    dtype: torch.dtype,
    device: torch.device,
    heads: int,
    queries: int,
    head_dim: int,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float = 0.0,
) -> str | None:
    """`kernel_applies` from the queries' dtype, device, heads, length and head dim (known before
    the queries are computed) and the keys (B, Hk, S, D)."""
    if mask is None:
        return "no explicit mask"
    if mask.dim() != 4 or not mask.is_floating_point():
        return "the mask is not a 4-D additive float mask"
    if dropout:
        return "dropout"
    if dtype not in _DTYPES or key.dtype != dtype:
        return f"dtype {dtype}"
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        return f"head dim {head_dim}"
    if queries > MAX_QUERIES:
        return f"{queries} queries > {MAX_QUERIES}"
    if heads % key.shape[1]:
        return "query heads not a multiple of key heads"
    if not (device.type == "cuda" or (device.type == "cpu" and INTERPRET)):
        return f"device {device.type}"
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
    return _merge(out, mx, total, (B, H, M, D), query.dtype)


def _partials(query: torch.Tensor, splits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (batch x head, split, query): the split's unnormalised output (float32, D), max and sum."""
    B, H, M, D = query.shape
    out = query.new_empty(B * H, splits, M, D, dtype=torch.float32)
    mx = query.new_empty(B * H, splits, M, dtype=torch.float32)
    return out, mx, torch.empty_like(mx)


def _launch(
    query, key, value, mask, scale, splits, split_len, block_n, num_warps, partials, rope=None, merge=None, key_ok=None,
    pdl=False,
):  # fmt: skip
    """Run the kernel. query (B, H, M, D) as strided views (any layout); `rope`: (key_new,
    value_new, cos, sin, slots) with key_new/value_new (B, Hk, M, D) views; `merge`: (final,
    counters) with final (B, H, M, D) views; `key_ok` (with `rope`): the (B, S) key flags that
    replace the mask (see the kernel); `pdl`: programmatic dependent launch."""
    B, H, M, D = query.shape
    out, mx, total = partials
    mask_h = 0 if mask.shape[1] == 1 else mask.stride(1)
    if rope is None:
        kn, vn, cos, sin, slots, ns, cs = out, out, out, out, out, (0, 0, 0, 0), (0, 0, 0)
    else:
        kn, vn, cos, sin, slots = rope
        ns, cs = kn.stride(), cos.stride()
    final, counters, fs = (out, out, (0, 0, 0, 0)) if merge is None else (merge[0], merge[1], merge[0].stride())
    if key_ok is not None and rope is None:
        raise ValueError("the split-KV kernel reads key flags only with the rotary embedding's slots")
    flags, os_ = (out, (0, 0)) if key_ok is None else (key_ok.view(torch.uint8), key_ok.stride())
    _splitkv_partial_kernel[(B * H, splits)](
        query, key, value, mask, out, mx, total,
        *query.stride(), *key.stride(), *value.stride(),
        mask.stride(0), mask_h, mask.stride(2), mask.stride(3),
        M, key.shape[2], H, H // key.shape[1], scale,
        kn, vn, cos, sin, slots, *ns, *cs,
        final, counters, *fs,
        flags, *os_,
        SPLIT_LEN=split_len, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_N=block_n, HEAD_DIM=D,
        NUM_SPLITS=splits, IEEE=query.dtype == torch.float32, NEG=_NEG, ROPE=rope is not None,
        MERGE=merge is not None, KEY_OK=key_ok is not None, PDL=pdl, num_warps=num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip


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
    partials = _partials(query, splits)
    _launch(query, key, value, mask, scale, splits, split_len, block_n, num_warps, partials)
    return partials


@_splitkv_partial.register_fake
def _(query, key, value, mask, scale, splits, split_len, block_n, num_warps):
    return _partials(query, splits)


def _rope_outputs(query: torch.Tensor, splits: int, merge: bool) -> tuple[torch.Tensor, ...]:
    """The fused op's outputs, unfilled: the merged output (B, M, H, D) (empty without `merge`) and
    `_partials` (query: (B, H, M, D))."""
    B, H, M, D = query.shape
    return (query.new_empty((B, M, H, D) if merge else (0,)), *_partials(query, splits))


# `counters` is written and left at zero by every call: no net change, so not declared as mutated
# (a compiled forward then has nothing to copy back).
@torch.library.custom_op(
    "ee_vla::rope_splitkv", mutates_args=("key_cache", "value_cache"), tags=(torch.Tag.flexible_layout,)
)
def _rope_splitkv(
    query: torch.Tensor,
    key_new: torch.Tensor,
    value_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,
    mask: torch.Tensor,
    counters: torch.Tensor,
    scale: float,
    splits: int,
    split_len: int,
    block_n: int,
    num_warps: int,
    merge: bool,
    key_ok: torch.Tensor | None = None,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rope_splitkv_attention`'s kernel as a torch op: (the merged output (B, M, H, D), empty
    without `merge`; the splits' outputs, maxima and sums).

    The op is `flexible_layout`: a compiled forward hands it its buffers in whatever layout they
    have, instead of copying each input to the strides it had when traced. Every layer then reads
    the same cos and sin buffers, where exact strides made Inductor copy them, computed again, into
    new buffers for each layer. The kernel reads any strides, but one set for cos and sin and one
    for the window's keys and values: a pair that differs is made contiguous here."""
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    if value_new.stride() != key_new.stride():
        key_new, value_new = key_new.contiguous(), value_new.contiguous()
    final, *partials = _rope_outputs(query, splits, merge)
    _launch(
        query, key_cache, value_cache, mask, scale, splits, split_len, block_n, num_warps, partials,
        rope=(key_new, value_new, cos, sin, slots), merge=(final.transpose(1, 2), counters) if merge else None,
        key_ok=key_ok, pdl=pdl,
    )  # fmt: skip
    return (final, *partials)


@_rope_splitkv.register_fake
def _(query, key_new, value_new, cos, sin, key_cache, value_cache, slots, mask, counters, scale, splits, split_len,
      block_n, num_warps, merge, key_ok=None, pdl=False):  # fmt: skip
    return _rope_outputs(query, splits, merge)


def _merge(out: torch.Tensor, mx: torch.Tensor, total: torch.Tensor, shape, dtype) -> torch.Tensor:
    """The splits' partial results merged: (B, M, H, D). Each split holds sum_j exp(s_j - m) v_j and
    sum_j exp(s_j - m) for its own max m. Plain torch ops: inside a compiled forward Inductor fuses
    them (and the cast and transpose) into one kernel."""
    B, H, M, D = shape
    weight = torch.exp(mx - mx.amax(1, keepdim=True))
    merged = (out * weight.unsqueeze(-1)).sum(1) / (total * weight).sum(1).unsqueeze(-1)
    return merged.view(B, H, M, D).transpose(1, 2).to(dtype)


def rope_splitkv_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,
    mask: torch.Tensor,
    counters: torch.Tensor | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int = 32,
    num_warps: int = 8,
    key_ok: torch.Tensor | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """A window's attention over a slot cache in one kernel: the rotary embedding of its queries
    and keys (transformers' `apply_rotary_pos_emb`: x cos + rotate_half(x) sin), the write of its
    keys and values into the cache at `slots`, and `splitkv_attention` over the whole cache.

    query (B, M, H, D), key/value (B, M, Hk, D): the window's projections before the rotary
    embedding (views of the projection's output, any strides); cos/sin (B, M, D); key_cache /
    value_cache (B, Hk, S, D), written in place at the M **consecutive** slots from `slots[0]`
    (`slots`: a (M,) tensor, what a `SlotLayer` writes at); mask (B, 1 or H, M, S) additive.
    `counters`: None (the splits are merged by torch ops after the kernel) or a zeroed int32 tensor
    of at least B x H entries, owned by this cache (the kernel's last split of each head merges
    them, and leaves the counters at zero). `key_ok`: None (the kernel reads `mask`) or the (B, S)
    bool key flags of a `StaticEngine`, whose masks it computes from them instead: query m sees slot
    n <= slots[m] where key_ok[b, n] or n == slots[m]; the result is the same, without loading a mask
    tile per key tile. `pdl`: launch it with programmatic dependent launch (CUDA devices of compute
    capability 9.0 and above), so that the kernel after it may start while it runs (the engines do
    not; `ee_vla.benchmarks.layer_bench` does). Returns (B, M, H, D).

    8 warps by default: with 4, the rotation's tiles do not fit the registers of the 7B shape (head
    dim 128) and ptxas spills hundreds of bytes per thread to local memory for Hopper
    (`python -m ee_vla.benchmarks.attn_bench --resources --warps 4 8`)."""
    B, M, H, D = query.shape
    Hk = key.shape[2]
    why = why_not(query.dtype, query.device, H, M, D, key_cache, mask)
    if why is not None:
        raise ValueError(f"rope_splitkv_attention cannot run these inputs: {why}")
    S = key_cache.shape[2]
    if (
        key.shape != (B, M, Hk, D)
        or value.shape != key.shape
        or key_cache.shape != (B, Hk, S, D)
        or value_cache.shape != key_cache.shape
        or cos.shape != (B, M, D)
        or sin.shape != cos.shape
        or slots.shape != (M,)
    ):
        raise ValueError(
            f"rope_splitkv_attention: query {tuple(query.shape)}, key {tuple(key.shape)}, value "
            f"{tuple(value.shape)}, cos/sin {tuple(cos.shape)}/{tuple(sin.shape)}, caches {tuple(key_cache.shape)}/"
            f"{tuple(value_cache.shape)} and slots {tuple(slots.shape)} do not fit together"
        )
    if key_ok is not None and (
        key_ok.dtype != torch.bool or key_ok.shape != (B, S) or key_ok.device != key_cache.device
    ):
        raise ValueError(
            f"rope_splitkv_attention: key_ok must be bool of shape {(B, S)} on {key_cache.device}, got "
            f"{key_ok.dtype} {tuple(key_ok.shape)} on {key_ok.device}"
        )
    if counters is not None and (counters.dtype != torch.int32 or counters.numel() < B * H):
        raise ValueError(f"rope_splitkv_attention: counters must be int32 with >= {B * H} entries")
    if pdl and (query.device.type != "cuda" or torch.cuda.get_device_capability(query.device) < (9, 0)):
        raise ValueError(f"rope_splitkv_attention: pdl needs CUDA compute capability 9.0 or above, not {query.device}")
    mask = mask.expand(B, mask.shape[1], M, S)
    if mask.shape[1] not in (1, H):
        raise ValueError(f"rope_splitkv_attention: mask heads {mask.shape[1]} must be 1 or {H}")
    scale = D**-0.5 if scale is None else float(scale)
    splits, split_len = plan_splits(B * H, S, block_n, num_splits)
    merge = counters is not None
    if counters is None:
        counters = slots.new_empty(0, dtype=torch.int32)
    final, out, mx, total = torch.ops.ee_vla.rope_splitkv(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), cos, sin, key_cache, value_cache,
        slots, mask, counters, scale, splits, split_len, block_n, num_warps, merge, key_ok, pdl,
    )  # fmt: skip
    return final if merge else _merge(out, mx, total, (B, H, M, D), query.dtype)


UNSUPPORTED_KWARGS = ("softcap", "position_bias", "sliding_window", "cache")
"""Attention arguments the kernel does not implement: a call that sets any of them runs SDPA."""


def has_unsupported_kwargs(kwargs: dict) -> bool:
    """Whether an attention call sets any of `UNSUPPORTED_KWARGS`."""
    return any(kwargs.get(k) is not None for k in UNSUPPORTED_KWARGS)


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

    if has_unsupported_kwargs(kwargs) or kernel_applies(query, key, attention_mask, dropout) is not None:
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
