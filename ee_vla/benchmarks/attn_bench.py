"""Time the attention of one decode step alone: torch's SDPA vs the split-KV kernel's settings.

    python -m ee_vla.benchmarks.attn_bench --device cuda --queries 1 22 --out outputs/attn_bench
    python -m ee_vla.benchmarks.attn_bench --device cuda --fused --warps 4 8     # whole attention layers
    python -m ee_vla.benchmarks.attn_bench --resources --warps 4 8               # no GPU needed

For each query count, at one shape (default: OpenVLA's Llama-2-7B layer, 32 heads of 128, over the
static engine's 363 cache slots, bf16), it times `--layers` attention calls in a row, as a forward
runs them: on CUDA each variant is compiled (Inductor, static shapes: the split merge fuses as in
the compiled engine) and captured as one CUDA graph of `--layers` calls, replayed `--iters` times;
on the CPU (Triton's interpreter; a smoke test) it loops. Every variant is checked against SDPA
(max abs difference). Prints a table, writes `attn_bench.json`.

`--fused` times what lies between a layer's projections and its output projection instead:
transformers' path (the rotary embedding, the cache write at the window's slots, the split-KV
kernel and its merge; what Inductor makes of them) against the fused kernel of
`ee_vla.engine.attention`, with the splits merged after it by torch ops or inside it; `--block-n`,
`--warps` and `--splits` sweep the fused kernel's plan as they do the attention's.

`--resources` compiles the kernels for a GPU architecture without one (`--arch`, default 90:
Hopper) and reports each variant's registers and stack per thread (`cuobjdump -res-usage`, shipped
with Triton): a stack of more than a few bytes is registers spilled to local memory, which makes a
kernel several times slower.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ee_vla.engine import splitkv
from ee_vla.timing import capture_cuda_graph, cuda_ms_back_to_back


def _inputs(B, H, Hk, M, S, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(device, dtype) for h, n in ((H, M), (Hk, S), (Hk, S)))
    # The engine's mask: a 288-slot bucket with 12 padding slots, then the window at its causal place.
    slot = torch.arange(S)
    q_slot = max(0, S - M - 21) + torch.arange(M)  # the window after a prompt, below the cache's top
    allowed = (slot[None, :] <= q_slot[:, None]) & (slot[None, :] >= min(12, S // 4))
    allowed |= slot[None, :] == q_slot[:, None]
    mask = torch.zeros(B, 1, M, S, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return q, k, v, mask.to(device)


def _sdpa(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def _time(fn, args, layers: int, iters: int, device: str, compile: bool = True, kernels: int = 0):
    """(microseconds per attention call, None or the `kernels` costliest kernels of one replay)."""
    if device == "cuda":
        if compile:
            # Each variant is the same code object with other defaults: without a reset, Dynamo's
            # recompile limit (8) would silently run later variants eagerly.
            torch._dynamo.reset()
            fn = torch.compile(fn, dynamic=False)
        graph = capture_cuda_graph([lambda: fn(*args)] * layers)
        us = cuda_ms_back_to_back(graph.replay, iters) * 1e3 / layers
        table = None
        if kernels:
            from ee_vla.benchmarks.profile import kernel_table

            table = kernel_table(graph.replay, device, 5, kernels)
        return us, table
    fn(*args)
    t0 = time.perf_counter()
    for _ in range(iters):
        for _ in range(layers):
            fn(*args)
    return (time.perf_counter() - t0) * 1e6 / (iters * layers), None


def layer_inputs(B, H, Hk, M, S, D, dtype, device, seed=0):
    """A window's projections before the rotary embedding (B, M, heads, D), its cos/sin, the cache,
    its slots (the window after a prompt, below the cache's top) and the mask over them."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, M, h, D, generator=g).to(device, dtype) for h in (H, Hk, Hk))
    first = max(0, S - M - 21)
    freqs = torch.arange(first, first + M)[:, None].float() * 10000.0 ** (-torch.arange(0, D, 2).float() / D)
    emb = torch.cat([freqs, freqs], -1).expand(B, M, D)
    cos, sin = emb.cos().to(device, dtype), emb.sin().to(device, dtype)
    keys, values = (torch.randn(B, Hk, S, D, generator=g).to(device, dtype) for _ in range(2))
    slots = torch.arange(first, first + M, device=device)
    allowed = torch.arange(S)[None, :] <= slots.cpu()[:, None]
    mask = torch.zeros(B, 1, M, S, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min).to(device)
    return q, k, v, cos, sin, keys, values, slots, mask


def _transformers_layer(q, k, v, cos, sin, keys, values, slots, mask, block_n=32, warps=4):
    """transformers' attention between the projections (rotary, `SlotLayer.update`, the kernel)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    keys.index_copy_(2, slots, k)
    values.index_copy_(2, slots, v.transpose(1, 2))
    return splitkv.splitkv_attention(q, keys, values, mask, block_n=block_n, num_warps=warps)


def _run_fused(args: argparse.Namespace, dtype: torch.dtype) -> list[dict]:
    rows = []
    for M in args.queries:
        shape = (args.batch, args.heads, args.kv_heads, M, args.keys, args.head_dim)
        inputs = layer_inputs(*shape, dtype, args.device)
        fresh = lambda i=inputs: tuple(t.clone() for t in i)  # noqa: E731 (each variant writes its own cache)
        ref = _transformers_layer(*fresh()).float()
        timing = dict(compile=not args.no_compile, kernels=args.kernels)
        base = None
        for block_n, warps, splits in itertools.product(args.block_n, args.warps, args.splits):
            counters = torch.zeros(args.batch * args.heads, dtype=torch.int32, device=args.device)
            # every slot is a key: the flags from which the engine's layers compute this causal mask
            key_ok = torch.ones(args.batch, args.keys, dtype=torch.bool, device=args.device)
            fused = partial(
                splitkv.rope_splitkv_attention,
                block_n=block_n,
                num_warps=warps,
                num_splits=splits or None,
                key_ok=key_ok,
            )
            variants = {
                "fused, merged by torch": fused,
                "fused, merged in the kernel": partial(fused, counters=counters),
            }
            if splits == args.splits[0]:  # transformers' path runs its own split plan: once per tile and warps
                variants = {
                    "transformers (rotary, cache write, kernel, merge)": partial(
                        _transformers_layer, block_n=block_n, warps=warps
                    ),
                    **variants,
                }
            for name, fn in variants.items():
                diff = (fn(*fresh()).float() - ref).abs().max().item()
                t, table = _time(fn, fresh(), args.layers, args.iters, args.device, **timing)
                base = base or t
                plan = f"n={block_n} warps={warps}" + (f" splits={splits}" if splits else "")
                rows.append(
                    {"queries": M, "variant": f"{name} {plan}", "us": t, "vs_transformers": base / t,
                     "max_abs_diff": diff, "kernels": table}
                )  # fmt: skip
    return rows


def resources(
    fused: bool,
    merge: bool,
    queries: int,
    head_dim: int,
    block_n: int,
    warps: int,
    keys: int,
    batch_heads: int,
    arch: int = 90,
) -> dict:
    """Registers and stack bytes per thread of the split-KV kernel compiled for CUDA `arch` (no GPU
    needed: `ee_vla.benchmarks.cubin`), bf16 inputs, the default split plan of `batch_heads` (batch
    x heads) over `keys` cache slots; the fused kernel as the engine runs it, its mask computed from
    the key flags."""
    from ee_vla.benchmarks import cubin

    if cubin.interpreting():
        args = (fused, merge, queries, head_dim, block_n, warps, keys, batch_heads, arch)
        what = f"the split-KV kernel for sm_{arch}"
        return cubin.in_child("ee_vla.benchmarks.attn_bench", f"resources{args!r}", what)

    import triton

    splits, split_len = splitkv.plan_splits(batch_heads, keys, block_n)
    pointers = dict.fromkeys(("Q", "K", "V", "Mask", "KN", "VN", "Cos", "Sin", "Final"), "*bf16")
    pointers.update(dict.fromkeys(("Out", "Max", "Sum"), "*fp32"), Slots="*i64", Counter="*i32", KeyOk="*u8")
    constants = {
        "SPLIT_LEN": split_len, "BLOCK_M": max(16, triton.next_power_of_2(queries)), "BLOCK_N": block_n,
        "HEAD_DIM": head_dim, "NUM_SPLITS": splits, "IEEE": False, "NEG": splitkv._NEG, "ROPE": fused, "MERGE": merge,
        "KEY_OK": fused, "PDL": False,
    }  # fmt: skip
    return cubin.usage(splitkv._splitkv_partial_kernel, pointers, constants, warps, arch, scalars={"scale": "fp32"})


def _run_resources(args: argparse.Namespace) -> list[dict]:
    rows = []
    for M, block_n, warps in itertools.product(args.queries, args.block_n, args.warps):
        for name, fused, merge in (("splitkv", False, False), ("fused", True, False), ("fused, merge", True, True)):
            r = resources(fused, merge, M, args.head_dim, block_n, warps, args.keys, args.batch * args.heads, args.arch)
            rows.append({"queries": M, "variant": f"{name} n={block_n} warps={warps}", "arch": args.arch, **r})
            print(
                f"M={M:<3} {rows[-1]['variant']:<32} sm_{args.arch}: {r['registers']:3d} registers, "
                f"{r['stack_bytes']:5d} stack bytes per thread"
            )
    return rows


def _run_attention(args: argparse.Namespace, dtype: torch.dtype) -> list[dict]:
    rows = []
    for M in args.queries:
        q, k, v, mask = _inputs(args.batch, args.heads, args.kv_heads, M, args.keys, args.head_dim, dtype, args.device)
        ref = _sdpa(q, k, v, mask)
        timing = dict(compile=not args.no_compile, kernels=args.kernels)
        us, table = _time(_sdpa, (q, k, v, mask), args.layers, args.iters, args.device, **timing)
        rows.append({"queries": M, "variant": "sdpa", "us": us, "vs_sdpa": 1.0, "max_abs_diff": 0.0, "kernels": table})
        for block_n, splits, warps in itertools.product(args.block_n, args.splits, args.warps):
            n = splits or None
            plan = splitkv.plan_splits(args.batch * args.heads, args.keys, block_n, n)

            def fn(q, k, v, mask, block_n=block_n, n=n, warps=warps):
                return splitkv.splitkv_attention(q, k, v, mask, num_splits=n, block_n=block_n, num_warps=warps)

            diff = (fn(q, k, v, mask).float() - ref.float()).abs().max().item()
            t, table = _time(fn, (q, k, v, mask), args.layers, args.iters, args.device, **timing)
            name = f"splitkv n={block_n} splits={plan[0]}{'' if splits else ' (auto)'} warps={warps}"
            rows.append(
                {"queries": M, "variant": name, "us": t, "vs_sdpa": us / t, "max_abs_diff": diff, "kernels": table}
            )
    return rows


def run(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    if args.resources:
        return {"shape": {k: getattr(args, k) for k in ("batch", "heads", "keys", "head_dim")},
                "rows": _run_resources(args)}  # fmt: skip
    rows = _run_fused(args, dtype) if args.fused else _run_attention(args, dtype)
    report = {
        "shape": {k: getattr(args, k) for k in ("batch", "heads", "kv_heads", "keys", "head_dim", "dtype", "layers")},
        "compiled": args.device == "cuda" and not args.no_compile,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }
    versus = "vs_transformers" if args.fused else "vs_sdpa"
    for r in rows:
        print(
            f"M={r['queries']:<3} {r['variant']:<40} {r['us']:9.2f} us  x{r[versus]:.2f} {versus.replace('_', ' ')}  "
            f"diff {r['max_abs_diff']:.2e}"
        )
        for k in (r["kernels"] or {}).get("top", []):
            per_call = 1e3 * k["ms"] / args.layers
            print(f"        {per_call:8.2f} us per call {k['calls'] / args.layers:5.1f}x  {k['name'][:80]}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attn_bench.json").write_text(json.dumps(report, indent=2))
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ee_vla.benchmarks.attn_bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda where torch sees a GPU"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--keys", type=int, default=363, help="cache slots (the 7B static engine's capacity)")
    p.add_argument("--queries", type=int, nargs="+", default=[1, 22])
    p.add_argument("--layers", type=int, default=32, help="attention calls per timed replay")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--block-n", type=int, nargs="+", default=[32])
    p.add_argument("--splits", type=int, nargs="+", default=[0], help="key splits; 0: the default plan")
    p.add_argument("--warps", type=int, nargs="+", default=[4])
    p.add_argument("--no-compile", action="store_true", help="CUDA: time the eager ops (no torch.compile)")
    p.add_argument("--kernels", type=int, default=0, help="CUDA: list the N costliest kernels of each variant")
    p.add_argument("--fused", action="store_true", help="time whole attention layers: transformers' vs fused")
    p.add_argument("--resources", action="store_true", help="registers and stack per thread (no GPU needed)")
    p.add_argument("--arch", type=int, default=90, help="--resources: the CUDA architecture (90: Hopper)")
    p.add_argument("--out", default=None, help="directory for attn_bench.json")
    return p


def check_args(args: argparse.Namespace) -> None:
    """SystemExit naming the first option that cannot describe an attention layer or a plan."""
    for name in ("batch", "heads", "kv_heads", "head_dim", "keys", "layers", "iters"):
        if getattr(args, name) < 1:
            raise SystemExit(f"attn_bench: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.heads % args.kv_heads:
        raise SystemExit(f"attn_bench: --heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    bad = [m for m in args.queries if not 1 <= m <= min(args.keys, splitkv.MAX_QUERIES)]
    if bad:
        raise SystemExit(
            f"attn_bench: --queries {bad[0]}: each must be 1 .. {min(args.keys, splitkv.MAX_QUERIES)} (at most --keys "
            f"and the kernel's {splitkv.MAX_QUERIES})"
        )
    for name in ("block_n", "warps"):
        bad = [v for v in getattr(args, name) if v < 1 or v & (v - 1)]
        if bad:
            raise SystemExit(f"attn_bench: --{name.replace('_', '-')} {bad[0]}: each must be a power of two")
    if any(n < 0 for n in args.splits):
        raise SystemExit(f"attn_bench: --splits must be >= 0 (0: the default plan), got {min(args.splits)}")
    if args.device == "cpu" and args.dtype == "bfloat16" and not args.resources:
        raise SystemExit("attn_bench: Triton's CPU interpreter gets bfloat16 products wrong: pass --dtype float32")


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if not args.resources:  # --resources compiles for Hopper and needs no GPU
        from ee_vla.runtime import RuntimeConfigError, resolve_device

        try:
            args.device = resolve_device(args.device)
        except RuntimeConfigError as e:
            raise SystemExit(f"attn_bench: {e}") from None
    check_args(args)
    if args.resources:
        return run(args)
    if args.device == "cpu" and not splitkv.INTERPRET:
        raise SystemExit("attn_bench: on the CPU the kernel runs in Triton's interpreter: set TRITON_INTERPRET=1")
    return run(args)


if __name__ == "__main__":
    main()
