"""Time a language model's decoder layers as the compiled engine runs them, against layers made only
of split-K products whose epilogues do the rest of the layer, and the engine's attention kernel.

    python -m ee_vla.benchmarks.layer_bench --rows 22 --out outputs/layer_bench
    python -m ee_vla.benchmarks.layer_bench --rows 1 22 --prefetch 0 256 1024   # L2 prefetch sweep
    python -m ee_vla.benchmarks.layer_bench --rows 22 --sweep                    # launch plans too

Every layer of the shape (default: OpenVLA-7B's 32 Llama layers, random bf16 weights, batch 1, the
window after a prompt in the static engine's 363-slot cache) computes the same thing: RMS norm,
the stacked q/k/v product, the fused attention kernel (`splitkv.rope_splitkv_attention`: rotary
embedding, cache write, split-KV attention, merge), the o product and the residual, RMS norm, the
stacked gate/up product, SiLU(gate) x up, the down product and the residual. Variants:

* ``engine``: those layers in torch as transformers' Llama layers compute them, compiled as the
  engine's `frozen` mode compiles a forward (Inductor, freezing, programmatic dependent launch):
  cuBLAS's products and Inductor's kernels for the norms, SiLU x up and the residual adds;
* ``fused``: four `splitk.SplitK` products per layer whose epilogues (`splitk.Epilogue`) do the
  rest: the norms' weights folded into the products' columns and each row's scale from the sums of
  squares that the product before stored, SiLU x up on interleaved gate/up columns, the residual
  adds. Five kernels per layer;
* ``fused_pdl``: the same products launched with programmatic dependent launch (on GPUs of compute
  capability 9.0 and above): each starts while the kernel before it finishes;
* ``fused_pdl_attn``: the attention kernel too, so that the o product's programs may start beside
  it; ``fused_pdl_attn_prefetch<N>`` (``--prefetch N``, N > 0): each product first asks for an L2
  prefetch of the first N elements of each weight row of its slice, before it waits for the kernel
  before it (the o product's weights, while the attention runs);
* ``fused_pdl_attn_swept`` (``--sweep``; ``fused_swept`` without PDL): the launch plan of each
  product (`splitk.Plan`) that `sweep_plans` finds fastest for the whole layers, one at a time.

Each variant runs all layers captured as one CUDA graph, replayed back to back; the fused variants'
last hidden states are checked against the engine's (the norm of the difference over the engine's). It
reports ms per step's layers, and that against the time the device takes to read the layers'
weights once (`linear_bench.read_tbs`, measured in the same run). CUDA GPUs; prints a table, writes
`layer_bench.json`. On the CPU (`--device cpu`: float32 through Triton's interpreter, a smoke test)
the variants run eagerly and only the check means anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ee_vla.benchmarks import splitk
from ee_vla.benchmarks.shapes import LM_SHAPES, LMShape
from ee_vla.timing import capture_cuda_graph, cuda_ms_back_to_back, environment_info

PRODUCTS = ("qkv", "o", "gate_up", "down")
"""A layer's products, in the order they run."""

SWEEP_PLANS = [
    splitk.Plan(block_n, 128, split_k, stages, warps)
    for block_n, warps in ((32, 4), (64, 4), (64, 8), (128, 8))
    for split_k in (1, 2, 4)
    for stages in (3, 5)
]
"""The plans `--sweep` tries for each product. Compiled for sm_90 with each product's epilogue,
none spills registers (`splitk.resources`); 256-element loop steps, or 128 columns on 4 warps, spill
hundreds of bytes per thread."""

EPS = 1e-6
"""The RMS norms' epsilon (Llama-2's)."""

CACHE_SLOTS = 363
"""Slots of the static engine's cache for OpenVLA's prompt and window (as `attn_bench`'s default)."""

MAX_REL_DIFF = 5e-2
"""Largest ||fused - engine|| / ||engine|| of the last hidden states a fused variant may give."""


