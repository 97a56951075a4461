"""Time a language model's linear layers alone, as one decode step runs them: bf16 against fp8.

    python -m ee_vla.benchmarks.linear_bench --shape openvla-7b --rows 1 22 --out outputs/linear_bench

A step of a 7B model over a short window is mostly its linear layers reading their weights. For
each row count (1 = an AR token, 22 = a Jacobi window) this times every linear layer of the shape
(q, k, v, o, gate, up, down; one weight per layer, so that no weight is still in L2 when it is read
again), captured as one CUDA graph and replayed back to back, with these kinds of product:

* ``bf16``: `x @ W.T` in bfloat16;
* ``fp8_row``: `torch._scaled_mm` of float8 e4m3 inputs with one scale per row of x and per
  column of W (torchao's `fp8` quantisation, `Float8DynamicActivationFloat8WeightConfig(PerRow())`);
* ``fp8_tensor``: the same with one scale per tensor;
* ``splitk`` (when named in ``--kinds``): the bf16 product by `ee_vla.benchmarks.splitk`'s Triton
  kernel in its plan for the shape; ``--splitk-sweep`` also times every plan of its sweep per layer
  shape and reports the fastest against cuBLAS.

It reports ms for all linear layers of the model, the weight bytes read per second, and that as a
share of the speed at which the same device reads a 1 GiB buffer once (`read_tbs`, measured in the
same run): how near each product is to the memory bound. `--stacked` times q/k/v and gate/up as one
product each, as the engines run them. The activations' own quantisation is not in these times.
CUDA GPUs of compute capability >= 8.9 (fp8); prints a table, writes `linear_bench.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ee_vla.benchmarks.shapes import LM_SHAPES, LMShape
from ee_vla.benchmarks.splitk import SWEEP, Plan, SplitK
from ee_vla.timing import capture_cuda_graph, cuda_ms_back_to_back, environment_info

log = logging.getLogger(__name__)

KINDS = ("bf16", "fp8_row", "fp8_tensor", "splitk")
DEFAULT_KINDS = KINDS[:3]
"""What torch and cuBLAS run; ``splitk`` is timed when named."""


def linear_shapes(shape: LMShape, stacked: bool = False) -> dict[str, tuple[int, int, int]]:
    """Per layer of `shape`: name -> (in features, out features, how many such layers). `stacked`:
    as the engine runs them once `ee_vla.models.fusion` stacked the projections that read the same
    input (q/k/v into one product, gate/up into one)."""
    head_dim = shape.hidden_size // shape.num_heads
    kv = shape.num_kv_heads * head_dim
    h, i = shape.hidden_size, shape.intermediate_size
    if stacked:
        return {"qkv": (h, h + 2 * kv, 1), "o": (h, h, 1), "gate_up": (h, 2 * i, 1), "down": (i, h, 1)}
    if kv == h:
        return {"q_k_v_o": (h, h, 4), "gate_up": (h, i, 2), "down": (i, h, 1)}
    return {"q_o": (h, h, 2), "k_v": (h, kv, 2), "gate_up": (h, i, 2), "down": (i, h, 1)}


def _products(x: torch.Tensor, weights: list[torch.Tensor], kind: str) -> list:
    """One call per weight: `x` times it, as product `kind` computes it."""
    if kind == "bf16":
        return [lambda w=w: x @ w.t() for w in weights]
    if kind == "splitk" or isinstance(kind, Plan):
        n, k = weights[0].shape
        product = SplitK(x.shape[0], n, k, x.device, None if kind == "splitk" else kind)
        outs = [x.new_empty(x.shape[0], n) for _ in weights]
        return [lambda w=w, o=o: product(x, w, o) for w, o in zip(weights, outs, strict=True)]
    x8 = x.to(torch.float8_e4m3fn)
    rows, n = x.shape[0], weights[0].shape[0]
    if kind == "fp8_row":
        sa, sb = torch.ones(rows, 1, device=x.device), torch.ones(1, n, device=x.device)
    else:
        sa = sb = torch.ones((), device=x.device)
    fp8 = [w.to(torch.float8_e4m3fn) for w in weights]
    return [lambda w=w: torch._scaled_mm(x8, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16) for w in fp8]


def read_tbs(gib: float = 1.0, iters: int = 20) -> float:
    """TB/s at which the current CUDA device reads a `gib` GiB buffer once (a sum over it, captured
    as a graph): the memory's speed a product that reads its weight once can approach."""
    buf = torch.zeros(int(gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda")
    graph = capture_cuda_graph([lambda: buf.sum(dtype=torch.float32)])
    ms = cuda_ms_back_to_back(graph.replay, iters)
    return buf.numel() * buf.element_size() / ms / 1e9


def _calls_us(fns: list, iters: int) -> float:
    """us per call of `fns` (one product each), captured as one CUDA graph and replayed back to back."""
    return cuda_ms_back_to_back(capture_cuda_graph(fns).replay, iters) / len(fns) * 1e3


def _product_us(x: torch.Tensor, weights: list[torch.Tensor], kind, iters: int) -> float:
    """us per product of `x` by each of `weights` (`kind`: a product kind or a split-K `Plan`)."""
    return _calls_us(_products(x, weights, kind), iters)


def time_linears(
    shape: LMShape, rows: int, kind: str, iters: int = 20, seed: int = 0, stacked: bool = False
) -> dict[str, float]:
    """ms of every linear layer of `shape` at `rows` input rows with product `kind`, and per layer
    shape (`linear_shapes`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {'|'.join(KINDS)}, got {kind!r}")
    dev = torch.device("cuda")
    torch.manual_seed(seed)
    out: dict[str, float] = {}
    total = 0.0
    for name, (k, n, per_layer) in linear_shapes(shape, stacked).items():
        x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        weights = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(shape.num_layers)]
        per_copy = _product_us(x, weights, kind, iters) / 1e3
        out[f"{name}_ms"] = per_copy
        total += per_copy * per_layer * shape.num_layers
        del weights
        torch.cuda.empty_cache()
    out["all_linears_ms"] = total
    return out


def weight_bytes(shape: LMShape, kind: str) -> int:
    """Bytes of every linear layer's weight of `shape` stored for `kind`."""
    params = sum(k * n * per for k, n, per in linear_shapes(shape).values()) * shape.num_layers
    return params * (2 if kind in ("bf16", "splitk") else 1)


def sweep_splitk(shape: LMShape, rows: int, iters: int = 20, stacked: bool = True, seed: int = 0) -> dict[str, dict]:
    """Per layer shape of `shape`: cuBLAS's bf16 product and every plan of `splitk.SWEEP`, us per
    product (a plan that does not compile or run on this device is left out), fastest first."""
    from tqdm.auto import tqdm
    from triton.runtime.errors import OutOfResources

    dev = torch.device("cuda")
    torch.manual_seed(seed)
    out = {}
    for name, (k, n, _) in linear_shapes(shape, stacked).items():
        x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        weights = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(shape.num_layers)]
        ref = (x @ weights[0].t()).float()
        plans = []
        for plan in tqdm(SWEEP, desc=f"{name} plans", leave=False):
            calls = _products(x, weights, plan)  # the product checked is the one timed
            try:
                got = calls[0]().float()
            except (OutOfResources, RuntimeError) as e:  # a plan's tiles need more shared memory than this GPU has
                log.info("splitk plan %s skipped: %s", plan, str(e).splitlines()[0])
                continue
            if not torch.allclose(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item()):
                raise AssertionError(f"split-K plan {plan} gives a wrong {name} product on this device")
            plans.append({**plan._asdict(), "us": _calls_us(calls, iters)})
        plans.sort(key=lambda r: r["us"])
        out[name] = {"in": k, "out": n, "cublas_us": _product_us(x, weights, "bf16", iters), "plans": plans}
        del weights
        torch.cuda.empty_cache()
    return out


def _sweep_lines(sweep: dict[str, dict], rows: int, read: float) -> list[str]:
    """One line per layer shape of a `sweep_splitk` result: cuBLAS and the fastest plan, us and
    share of the read speed `read` (TB/s)."""
    lines = []
    for name, row in sweep.items():
        nbytes = row["in"] * row["out"] * 2  # one bf16 weight
        cells = [f"{rows:>5} {name:<8} cuBLAS {row['cublas_us']:7.2f} us {nbytes / row['cublas_us'] / 1e6 / read:4.0%}"]
        if row["plans"]:
            b = row["plans"][0]
            cells.append(f"split-K {b['us']:7.2f} us {nbytes / b['us'] / 1e6 / read:4.0%}")
            cells.append(f"plan {b['block_n']} {b['block_k']} {b['split_k']} {b['stages']}")
        else:
            cells.append("split-K: no plan ran")
        lines.append("  ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ee_vla.benchmarks.linear_bench", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="openvla-7b", choices=list(LM_SHAPES))
    p.add_argument("--rows", nargs="+", type=int, default=[1, 22], help="input rows (tokens of the step)")
    p.add_argument(
        "--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=KINDS, help=f"default: {' '.join(DEFAULT_KINDS)}"
    )
    p.add_argument("--iters", type=int, default=20)
    p.add_argument(
        "--stacked", action="store_true", help="q/k/v and gate/up as one product each, as the engine runs them"
    )
    p.add_argument(
        "--splitk-sweep",
        action="store_true",
        help="also time every plan of the split-K kernel's sweep per layer shape (stacked), against cuBLAS",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/linear_bench"))
    a = p.parse_args(argv)
    if any(r < 1 for r in a.rows):
        p.error(f"--rows must be >= 1, got {a.rows}")
    if not torch.cuda.is_available():
        p.error("linear_bench times CUDA graphs: it needs a CUDA GPU")
    if any(k.startswith("fp8") for k in a.kinds) and torch.cuda.get_device_capability() < (8, 9):
        p.error(f"fp8 products need compute capability >= 8.9; {torch.cuda.get_device_name()} has less")
    shape = LM_SHAPES[a.shape]
    read = read_tbs(iters=a.iters)
    torch.cuda.empty_cache()
    results = {
        f"rows{r}": {kind: time_linears(shape, r, kind, a.iters, stacked=a.stacked) for kind in a.kinds} for r in a.rows
    }
    for r in a.rows:
        for kind in a.kinds:
            row = results[f"rows{r}"][kind]
            row["weight_tbs"] = weight_bytes(shape, kind) / row["all_linears_ms"] / 1e9
            row["of_read_speed"] = row["weight_tbs"] / read
    layers = "stacked q/k/v and gate/up" if a.stacked else "q, k, v, o, gate, up, down"
    print(f"{a.shape}: all linear layers ({shape.num_layers} layers; {layers}), {torch.cuda.get_device_name()}")
    print(f"the device reads memory at {read:.2f} TB/s (one pass over 1 GiB); each cell: ms, weight TB/s, % of that")
    print(f"{'rows':>5} " + " ".join(f"{k:>28}" for k in a.kinds))
    for r in a.rows:
        cells = []
        for kind in a.kinds:
            row = results[f"rows{r}"][kind]
            ms, tbs, share = row["all_linears_ms"], row["weight_tbs"], row["of_read_speed"]
            cells.append(f"{ms:>8.3f} ms {tbs:>5.2f} TB/s {share:>4.0%}")
        print(f"{r:>5} " + " ".join(f"{c:>28}" for c in cells))
    sweeps = {}
    if a.splitk_sweep:
        print(
            "split-K plans against cuBLAS: us per product, % of the read speed (plan: block_n block_k split_k stages)"
        )
        for r in a.rows:
            sweeps[f"rows{r}"] = sweep_splitk(shape, r, a.iters)
            print("\n".join(_sweep_lines(sweeps[f"rows{r}"], r, read)))
    out = {
        "shape": a.shape,
        "stacked": a.stacked,
        "read_tbs": read,
        "results": results,
        "splitk_sweep": sweeps,
        "environment": environment_info("cuda", "bfloat16"),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "linear_bench.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
