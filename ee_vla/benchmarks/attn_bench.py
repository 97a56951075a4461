"""Time the attention of one decode step alone: torch's SDPA vs the split-KV kernel's settings.

    python -m ee_vla.benchmarks.attn_bench --device cuda --queries 1 22 --out outputs/attn_bench

For each query count, at one shape (default: OpenVLA's Llama-2-7B layer, 32 heads of 128, over the
static engine's 363 cache slots, bf16), it times `--layers` attention calls in a row, as a forward
runs them: on CUDA each variant is compiled (Inductor, static shapes: the split merge fuses as in
the compiled engine) and captured as one CUDA graph of `--layers` calls, replayed `--iters` times;
on the CPU (Triton's interpreter; a smoke test) it loops. Every variant is checked against SDPA
(max abs difference). Prints a table, writes `attn_bench.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
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
    q_slot = S - M - 21 + torch.arange(M)  # the window after a prompt, below the cache's top
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


def run(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
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
    report = {
        "shape": {k: getattr(args, k) for k in ("batch", "heads", "kv_heads", "keys", "head_dim", "dtype", "layers")},
        "compiled": args.device == "cuda" and not args.no_compile,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }
    for r in rows:
        print(
            f"M={r['queries']:<3} {r['variant']:<40} {r['us']:9.2f} us  x{r['vs_sdpa']:.2f} vs SDPA  "
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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
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
    p.add_argument("--out", default=None, help="directory for attn_bench.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("attn_bench: --device cuda but CUDA is not available")
    if args.device == "cpu" and not splitkv.INTERPRET:
        raise SystemExit("attn_bench: on the CPU the kernel runs in Triton's interpreter: set TRITON_INTERPRET=1")
    return run(args)


if __name__ == "__main__":
    main()
