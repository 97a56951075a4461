"""Exactness of the static/graph/compiled engines against the eager `HFStep`, through the one decode loop.

`compare_to_eager` decodes the same inputs with every decoder configuration twice (eager `HFStep`
and the engine under test) and compares tokens, iteration counts and the prefill's logits.
`run_checks(device)` is the whole check the GPU job runs (also as `python -m ee_vla.benchmarks.check`):

* strict (float64, tiny random Llama / Qwen2 LMs and a tiny Llava VLA reading one camera and one
  reading two (not compiled), batch 1 and 4, left-padded prompts, AR / Jacobi / CEED): the engine
  must give exactly the eager tokens and iterations.
  float64 keeps argmax ties from flipping between kernels that sum in different orders.
* bf16 (the `small` VLA preset): the agreement rate of graph vs static (the same forwards, replayed)
  and of graph vs eager (other kernels: bf16 rounding may flip near-ties), reported, not asserted.

Tests call the same functions (`tests/engine`), so the job and the test suite cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.hf import HFStep
from ee_vla.engine.factory import Prefill, make_prefill

log = logging.getLogger(__name__)

CHECK_CONFIGS: dict[str, DecodeConfig] = {
    "ar": DecodeConfig(method="ar"),
    "jacobi": DecodeConfig(method="jacobi"),
    "jacobi_cut_to_prompt": DecodeConfig(method="jacobi", keep_final_kv=False),
    "jacobi_window3": DecodeConfig(method="jacobi", window=3),
    "ceed_cap2": DecodeConfig(method="ceed", max_iterations=2),
}
"""Decoder configurations every check runs (AR, Jacobi in its three cache schemes, CEED's cap)."""

TINY_VOCAB = 48


def tiny_lm(
    arch: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    head_dim: int = 8,
):
    """A tiny random Llama or Qwen2 causal LM (as tests/decoding builds; 4 query and 2 KV heads of
    `head_dim`), lm_head sharpened so that greedy tokens repeat structure rather than being noise."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=4 * head_dim,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be llama|qwen2, got {arch!r}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kw) if arch == "llama" else Qwen2Config(**kw)
    cfg._attn_implementation = attn_implementation
    model = LlamaForCausalLM(cfg) if arch == "llama" else Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model.to(device=device, dtype=dtype).eval()


def padded_prompts(
    batch: int,
    length: int,
    pads: list[int] | None = None,
    vocab: int = TINY_VOCAB,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Random prompts (batch, length), row b left-padded with pads[b] tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pads or [0] * batch):
        mask[b, :p] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _decode(prefill: Prefill, model, inputs: dict, n: int, cfg: DecodeConfig, **kw):
    step, first, _ = prefill(model, **inputs)
    tokens, stats = decode(step, first, n, cfg, **kw)
    return first, tokens, stats


def compare_to_eager(
    model,
    inputs: dict,
    n_tokens: int,
    prefill: Prefill,
    configs: dict[str, DecodeConfig] | None = None,
    *,
    guess: torch.Tensor | None = None,
    action_range: tuple[int, int] | None = None,
    unit: int = 1,
) -> dict[str, dict]:
    """Decode with eager `HFStep` and with `prefill`'s engine; per config: tokens equal (`match`),
    token agreement rate, iterations of both, and the max |difference| of the prefill's logits."""
    out = {}
    kw = dict(guess=guess, action_range=action_range, unit=unit)
    for name, cfg in (configs or CHECK_CONFIGS).items():
        f_ref, t_ref, s_ref = _decode(HFStep.prefill, model, inputs, n_tokens, cfg, **kw)
        f_eng, t_eng, s_eng = _decode(prefill, model, inputs, n_tokens, cfg, **kw)
        out[name] = {
            "match": bool(torch.equal(t_ref, t_eng)) and s_ref.iterations == s_eng.iterations,
            "token_agreement": float((t_ref == t_eng).float().mean()),
            "iterations": [s_ref.iterations, s_eng.iterations],
            "prefill_logits_max_abs_diff": float((f_ref.double() - f_eng.double()).abs().max()),
        }
    return out


def _agreement(model, inputs: dict, n: int, a: Prefill, b: Prefill, cfg: DecodeConfig, **kw) -> float:
    _, ta, _ = _decode(a, model, inputs, n, cfg, **kw)
    _, tb, _ = _decode(b, model, inputs, n, cfg, **kw)
    return float((ta == tb).float().mean())


def strict_cases(device: str | torch.device, engine: str, archs: tuple[str, ...] = ("llama", "qwen2")) -> list[dict]:
    """The float64 exactness cases on `device` for `engine` (static | graph | compiled): tiny
    Llama/Qwen2 (`archs`), batch 1 and 4 (left-padded), with and without an action range; a tiny
    Llava VLA, batch 2, reading one camera and (but for the compiled engine, whose every shape
    compiles) two."""
    cases = []
    n = 12
    for arch in archs:
        model = tiny_lm(arch, seed=0, device=device)
        for batch, pads in ((1, [0]), (4, [0, 3, 5, 8])):
            inputs = padded_prompts(batch, 9, pads, seed=batch, device=device)
            guess = torch.randint(0, TINY_VOCAB, (batch, n), generator=torch.Generator().manual_seed(7)).to(device)
            prefill = make_prefill(engine, model, n)
            for action_range in (None, (TINY_VOCAB - 16, TINY_VOCAB - 1)):
                res = compare_to_eager(model, inputs, n, prefill, guess=guess, action_range=action_range)
                cases.append({"model": f"tiny-{arch}", "batch": batch, "action_range": action_range, "results": res})
    cases.append(vla_case("tiny", device, engine, torch.float64, batch=2))
    if engine != "compiled":  # the graph engine places several cameras' image features as the static one
        cases.append(vla_case("tiny", device, engine, torch.float64, batch=2, cameras=TWO_CAMERAS))
    return cases


TWO_CAMERAS = ("pixels", "wrist_pixels")
"""The cameras of the two-camera VLA case: each image's tokens after the previous one's in the prompt."""


def vla_case(
    preset: str,
    device: str | torch.device,
    engine: str,
    dtype: torch.dtype,
    batch: int = 2,
    cameras: tuple[str, ...] = ("pixels",),
) -> dict:
    """A random Llava VLA of `preset` reading `cameras`: policy-style inputs (an image per camera +
    instructions of different lengths, so left padding), decoded with every check config."""
    from ee_vla.benchmarks.shapes import random_camera_images
    from ee_vla.models.vla import VLA

    vla = VLA.create(preset, chunk_size=3, seed=0, cameras=cameras)
    vla.model.to(device=device, dtype=dtype)
    images = random_camera_images(vla, batch, np.random.default_rng(0))
    instr = ["pick up the red cube and put it in the basket", "open the drawer"][:batch] + ["push"] * max(0, batch - 2)
    inputs = vla.build_inputs(vla.camera_images(images), instr)
    n = vla.n_action_tokens
    res = compare_to_eager(
        vla.model, inputs, n, make_prefill(engine, vla.model, n), action_range=vla.action_range, unit=vla.action_dim
    )
    return {
        "model": f"vla-{preset}" + ("" if len(vla.cameras) == 1 else f"-{len(vla.cameras)}cameras"),
        "cameras": list(vla.cameras),
        "batch": batch,
        "dtype": str(dtype),
        "action_range": vla.action_range,
        "results": res,
    }


def bf16_agreement(device: str | torch.device, batch: int = 2, compiled: bool = False) -> dict:
    """Token agreement (0..1) in bf16 on the `small` VLA: graph vs static and graph vs eager (and
    compiled vs eager, compiled vs graph with `compiled`)."""
    from ee_vla.benchmarks.shapes import random_camera_images
    from ee_vla.models.vla import VLA

    vla = VLA.create("small", chunk_size=3, seed=0)
    vla.model.to(device=device, dtype=torch.bfloat16)
    images = random_camera_images(vla, batch, np.random.default_rng(1))
    inputs = vla.build_inputs(
        vla.camera_images(images), ["pick up the red cube", "open the top drawer of the cabinet"][:batch]
    )
    n, m = vla.n_action_tokens, vla.model
    graph, static = make_prefill("graph", m, n), make_prefill("static", m, n)
    kw = dict(action_range=vla.action_range, unit=vla.action_dim)
    comp = make_prefill("compiled", m, n) if compiled else None
    out = {}
    for name, cfg in CHECK_CONFIGS.items():
        out[name] = {
            "graph_vs_static": _agreement(m, inputs, n, graph, static, cfg, **kw),
            "graph_vs_eager": _agreement(m, inputs, n, graph, HFStep.prefill, cfg, **kw),
        }
        if comp is not None:
            out[name]["compiled_vs_eager"] = _agreement(m, inputs, n, comp, HFStep.prefill, cfg, **kw)
            out[name]["compiled_vs_graph"] = _agreement(m, inputs, n, comp, graph, cfg, **kw)
    return out


COMPILED_ARCHS = ("llama",)
"""The compiled engine's strict cases use one LM architecture: every case compiles each of its
shapes (seconds apiece), and what compilation could break is the same for both."""


def run_checks(device: str = "cpu", compiled: bool | None = None) -> dict:
    """All strict checks for the engines available on `device` (static; graph on CUDA; compiled
    when `compiled`, default on CUDA), plus the bf16 agreement report on CUDA. `ok` is True when
    every strict case matched."""
    cuda = torch.device(device).type == "cuda"
    compiled = cuda if compiled is None else compiled
    engines = ["static"] + (["graph"] if cuda else []) + (["compiled"] if compiled else [])
    report: dict = {"device": str(device), "engines": engines, "strict": {}}
    for engine in engines:
        archs = COMPILED_ARCHS if engine == "compiled" else ("llama", "qwen2")
        report["strict"][engine] = strict_cases(device, engine, archs)
    failures = [
        f"{engine}/{case['model']}/b{case['batch']}/{name}"
        for engine, cases in report["strict"].items()
        for case in cases
        for name, r in case["results"].items()
        if not r["match"]
    ]
    report["failures"] = failures
    report["ok"] = not failures
    if "graph" in engines:
        report["bf16_small_vla_agreement"] = bf16_agreement(device, compiled=compiled)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the static/graph decode engines against eager HFStep.")
    p.add_argument(
        "--device", default="auto", help="auto (cuda where torch sees a GPU, else cpu), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--out", type=Path, default=None, help="directory for exactness.json")
    p.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also check the torch.compile engine (default: on CUDA)",
    )
    args = p.parse_args(argv)
    from ee_vla.runtime import RuntimeConfigError, resolve_device

    try:
        args.device = resolve_device(args.device)
    except RuntimeConfigError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run_checks(args.device, args.compiled)
    from ee_vla.timing import environment_info

    report["environment"] = environment_info(args.device, "float64")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "exactness.json").write_text(json.dumps(report, indent=2))
    n_cases = sum(len(c["results"]) for cases in report["strict"].values() for c in cases)
    print(f"exactness on {args.device}: {n_cases - len(report['failures'])}/{n_cases} strict cases match eager HFStep")
    for f in report["failures"]:
        print(f"  MISMATCH {f}")
    for name, r in report.get("bf16_small_vla_agreement", {}).items():
        extra = "".join(
            f"  {k.replace('_vs_', '==')} {r[k]:.3f}" for k in ("compiled_vs_eager", "compiled_vs_graph") if k in r
        )
        print(
            f"  bf16 small VLA {name:<22} graph==static {r['graph_vs_static']:.3f}  "
            f"graph==eager {r['graph_vs_eager']:.3f}{extra}"
        )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
