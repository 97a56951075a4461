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

An `Epilogue` makes the product do the rest of a decoder layer with its sum before it stores it,
so that a layer is its four products and its attention kernel (`layer_bench` times that against
the compiled engine's layers):

    qkv = SplitK(22, 12288, 4096, "cuda", epilogue=Epilogue(norm=True))(x, fold_norm(w_qkv, w_norm), ss_in=ss)

`pdl=True` launches the kernel with programmatic dependent launch (Hopper and later), `prefetch`
asks for the start of each of its weight rows in L2 before it waits for the kernel before it, and
`resources` gives the registers and stack a launch plan takes on a GPU architecture, without one.
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
    (4096, 4096): Plan(split_k=1, stages=5),  # o
    (22016, 4096): Plan(split_k=1),  # gate/up stacked
    (4096, 11008): Plan(split_k=2, stages=5),  # down
}
"""(out features, in features) -> plan for OpenVLA-7B's stacked products at 22 rows, picked from
sweeps of `SWEEP` on two H100s (2026-12-07, docs/performance.md). Both found these plans for
q/k/v, gate/up and down; for o, one found `Plan(block_k=256, split_k=2)`, which the other timed at
15.6 us against 14.2 us for this one, and whose 256-element loop steps spill over 400 bytes per
thread to local memory for Hopper (`resources`)."""

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
    def _finish(
        acc, rn, rm, n_ok, m_ok, M, N, Out, som, SSIn, ss_tiles, Res, srm, SSOut, norm_dim, eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, NORM: tl.constexpr, SS_TILES: tl.constexpr,
        RESIDUAL: tl.constexpr, SS_OUT: tl.constexpr, SWIGLU: tl.constexpr,
    ):  # fmt: skip
        """The epilogue of a tile's float32 sum `acc` (BLOCK_N columns, BLOCK_M rows): the RMS
        norm's row scale, SiLU(gate) x up of interleaved columns, the residual, the store, and the
        tile's sums of squares for the next norm."""
        if NORM:  # rsqrt(mean of the input row's squares + eps), from the previous product's tiles
            t = tl.arange(0, SS_TILES)
            ss = tl.load(SSIn + t[:, None] * M + rm[None, :], mask=(t < ss_tiles)[:, None] & m_ok[None, :], other=0.0)
            acc = acc * tl.rsqrt(tl.sum(ss, axis=0) / norm_dim + eps)[None, :]
        if SWIGLU:  # columns 2j and 2j+1 are gate j and up j: the tile writes BLOCK_N // 2 columns
            gate, up = tl.split(tl.permute(tl.reshape(acc, [BLOCK_N // 2, 2, BLOCK_M]), (0, 2, 1)))
            rh = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
            o_ok = m_ok[None, :] & (rh < N // 2)[:, None]
            tl.store(Out + rm[None, :] * som + rh[:, None], (gate * tl.sigmoid(gate) * up).to(Out.dtype.element_ty),
                     mask=o_ok)  # fmt: skip
        else:
            o_ok = m_ok[None, :] & n_ok[:, None]
            if RESIDUAL:
                acc += tl.load(Res + rm[None, :] * srm + rn[:, None], mask=o_ok, other=0.0).to(tl.float32)
            val = acc.to(Out.dtype.element_ty)
            tl.store(Out + rm[None, :] * som + rn[:, None], val, mask=o_ok)
            if SS_OUT:  # this tile's share of each row's sum of squares, as stored
                sq = val.to(tl.float32)
                sq = tl.where(o_ok, sq * sq, 0.0)
                tl.store(SSOut + tl.program_id(0) * M + rm, tl.sum(sq, axis=0), mask=m_ok)

    @triton.jit
    def _splitk_kernel(
        X, W, Out, Part, Counter, SSIn, Res, SSOut,
        M, N, K, sxm, swn, som, srm, ss_tiles, norm_dim, eps,
        K_SLICE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, STAGES: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr,
        NORM: tl.constexpr, SS_TILES: tl.constexpr, RESIDUAL: tl.constexpr, SS_OUT: tl.constexpr,
        SWIGLU: tl.constexpr, PDL: tl.constexpr, PREFETCH_LINES: tl.constexpr, LINE: tl.constexpr,
    ):  # fmt: skip
        """One (column tile, inner slice) program: the tile's BLOCK_N output columns over the
        slice's K_SLICE inner elements for all M (<= BLOCK_M) rows, as W_tile @ x_slice.T. With
        SPLIT_K > 1 the partial goes to Part (SPLIT_K, N, BLOCK_M) float32, and the tile's last
        program (a release/acquire counter per tile) sums the slices in order and resets the counter.
        `_finish` applies the epilogue (`Epilogue`) to the tile's sum. With PDL (programmatic
        dependent launch) the program first asks for the L2 prefetch of PREFETCH_LINES 128-byte
        lines of each of its weight rows, which no earlier kernel writes, then waits for the
        earlier kernel to finish before it reads anything else."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        n_ok = rn < N
        m_ok = rm < M
        k0 = pid_k * K_SLICE
        if PDL:
            if PREFETCH_LINES > 0:
                lines = k0 + tl.arange(0, PREFETCH_LINES) * LINE
                ok = n_ok[:, None] & (lines < tl.minimum(k0 + K_SLICE, K))[None, :]
                where = tl.where(ok, W + rn[:, None] * swn + lines[None, :], W)
                tl.inline_asm_elementwise("mov.u32 $0, 0; prefetch.global.L2 [$1];", "=r,l", [where],
                                          dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
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
        if SPLIT_K == 1:
            _finish(acc, rn, rm, n_ok, m_ok, M, N, Out, som, SSIn, ss_tiles, Res, srm, SSOut, norm_dim, eps,
                    BLOCK_N, BLOCK_M, NORM, SS_TILES, RESIDUAL, SS_OUT, SWIGLU)  # fmt: skip
        else:
            tile = rn[:, None] * BLOCK_M + rm[None, :]
            tl.store(Part + pid_k * N * BLOCK_M + tile, acc, mask=n_ok[:, None])
            tl.debug_barrier()  # every thread's partial, before the counter's release
            done = tl.atomic_add(Counter + pid_n, 1, sem="acq_rel", scope="gpu")
            if done == SPLIT_K - 1:
                total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
                for s in tl.static_range(SPLIT_K):
                    total += tl.load(Part + s * N * BLOCK_M + tile, mask=n_ok[:, None], other=0.0, cache_modifier=".cg")
                _finish(total, rn, rm, n_ok, m_ok, M, N, Out, som, SSIn, ss_tiles, Res, srm, SSOut, norm_dim, eps,
                        BLOCK_N, BLOCK_M, NORM, SS_TILES, RESIDUAL, SS_OUT, SWIGLU)  # fmt: skip
                tl.atomic_xchg(Counter + pid_n, 0)


class Epilogue(NamedTuple):
    """What a product does with its sum before it stores it, so that a decoder layer needs no
    other kernel than its products and its attention (`ee_vla.benchmarks.layer_bench`):

    * ``norm``: multiply each row by rsqrt(mean(h**2) + `eps`) of its input row h, the RMS norm
      whose weight is folded into this product's weight columns (`fold_norm`). The mean comes from
      the per-tile sums of squares that the product writing h stored (``ss_out``) as `ss_in`;
    * ``swiglu``: the weight's rows interleave gate and up (`interleave_gate_up`): store
      SiLU(gate) x up, half the columns;
    * ``residual``: add `residual` (out's shape; it may be `out` itself);
    * ``ss_out``: store each column tile's sum of squares of every row of the result as stored,
      (tiles, rows) float32, for the next product's ``norm``."""

    norm: bool = False
    swiglu: bool = False
    residual: bool = False
    ss_out: bool = False
    eps: float = 1e-6


def fold_norm(weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) times the RMS norm's `norm_weight` (in,) along its columns: x_normed @
    weight.T == (x * rsqrt(...)) @ fold_norm(weight, norm_weight).T."""
    return (weight.float() * norm_weight.float()[None, :]).to(weight.dtype)


def interleave_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """One (2 x intermediate, hidden) weight whose rows 2j and 2j+1 are gate's and up's row j."""
    if gate.shape != up.shape:
        raise ValueError(f"gate and up weights differ in shape: {tuple(gate.shape)} and {tuple(up.shape)}")
    return torch.stack([gate, up], dim=1).reshape(2 * gate.shape[0], gate.shape[1])


class SplitK:
    """`x @ weight.T` for x (rows, in_features) and weights (out_features, in_features) by the
    kernel, with `p` (default: `plan`) and `epilogue`. Holds the partial sums' buffer and the
    per-tile counters, so that a call allocates only its output (and none with `out=`):
    capturable in a CUDA graph. `pdl`: launch with programmatic dependent launch (CUDA, compute
    capability >= 9.0), after asking for an L2 prefetch of the first `prefetch` elements of each
    weight row of the program's slice."""

    def __init__(
        self,
        rows: int,
        out_features: int,
        in_features: int,
        device,
        p: Plan | None = None,
        epilogue: Epilogue | None = None,
        pdl: bool = False,
        prefetch: int = 0,
    ):
        if not HAS_TRITON:
            raise RuntimeError("the split-K product needs Triton")
        if not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"SplitK takes 1 .. {MAX_ROWS} rows, got {rows}")
        self.rows, self.n, self.k = rows, out_features, in_features
        self.plan = plan(out_features, in_features) if p is None else p
        self.epilogue = epilogue = epilogue or Epilogue()
        self.pdl = pdl
        if epilogue.swiglu and (epilogue.residual or epilogue.ss_out or self.plan.block_n % 2 or out_features % 2):
            raise ValueError("a SwiGLU epilogue takes an even out_features and block_n, and no residual or ss_out")
        if prefetch and not pdl:
            raise ValueError("prefetch is asked for before the wait of a programmatic dependent launch: it needs pdl")
        self.prefetch = prefetch
        self.out_features = out_features // 2 if epilogue.swiglu else out_features
        self.block_m = max(16, 1 << (rows - 1).bit_length())
        steps = -(-in_features // self.plan.block_k)
        self.k_slice = -(-steps // self.plan.split_k) * self.plan.block_k
        self.grid = (-(-out_features // self.plan.block_n), self.plan.split_k)
        self.part = torch.empty(max(1, (self.plan.split_k > 1) * self.plan.split_k * out_features * self.block_m),
                                dtype=torch.float32, device=device)  # fmt: skip
        self.counters = torch.zeros(self.grid[0], dtype=torch.int32, device=device)

    @property
    def tiles(self) -> int:
        """Column tiles: the rows of the sums of squares an ``ss_out`` epilogue stores."""
        return self.grid[0]

    def constants(self, element_size: int, ss_tiles: int, ieee: bool) -> dict:
        """The kernel's constexpr arguments for weights of `element_size` bytes and `ss_tiles` tiles
        of sums of squares in (``norm``; else ignored); `ieee`: float32 dots in IEEE precision."""
        p, e = self.plan, self.epilogue
        lines = triton.next_power_of_2(-(-self.prefetch * element_size // 128)) if self.prefetch else 0
        return dict(
            K_SLICE=self.k_slice, BLOCK_M=self.block_m, BLOCK_N=p.block_n, BLOCK_K=p.block_k, SPLIT_K=p.split_k,
            STAGES=p.stages, EVEN_K=self.k_slice * p.split_k == self.k, IEEE=ieee,
            NORM=e.norm, SS_TILES=triton.next_power_of_2(ss_tiles) if e.norm else 1,
            RESIDUAL=e.residual, SS_OUT=e.ss_out, SWIGLU=e.swiglu, PDL=self.pdl,
            PREFETCH_LINES=lines, LINE=128 // element_size,
        )  # fmt: skip

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        out: torch.Tensor | None = None,
        *,
        ss_in: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        ss_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.shape != (self.rows, self.k) or weight.shape != (self.n, self.k):
            raise ValueError(
                f"SplitK built for x ({self.rows}, {self.k}) and weight ({self.n}, {self.k}), "
                f"got {tuple(x.shape)} and {tuple(weight.shape)}"
            )
        if x.dtype != weight.dtype or x.stride(1) != 1 or weight.stride(1) != 1:
            raise ValueError("SplitK needs x and weight of one dtype, each row contiguous")
        e = self.epilogue
        taken = {"ss_in": (ss_in, e.norm), "residual": (residual, e.residual), "ss_out": (ss_out, e.ss_out)}
        for name, (t, wanted) in taken.items():
            if (t is not None) != wanted:
                raise ValueError(f"{name} is {'needed' if wanted else 'not taken'} by this epilogue: {e}")
        out = x.new_empty(self.rows, self.out_features) if out is None else out
        if residual is not None and (
            residual.shape != out.shape or residual.stride(1) != 1 or residual.dtype != out.dtype
        ):
            raise ValueError(
                f"residual must be rows of out's shape {tuple(out.shape)} and dtype {out.dtype}, "
                f"got {tuple(residual.shape)} {residual.dtype}"
            )
        if ss_out is not None and (ss_out.shape != (self.tiles, self.rows) or ss_out.dtype != torch.float32):
            got = f"{tuple(ss_out.shape)} {ss_out.dtype}"
            raise ValueError(f"ss_out must be ({self.tiles}, {self.rows}) float32, got {got}")
        if ss_in is not None and (
            ss_in.dim() != 2 or ss_in.shape[1] != self.rows or not ss_in.is_contiguous() or ss_in.dtype != torch.float32
        ):
            got = f"{tuple(ss_in.shape)} {ss_in.dtype}"
            raise ValueError(f"ss_in must be contiguous (tiles, {self.rows}) float32, got {got}")
        unused = self.part  # the pointer given for the tensors an epilogue does not read or write
        ss_in_, residual_, ss_out_ = (unused if t is None else t for t in (ss_in, residual, ss_out))
        ss_tiles = 0 if ss_in is None else ss_in.shape[0]
        constants = self.constants(weight.element_size(), ss_tiles, x.dtype == torch.float32)
        extra = {"launch_pdl": True} if self.pdl else {}
        _splitk_kernel[self.grid](
            x, weight, out, self.part, self.counters,
            ss_in_, residual_, ss_out_,
            self.rows, self.n, self.k, x.stride(0), weight.stride(0), out.stride(0),
            0 if residual is None else residual.stride(0), ss_tiles, self.k, e.eps,
            **constants, num_warps=self.plan.warps, **extra,
        )  # fmt: skip
        return out


def resources(
    out_features: int,
    in_features: int,
    rows: int,
    p: Plan | None = None,
    epilogue: Epilogue | None = None,
    pdl: bool = False,
    prefetch: int = 0,
    arch: int = 90,
) -> dict:
    """Registers and stack bytes per thread of the kernel for a bf16 (out_features, in_features)
    weight at `rows` rows, as `SplitK` with these arguments launches it, compiled for CUDA `arch`
    without a GPU (`ee_vla.benchmarks.cubin`)."""
    from ee_vla.benchmarks import cubin

    if cubin.interpreting():
        args = (out_features, in_features, rows, p, epilogue, pdl, prefetch, arch)
        return cubin.in_child("ee_vla.benchmarks.splitk", f"resources{args!r}", f"the split-K kernel for sm_{arch}")
    product = SplitK(rows, out_features, in_features, "meta", p, epilogue, pdl, prefetch)  # nothing allocated
    constants = product.constants(element_size=2, ss_tiles=64, ieee=False)  # ss_tiles: the 7B's 4096 // 64
    pointers = dict.fromkeys(("X", "W", "Out", "Res"), "*bf16")
    pointers.update(dict.fromkeys(("Part", "SSIn", "SSOut"), "*fp32"), Counter="*i32")
    warps = product.plan.warps
    return cubin.usage(_splitk_kernel, pointers, constants, warps, arch, {"eps": "fp32"}, {"launch_pdl": pdl})
