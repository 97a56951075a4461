"""A split-K Triton product for a few rows (`x @ W.T`), the candidate `linear_bench` times against cuBLAS.

    product = SplitK(rows=22, out_features=4096, in_features=11008, device="cuda")
    out = product(x, weight)            # x (rows, K), weight (N, K) -> (rows, N)

A decode step multiplies a few rows (1 for AR, 22 for OpenVLA's Jacobi window) by each weight of
the language model, and its time is the time those weights take to read. This kernel splits one
product into (column tile, slice of the inner dimension) programs. Each program stores its float32
partial sum; the last program of a tile to finish (a counter per tile) adds the tile's partials in a
fixed order and writes the output. Nothing else is launched (no reduction kernel, no zeroing: the
counters return to zero), and the sum's order never changes, so a product gives the same bits on
every call.

Each weight shape has a launch plan (`Plan`): `PLANS` holds plans picked from a sweep on an H100
for OpenVLA-7B's stacked products at 22 rows (docs/performance.md); `plan` gives a rule for the
rest; `linear_bench --splitk-sweep` times the sweep again on any GPU. CUDA in float16/bfloat16, or
Triton's CPU interpreter in float32 (as the CPU tests run it).
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import NamedTuple

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
"""Whether Triton is installed (it ships with CUDA builds of torch)."""

MAX_ROWS = 64
"""Most rows the kernel takes (its tiles hold every row)."""


class Plan(NamedTuple):
    """How one product is split: output columns per program, inner elements per loop step, inner
    slices, loads in flight (Triton's software pipeline) and warps per program."""

    block_n: int = 64
    block_k: int = 128
    split_k: int = 2
    stages: int = 3
    warps: int = 4


PLANS: dict[tuple[int, int], Plan] = {
    (12288, 4096): Plan(split_k=1),  # q/k/v stacked
    (4096, 4096): Plan(block_k=256, split_k=2),  # o
    (22016, 4096): Plan(split_k=1),  # gate/up stacked
    (4096, 11008): Plan(split_k=2, stages=5),  # down
}
"""(out features, in features) -> plan for OpenVLA-7B's stacked products at 22 rows, picked from a
sweep of `SWEEP` on one H100 (2026-12-07). The sweep in docs/performance.md, on another H100 the
same day, found the same plans but for o: `Plan(split_k=1, stages=5)` at 14.2 us, where this one
took 15.6 us in that machine's `--kinds splitk` run."""

SWEEP = [
    Plan(block_n, block_k, split_k, stages)
    for block_n, block_k, split_k, stages in itertools.product((64, 128), (128, 256), (1, 2, 4, 8), (3, 5))
    if (block_n + 32) * block_k * 2 * stages <= 224 * 1024  # tiles in flight (22 rows) fit Hopper's shared memory
]
"""The plans `linear_bench --splitk-sweep` times for each weight shape."""

TARGET_PROGRAMS = 256
"""`plan`'s rule for a shape outside `PLANS`: at least about this many programs."""


def plan(out_features: int, in_features: int) -> Plan:
    """The plan of a (out_features, in_features) weight: `PLANS`' entry, else `Plan()` with the
    fewest inner slices (at most one per loop step) that make about `TARGET_PROGRAMS` programs."""
    if (out_features, in_features) in PLANS:
        return PLANS[(out_features, in_features)]
    base = Plan()
    tiles = -(-out_features // base.block_n)
    steps = -(-in_features // base.block_k)
    split = 1
    while tiles * split < TARGET_PROGRAMS and split * 2 <= steps:
        split *= 2
    return base._replace(split_k=split)


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _splitk_kernel(
        X, W, Out, Part, Counter,
        M, N, K, sxm, swn, som,
        K_SLICE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, STAGES: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        """One (column tile, inner slice) program: the tile's BLOCK_N output columns over the
        slice's K_SLICE inner elements for all M (<= BLOCK_M) rows, as W_tile @ x_slice.T. With
        SPLIT_K > 1 the partial goes to Part (SPLIT_K, N, BLOCK_M) float32, and the tile's last
        program (a release/acquire counter per tile) sums the slices in order and resets the counter."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        n_ok = rn < N
        m_ok = rm < M
        k0 = pid_k * K_SLICE
        w_ptr = W + rn[:, None] * swn + (k0 + rk)[None, :]
        x_ptr = X + rm[None, :] * sxm + (k0 + rk)[:, None]
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for kk in tl.range(0, K_SLICE, BLOCK_K, num_stages=STAGES):
            if EVEN_K:
                w = tl.load(w_ptr + kk, mask=n_ok[:, None], other=0.0)
                x = tl.load(x_ptr + kk, mask=m_ok[None, :], other=0.0)
            else:
                k_ok = (k0 + kk + rk) < K
                w = tl.load(w_ptr + kk, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptr + kk, mask=m_ok[None, :] & k_ok[:, None], other=0.0)
            if IEEE:
                acc = tl.dot(w, x, acc, input_precision="ieee")
            else:
                acc = tl.dot(w, x, acc)
        o_ptr = Out + rm[None, :] * som + rn[:, None]
        o_ok = m_ok[None, :] & n_ok[:, None]
        if SPLIT_K == 1:
            tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=o_ok)
        else:
            tile = rn[:, None] * BLOCK_M + rm[None, :]
            tl.store(Part + pid_k * N * BLOCK_M + tile, acc, mask=n_ok[:, None])
            tl.debug_barrier()  # every thread's partial, before the counter's release
            done = tl.atomic_add(Counter + pid_n, 1, sem="acq_rel", scope="gpu")
            if done == SPLIT_K - 1:
                total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
                for s in tl.static_range(SPLIT_K):
                    total += tl.load(Part + s * N * BLOCK_M + tile, mask=n_ok[:, None], other=0.0, cache_modifier=".cg")
                tl.store(o_ptr, total.to(Out.dtype.element_ty), mask=o_ok)
                tl.atomic_xchg(Counter + pid_n, 0)


class SplitK:
    """`x @ weight.T` for x (rows, in_features) and weights (out_features, in_features) by the
    kernel, with `p` (default: `plan`). Holds the partial sums' buffer and the per-tile counters,
    so that a call allocates only its output (and none with `out=`): capturable in a CUDA graph."""

    def __init__(self, rows: int, out_features: int, in_features: int, device, p: Plan | None = None):
        if not HAS_TRITON:
            raise RuntimeError("the split-K product needs Triton")
        if not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"SplitK takes 1 .. {MAX_ROWS} rows, got {rows}")
        self.rows, self.n, self.k = rows, out_features, in_features
        self.plan = plan(out_features, in_features) if p is None else p
        self.block_m = max(16, 1 << (rows - 1).bit_length())
        steps = -(-in_features // self.plan.block_k)
        self.k_slice = -(-steps // self.plan.split_k) * self.plan.block_k
        self.grid = (-(-out_features // self.plan.block_n), self.plan.split_k)
        self.part = torch.empty(max(1, (self.plan.split_k > 1) * self.plan.split_k * out_features * self.block_m),
                                dtype=torch.float32, device=device)  # fmt: skip
        self.counters = torch.zeros(self.grid[0], dtype=torch.int32, device=device)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape != (self.rows, self.k) or weight.shape != (self.n, self.k):
            raise ValueError(
                f"SplitK built for x ({self.rows}, {self.k}) and weight ({self.n}, {self.k}), "
                f"got {tuple(x.shape)} and {tuple(weight.shape)}"
            )
        if x.dtype != weight.dtype or x.stride(1) != 1 or weight.stride(1) != 1:
            raise ValueError("SplitK needs x and weight of one dtype, each row contiguous")
        out = x.new_empty(self.rows, self.n) if out is None else out
        p = self.plan
        _splitk_kernel[self.grid](
            x, weight, out, self.part, self.counters, self.rows, self.n, self.k,
            x.stride(0), weight.stride(0), out.stride(0),
            K_SLICE=self.k_slice, BLOCK_M=self.block_m, BLOCK_N=p.block_n, BLOCK_K=p.block_k, SPLIT_K=p.split_k,
            STAGES=p.stages, EVEN_K=self.k_slice * p.split_k == self.k, IEEE=x.dtype == torch.float32,
            num_warps=p.warps,
        )  # fmt: skip
        return out
