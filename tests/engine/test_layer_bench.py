"""`ee_vla.benchmarks.layer_bench` on a small shape, on a GPU (bf16; on Hopper and later the
variants with programmatic dependent launch and a prefetch too) or on the CPU (float32 through
Triton's interpreter, which tests/conftest.py turns on there): the fused layers compute what the
engine's layers compute, the check catches a fused layer that does not, and the command reports
and saves what it ran."""

import json

import pytest
import torch

pytest.importorskip("triton")

from ee_vla.benchmarks import layer_bench, splitk  # noqa: E402
from ee_vla.benchmarks.shapes import LMShape  # noqa: E402

TINY = LMShape("llama", 64, 2, 2, 2, 96, 100)
"""Two layers of two 32-wide heads: small enough for the interpreter."""

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PDL = DEVICE == "cuda" and torch.cuda.get_device_capability() >= (9, 0)


def test_fused_layers_give_the_engines_hidden_states():
    out = layer_bench.run(TINY, 5, DEVICE, iters=1, prefetch=(0, 256), compile=False)
    v = out["variants"]
    pdl = {"fused_pdl", "fused_pdl_attn", "fused_pdl_attn_prefetch256"} if PDL else set()
    assert set(v) == {"engine", "fused", *pdl} and out["layers"] == 2
    for name in ("fused", *pdl):
        assert v[name]["rel_diff"] < (1e-5 if DEVICE == "cpu" else 2e-2)  # float32: rounding only
        assert v[name]["ms"] > 0
    assert v["engine"]["vs_engine"] == 1.0
    w = layer_bench.LayerWeights.random(TINY, DEVICE, torch.float32, torch.Generator(DEVICE).manual_seed(0))
    size = 2 if DEVICE == "cuda" else 4  # bf16 on a GPU
    params = 3 * 64 * 64 + 64 * 64 + 2 * 96 * 64 + 64 * 96  # q/k/v, o, gate/up, down
    assert out["weight_bytes"] == 2 * w.nbytes() * size // 4 == 2 * size * params


@pytest.mark.parametrize("broken", ["norm", "residual"])
def test_the_check_catches_a_wrong_fused_layer(monkeypatch, broken):
    """A fused layer whose norm weights are not folded in, or whose down product drops the
    residual: the run stops and names the variant."""
    if broken == "norm":
        monkeypatch.setattr(splitk, "fold_norm", lambda weight, norm_weight: weight)
    else:
        real = layer_bench.FusedLayers.__init__

        def init(self, *args, **kwargs):
            real(self, *args, **kwargs)
            down = self.down
            self.down = lambda x, w, out, residual, ss_out: down(x, w, out, residual=0 * residual, ss_out=ss_out)

        monkeypatch.setattr(layer_bench.FusedLayers, "__init__", init)
    with pytest.raises(AssertionError, match="fused differs from the engine's layers"):
        layer_bench.run(TINY, 3, DEVICE, layers=1, iters=1, compile=False)


def test_main_reports_and_saves(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(layer_bench.LM_SHAPES, "tiny-llama", TINY)  # a Llama shape: the choices
    args = ["--shape", "tiny-llama", "--device", DEVICE, "--no-compile", "--rows", "2", "--layers", "1", "--iters", "1"]
    out = layer_bench.main([*args, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "layer_bench.json").read_text())
    assert saved["results"][0]["variants"].keys() == out["results"][0]["variants"].keys() >= {"engine", "fused"}
    assert saved["environment"]["device"] == DEVICE
    printed = capsys.readouterr().out
    assert "1 decoder layer(s)" in printed and "fused" in printed
    for bad in (["--rows", "65"], ["--prefetch", "-1"], ["--layers", "0"], ["--shape", "qwen2-0.5b"]):
        with pytest.raises(SystemExit):
            layer_bench.main(["--device", DEVICE, *bad])


def test_the_sweep_keeps_the_fastest_plan_it_checked(monkeypatch):
    """`sweep_plans` tries each plan per product with the others at their best so far, checks each
    trial's hidden states, logs a plan that fails instead of stopping, and keeps the fastest."""
    g = torch.Generator(DEVICE).manual_seed(0)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    weights = [layer_bench.LayerWeights.random(TINY, DEVICE, dtype, g)]
    attention = layer_bench.Attention.random(TINY, 3, layer_bench.CACHE_SLOTS, DEVICE, dtype)
    x = torch.randn(3, TINY.hidden_size, generator=g, device=DEVICE).to(dtype)
    ref = layer_bench.EngineLayers(TINY, weights, attention)(x)
    fast, slow, broken = splitk.Plan(32, 32, 2, 1), splitk.Plan(32, 32, 1, 1), splitk.Plan(33, 32, 1, 1)
    built = []

    def make(plans):
        built.append(dict(plans))
        if plans.get("o") == broken:
            raise RuntimeError("out of resources: shared memory")
        return layer_bench.FusedLayers(TINY, weights, attention, x, plans=plans)

    times = iter([5.0, 4.0, 3.0])  # the start, then o's two plans that run
    monkeypatch.setattr(layer_bench, "_time_ms", lambda fn, device, iters: next(times))
    best, log = layer_bench.sweep_plans(make, ref, DEVICE, 1, plans=[slow, broken, fast], products=("o",))
    assert best == {"o": fast} and built == [{}, {"o": slow}, {"o": broken}, {"o": fast}]
    assert [r.get("ms") for r in log] == [4.0, None, 3.0] and "out of resources" in log[1]["error"]
    assert layer_bench.FusedLayers(TINY, weights, attention, x, plans=best).plans["o"] == fast


def test_a_run_with_the_sweep_reports_the_swept_variant(monkeypatch):
    one = splitk.Plan(32, 32, 1, 1)
    monkeypatch.setattr(layer_bench, "SWEEP_PLANS", [one])
    v = layer_bench.run(TINY, 2, DEVICE, layers=1, iters=1, compile=False, sweep=True)["variants"]
    name = "fused_pdl_attn_swept" if PDL else "fused_swept"
    assert v[name]["rel_diff"] < (1e-5 if DEVICE == "cpu" else 2e-2)
    assert [r["product"] for r in v[name]["sweep"]] == list(layer_bench.PRODUCTS)
    assert set(v[name]["plans"]) == set(layer_bench.PRODUCTS) and "sweep" not in v["fused"]