@dataclasses.dataclass
class LayerWeights:
    """One decoder layer's weights as the engine holds them (`ee_vla.models.fusion`: q/k/v stacked
    into one product, gate/up into one) and as the fused layer holds them (the norms' weights
    folded into the q/k/v and gate/up columns, gate/up rows interleaved)."""

    norm1: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    qkv_folded: torch.Tensor
    gate_up_folded: torch.Tensor

    @classmethod
    def random(cls, shape: LMShape, device, dtype, generator: torch.Generator) -> LayerWeights:
        h, i = shape.hidden_size, shape.intermediate_size
        kv = shape.num_kv_heads * (h // shape.num_heads)

        def w(n, k):  # scaled so that the residual stream stays of order 1 over the layers
            return (torch.randn(n, k, generator=generator, device=device) / k**0.5).to(dtype)

        norm1, norm2 = ((1 + 0.1 * torch.randn(h, generator=generator, device=device)).to(dtype) for _ in range(2))
        qkv, o, gate_up, down = w(h + 2 * kv, h), w(h, h), w(2 * i, h), w(h, i)
        gate, up = gate_up.chunk(2)
        return cls(
            norm1, qkv, o, norm2, gate_up, down,
            splitk.fold_norm(qkv, norm1),
            splitk.interleave_gate_up(splitk.fold_norm(gate, norm2), splitk.fold_norm(up, norm2)),
        )  # fmt: skip

    def nbytes(self) -> int:
        """Bytes of the weights a layer's products read."""
        return sum(t.numel() * t.element_size() for t in (self.qkv, self.o, self.gate_up, self.down))


@dataclasses.dataclass
class Attention:
    """What the attention kernel of every layer reads besides the projections: the window's rotary
    cos/sin, one key and value cache per layer, the window's slots and the key flags."""

    cos: torch.Tensor
    sin: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    slots: torch.Tensor
    mask: torch.Tensor
    key_ok: torch.Tensor
    counters: list[torch.Tensor]

    @classmethod
    def random(cls, shape: LMShape, rows: int, slots: int, device, dtype, seed: int = 0) -> Attention:
        """Random caches, and the window after a prompt below the cache's top, as `attn_bench`
        times one layer (`attn_bench.layer_inputs`, seeds `seed`, `seed` + 1, ... per layer)."""
        from ee_vla.benchmarks.attn_bench import layer_inputs

        d = shape.hidden_size // shape.num_heads
        per_layer = [
            layer_inputs(1, shape.num_heads, shape.num_kv_heads, rows, slots, d, dtype, device, seed + i)
            for i in range(shape.num_layers)
        ]
        _, _, _, cos, sin, _, _, window, mask = per_layer[0]
        return cls(
            cos, sin, [inputs[5] for inputs in per_layer], [inputs[6] for inputs in per_layer], window, mask,
            torch.ones(1, slots, dtype=torch.bool, device=device),
            [torch.zeros(shape.num_heads, dtype=torch.int32, device=device) for _ in range(shape.num_layers)],
        )  # fmt: skip

    def __call__(self, layer: int, qkv: torch.Tensor, shape: LMShape, pdl: bool = False) -> torch.Tensor:
        """The attention of `layer` over the (rows, q + k + v) projections: (rows, hidden); `pdl`:
        the kernel launched with programmatic dependent launch."""
        rows, d = qkv.shape[0], shape.hidden_size // shape.num_heads
        q, k, v = qkv.split([shape.hidden_size, shape.num_kv_heads * d, shape.num_kv_heads * d], -1)
        out = splitkv_attention(
            q.view(1, rows, shape.num_heads, d), k.view(1, rows, -1, d), v.view(1, rows, -1, d),
            self.cos, self.sin, self.keys[layer], self.values[layer], self.slots, self.mask,
            counters=self.counters[layer], key_ok=self.key_ok, pdl=pdl,
        )  # fmt: skip
        return out.reshape(rows, shape.hidden_size)


def splitkv_attention(*args, **kwargs) -> torch.Tensor:
    from ee_vla.engine import splitkv

    return splitkv.rope_splitkv_attention(*args, **kwargs)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm: the mean of squares in float32, the weight in x's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return weight * h.to(x.dtype)


class EngineLayers(nn.Module):
    """The layers in torch, as the engine's forward computes them (the module Inductor compiles)."""

    def __init__(self, shape: LMShape, weights: list[LayerWeights], attention: Attention):
        super().__init__()
        self.shape, self.attention = shape, attention
        names = ("norm1", "qkv", "o", "norm2", "gate_up", "down")
        self.layers = nn.ModuleList()
        for w in weights:
            m = nn.Module()
            for name in names:
                m.register_parameter(name, nn.Parameter(getattr(w, name), requires_grad=False))
            self.layers.append(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, w in enumerate(self.layers):
            a = self.attention(i, F.linear(_rms_norm(x, w.norm1), w.qkv), self.shape)
            x = x + F.linear(a, w.o)
            gate, up = F.linear(_rms_norm(x, w.norm2), w.gate_up).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, w.down)
        return x


class FusedLayers:
    """The layers as four `splitk.SplitK` products each (their epilogues do the norms, SiLU x up
    and the residual adds) and the attention kernel. Holds every buffer a step writes, so that a
    call allocates nothing (capturable as a CUDA graph) and gives the same result every time."""

    def __init__(
        self,
        shape: LMShape,
        weights: list[LayerWeights],
        attention: Attention,
        x: torch.Tensor,
        pdl: bool = False,
        prefetch: int = 0,
        plans: dict[str, splitk.Plan] | None = None,
        attn_pdl: bool = False,
    ):
        self.shape, self.weights, self.attention, self.attn_pdl = shape, weights, attention, attn_pdl
        rows = x.shape[0]
        w = weights[0]
        Ep = splitk.Epilogue
        epilogues = {
            "qkv": Ep(norm=True, eps=EPS),
            "o": Ep(residual=True, ss_out=True),
            "gate_up": Ep(norm=True, swiglu=True, eps=EPS),
            "down": Ep(residual=True, ss_out=True),
        }
        plans = plans or {}
        for name, epilogue in epilogues.items():  # the plan: `plans`' entry, else `splitk.plan`'s
            n, k = getattr(w, name).shape
            setattr(self, name, splitk.SplitK(rows, n, k, x.device, plans.get(name), epilogue, pdl, prefetch))
        self.plans = {name: getattr(self, name).plan for name in PRODUCTS}
        self.x0 = x
        self.ss0 = x.float().pow(2).sum(-1)[None].contiguous()  # the first norm's sums: one tile
        n = len(weights)
        self.hidden = [torch.empty_like(x) for _ in range(2 * n)]  # after each o and each down product
        self.ss = [torch.empty(p.tiles, rows, device=x.device) for p in (self.o, self.down) for _ in range(n)]
        self.qkv_out = x.new_empty(rows, w.qkv.shape[0])
        self.act = x.new_empty(rows, w.gate_up.shape[0] // 2)

    def __call__(self) -> torch.Tensor:
        n = len(self.weights)
        x, ss = self.x0, self.ss0
        for i, w in enumerate(self.weights):
            mid, out = self.hidden[2 * i], self.hidden[2 * i + 1]
            ss_mid, ss_out = self.ss[i], self.ss[n + i]
            qkv = self.qkv(x, w.qkv_folded, self.qkv_out, ss_in=ss)
            self.o(self.attention(i, qkv, self.shape, self.attn_pdl), w.o, mid, residual=x, ss_out=ss_mid)
            self.gate_up(mid, w.gate_up_folded, self.act, ss_in=ss_mid)
            self.down(self.act, w.down, out, residual=mid, ss_out=ss_out)
            x, ss = out, ss_out
        return x


def _rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref||: bf16's rounding over 32 layers stays near 1%, a wrong layer does not."""
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def _check(name: str, fn, ref: torch.Tensor) -> float:
    """`fn`'s relative difference from the engine's hidden states `ref`; AssertionError past
    `MAX_REL_DIFF`."""
    diff = _rel_diff(fn(), ref)
    if not diff <= MAX_REL_DIFF:
        raise AssertionError(f"{name} differs from the engine's layers by {diff:.3g} (relative)")
    return diff


def sweep_plans(make, ref: torch.Tensor, device: str, iters: int, plans=None, products=PRODUCTS):
    """The fastest launch plans of the fused layers `make(plans)` builds, one product at a time
    (coordinate descent): each product tries every plan of `plans` (default: `SWEEP_PLANS`) with
    the others at the best found so far, starting from `splitk.plan`'s. Every trial is checked
    against `ref`; a plan that does not compile or launch on this device is left out. Returns (best
    plans, per product and plan: ``ms``, or ``error``)."""
    from tqdm.auto import tqdm
    from triton.runtime.errors import OutOfResources

    best: dict[str, splitk.Plan] = {}
    best_ms = _time_ms(make(best), device, iters)
    log = []
    for product in products:
        for p in tqdm(SWEEP_PLANS if plans is None else plans, desc=f"{product} plans", leave=False):
            trial = {**best, product: p}
            entry = {"product": product, **p._asdict()}
            try:
                fn = make(trial)
                _check(f"the fused layers with {product} plan {p}", fn, ref)
            except (OutOfResources, RuntimeError) as e:  # a plan needs more shared memory than the GPU has
                log.append({**entry, "error": str(e).splitlines()[0]})
                continue
            ms = _time_ms(fn, device, iters)
            log.append({**entry, "ms": ms})
            if ms < best_ms:
                best, best_ms = trial, ms
    return best, log


def _time_ms(fn, device: str, iters: int) -> float:
    """ms per call: a CUDA graph of one call replayed back to back, or (CPU) a loop."""
    if device == "cuda":
        return cuda_ms_back_to_back(capture_cuda_graph([fn]).replay, iters)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def run(
    shape: LMShape,
    rows: int,
    device: str = "cuda",
    layers: int | None = None,
    prefetch: tuple[int, ...] = (0,),
    iters: int = 20,
    kernels: int = 0,
    seed: int = 0,
    compile: bool = True,
    sweep: bool = False,
) -> dict:
    """Time the variants at `rows` window rows over `layers` (default: all) layers of `shape`.
    Returns per variant ``ms``, ``vs_engine`` (the engine's ms over this one's) and, for the fused
    ones, ``rel_diff`` against the engine and the ``plans`` of the products (and ``kernels``: the
    `kernels` costliest kernels of one replay when asked). `sweep` adds ``fused_pdl_attn_swept``
    (``fused_swept`` where PDL does not run): the fastest plans `sweep_plans` finds, and its log
    as ``sweep``."""
    from ee_vla.engine.modes import model_logits

    if not 1 <= rows <= splitk.MAX_ROWS:
        raise ValueError(f"rows must be 1 .. {splitk.MAX_ROWS}, got {rows}")
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dataclasses.replace(shape, num_layers=layers or shape.num_layers)
    g = torch.Generator(device).manual_seed(seed)
    weights = [LayerWeights.random(shape, device, dtype, g) for _ in range(shape.num_layers)]
    attention = Attention.random(shape, rows, CACHE_SLOTS, device, dtype, seed)
    x = torch.randn(rows, shape.hidden_size, generator=g, device=device).to(dtype)

    engine = EngineLayers(shape, weights, attention)
    torch._dynamo.reset()  # no compiled forward of an earlier run (and the weights it holds) stays
    variants: dict = {}
    with torch.inference_mode():
        forward = model_logits(engine.forward, "frozen" if compile and cuda else None, None)
        variants["engine"] = lambda: forward(x)
        variants["fused"] = FusedLayers(shape, weights, attention, x)
        pdl = cuda and torch.cuda.get_device_capability() >= (9, 0)
        if pdl:
            variants["fused_pdl"] = FusedLayers(shape, weights, attention, x, pdl=True)
            for n in prefetch:
                name = "fused_pdl_attn" + (f"_prefetch{n}" if n else "")
                variants[name] = FusedLayers(shape, weights, attention, x, pdl=True, prefetch=n, attn_pdl=True)
        ref = variants["engine"]().clone()
        results = {}
        swept: dict = {}
        if sweep:
            make = lambda plans: FusedLayers(shape, weights, attention, x, pdl, plans=plans, attn_pdl=pdl)  # noqa: E731
            best, log = sweep_plans(make, ref, device, iters)
            variants["fused_pdl_attn_swept" if pdl else "fused_swept"] = make(best)
            swept = {"sweep": log}
        for name, fn in variants.items():
            row: dict = {}
            if name != "engine":
                row["rel_diff"] = _check(name, fn, ref)
                row["plans"] = {k: p._asdict() for k, p in fn.plans.items()}
            row["ms"] = _time_ms(fn, device, iters)
            if name.endswith("_swept"):
                row.update(swept)
            if kernels and cuda:
                from ee_vla.benchmarks.profile import kernel_table

                row["kernels"] = kernel_table(capture_cuda_graph([fn]).replay, device, 5, kernels)
            results[name] = row
    variants.clear()
    torch._dynamo.reset()
    base = results["engine"]["ms"]
    for row in results.values():
        row["vs_engine"] = base / row["ms"]
    nbytes = sum(w.nbytes() for w in weights)
    return {"rows": rows, "layers": shape.num_layers, "weight_bytes": nbytes, "variants": results}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ee_vla.benchmarks.layer_bench", description=__doc__.split("\n")[0])
    llama = [name for name, shape in LM_SHAPES.items() if shape.arch == "llama"]  # no q/k/v biases (Qwen2's)
    p.add_argument("--shape", default="openvla-7b", choices=llama)
    p.add_argument("--rows", nargs="+", type=int, default=[22], help="window rows (tokens of the step)")
    p.add_argument("--layers", type=int, default=None, help="layers to run (default: all of the shape's)")
    p.add_argument(
        "--prefetch",
        nargs="+",
        type=int,
        default=[0],
        help="fused_pdl_attn variants: elements of each weight row prefetched to L2 before the wait (0: none)",
    )
    p.add_argument(
        "--sweep", action="store_true", help="also find the fastest launch plan of each product (splitk.Plan)"
    )
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--kernels", type=int, default=0, help="also list the N costliest kernels of each variant")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--no-compile", action="store_true", help="the engine variant eager (not Inductor's frozen mode)")
    p.add_argument("--out", type=Path, default=Path("outputs/layer_bench"))
    a = p.parse_args(argv)
    if any(not 1 <= r <= splitk.MAX_ROWS for r in a.rows):
        p.error(f"--rows must be 1 .. {splitk.MAX_ROWS}, got {a.rows}")
    if any(n < 0 for n in a.prefetch):
        p.error(f"--prefetch must be >= 0, got {a.prefetch}")
    if a.layers is not None and a.layers < 1:
        p.error(f"--layers must be >= 1, got {a.layers}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU here (--device cpu runs the check through Triton's interpreter)")
    if not splitk.HAS_TRITON:
        p.error("the fused layers need Triton")
    shape = LM_SHAPES[a.shape]
    read = None
    if a.device == "cuda":
        from ee_vla.benchmarks.linear_bench import read_tbs

        read = read_tbs(iters=a.iters)
        torch.cuda.empty_cache()
    results = []
    for r in a.rows:
        res = run(
            shape, r, a.device, a.layers, tuple(a.prefetch), a.iters, a.kernels, compile=not a.no_compile, sweep=a.sweep
        )
        results.append(res)
        if a.device == "cuda":
            torch.cuda.empty_cache()
    name = "CPU (Triton's interpreter: only the check means anything)"
    if a.device == "cuda":
        name = torch.cuda.get_device_name()
    print(f"{a.shape}: {results[0]['layers']} decoder layer(s), {name}")
    if read is not None:
        print(f"the device reads memory at {read:.2f} TB/s (one pass over 1 GiB)")
    print(f"{'rows':>5} {'variant':<24} {'ms':>9} {'vs engine':>10} {'of read':>8} {'rel diff':>9}")
    for res in results:
        bound_ms = res["weight_bytes"] / read / 1e9 if read else None
        for name, row in res["variants"].items():
            share = f"{bound_ms / row['ms']:8.0%}" if bound_ms else f"{'':>8}"
            diff = f"{row['rel_diff']:9.2e}" if "rel_diff" in row else f"{'':>9}"
            print(f"{res['rows']:>5} {name:<24} {row['ms']:9.3f} {row['vs_engine']:9.3f}x {share} {diff}")
            if name.endswith("_swept"):
                for product, plan in row["plans"].items():
                    print(f"{'':>6}{product:<8} {plan}")
    out = {
        "shape": a.shape,
        "read_tbs": read,
        "results": results,
        "environment": environment_info(a.device, "bfloat16" if a.device == "cuda" else "float32"),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "layer_bench.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
