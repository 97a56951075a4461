"""CUDA-graph engine vs eager HFStep on the GPU (skipped without CUDA; the GPU job runs them)."""

import gc
import json

import pytest
import torch

from ee_vla.benchmarks.check import TINY_VOCAB, compare_to_eager, padded_prompts, tiny_lm, vla_case
from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.hf import HFStep
from ee_vla.engine import EnginePool, StaticEngine, make_prefill

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _assert_all_match(results: dict) -> None:
    bad = {k: v for k, v in results.items() if not v["match"]}
    assert not bad, bad


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("batch, pads", [(1, [0]), (4, [0, 3, 5, 8])])
def test_graph_engine_equals_eager_float64(arch, batch, pads):
    model = tiny_lm(arch, seed=1, device="cuda")
    inputs = padded_prompts(batch, 9, pads, seed=3, device="cuda")
    n = 12
    guess = torch.randint(0, TINY_VOCAB, (batch, n), generator=torch.Generator().manual_seed(4)).cuda()
    prefill = make_prefill("graph", model, n)
    _assert_all_match(compare_to_eager(model, inputs, n, prefill, guess=guess))
    _assert_all_match(compare_to_eager(model, inputs, n, prefill, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))
    engine = prefill.engines[batch]
    assert engine.uses_graphs and set(engine._graphs) == {1, n - 1} and engine._prompt_graphs


def test_captures_leave_no_junk_in_the_cache():
    """The warm-up forwards before each capture write junk into the cache; it is zeroed, so that a
    NaN among it (fp8 scaling of a zero row) could never reach a query through a masked slot."""
    model = tiny_lm("llama", seed=1, device="cuda")
    prefill = make_prefill("graph", model, 12)
    inputs = padded_prompts(2, 9, [0, 3], seed=3, device="cuda")
    engine = prefill.engine(2, inputs["input_ids"].shape[1])
    assert engine._graphs
    assert all(not layer.keys.any() and not layer.values.any() for layer in engine.cache.layers)


@pytest.mark.parametrize("mode", ["inductor", "frozen"])
@pytest.mark.parametrize("batch, pads", [(1, [0]), (4, [0, 3, 5, 8])])
def test_compiled_engine_equals_eager_float64(batch, pads, mode):
    """Inductor's generated kernels, captured as CUDA graphs, give the eager tokens (float64); with
    freezing too (weights folded into the generated code)."""
    model = tiny_lm("llama", seed=1, device="cuda")
    inputs = padded_prompts(batch, 9, pads, seed=3, device="cuda")
    n = 12
    prefill = make_prefill("compiled", model, n, compile_mode=mode)
    _assert_all_match(compare_to_eager(model, inputs, n, prefill, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))
    engine = prefill.engines[batch]
    assert engine.uses_graphs and engine.compile == mode and set(engine._graphs) == {1, n - 1}


def test_compiled_engine_with_math_attention_equals_eager_float64():
    """The attention backends are in force while Inductor traces: the frozen engine compiled with
    math attention only still gives the eager tokens (batch 4, left padding)."""
    model = tiny_lm("llama", seed=1, device="cuda")
    inputs = padded_prompts(4, 9, [0, 3, 5, 8], seed=3, device="cuda")
    prefill = make_prefill("compiled", model, 12, compile_mode="frozen", sdpa_backends=["math"])
    _assert_all_match(compare_to_eager(model, inputs, 12, prefill, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))
    assert prefill.engines[4].sdpa_backends == ("math",)


def _bf16_engine_logits(model, **engine_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefill logits, logits of a 7-token step) of a batch-2 `StaticEngine(**engine_kw)` over
    fixed left-padded prompts, as float32."""
    inputs = padded_prompts(2, 20, [0, 6], seed=1, device="cuda")
    engine = StaticEngine(model, batch_size=2, max_prompt_len=32, max_new_tokens=8, **engine_kw)
    step, first, _ = engine.prefill(**inputs)
    return first.float(), step(torch.arange(7, device="cuda").repeat(2, 1), 0).float()


def _assert_bf16_close(ref: tuple[torch.Tensor, ...], other: tuple[torch.Tensor, ...]) -> None:
    for a, b in zip(ref, other, strict=True):
        assert (a - b).abs().max() <= 1e-2 * a.abs().max()


@pytest.mark.parametrize("backends", [("math",), ("efficient",), ("cudnn", "math")])
def test_attention_backends_agree_in_bf16(backends):
    """In bf16 (where the fused kernels run) each backend's graph gives nearly the logits of torch's
    own choice."""
    model = tiny_lm("llama", seed=0, dtype=torch.bfloat16, device="cuda")
    _assert_bf16_close(_bf16_engine_logits(model), _bf16_engine_logits(model, sdpa_backends=backends))


def test_graph_engine_equals_eager_on_a_llava_vla():
    _assert_all_match(vla_case("tiny", "cuda", "graph", torch.float64, batch=2)["results"])


def test_graph_replays_follow_new_prompts_and_return_fresh_logits():
    """Prompts of other lengths (other buckets, stale slots) after a capture; the logits a step
    returns stay valid after the next replay."""
    model = tiny_lm("llama", seed=0, device="cuda")
    engine = StaticEngine(model, batch_size=2, max_prompt_len=40, max_new_tokens=10)
    for length, pads in ((30, [0, 7]), (5, [2, 0]), (17, [0, 0]), (30, [4, 1])):
        inputs = padded_prompts(2, length, pads, seed=length, device="cuda")
        step, first, _ = engine.prefill(**inputs)
        ref_step, ref_first, _ = HFStep.prefill(model, **inputs)
        assert torch.allclose(first, ref_first, rtol=1e-9, atol=1e-9)
        for cfg in (DecodeConfig(method="ar"), DecodeConfig(method="jacobi")):
            step, first, _ = engine.prefill(**inputs)
            ref_step, ref_first, _ = HFStep.prefill(model, **inputs)
            assert torch.equal(decode(step, first, 10, cfg)[0], decode(ref_step, ref_first, 10, cfg)[0])
        a = step(torch.ones(2, 3, dtype=torch.long, device="cuda"), 0)
        a_copy = a.clone()
        step(torch.full((2, 3), 5, dtype=torch.long, device="cuda"), 0)
        assert torch.equal(a, a_copy)
    assert 0 < engine.replay_ms(engine.width_for(3), iters=5) < 1e3


def test_graph_and_static_forwards_agree_in_bf16():
    """The graph replays the static engine's forwards: in bf16 the logits of the same inputs must
    be (nearly) the same, whatever eager HF's rounding does."""
    model = tiny_lm("qwen2", seed=0, dtype=torch.bfloat16, device="cuda")
    _assert_bf16_close(_bf16_engine_logits(model, graphs=False), _bf16_engine_logits(model, graphs=True))


def test_engines_evicted_from_a_pool_never_break_a_later_capture():
    """A vectorised evaluation cycles through batch sizes, so its pool evicts engines. An evicted
    engine's graphs are released at once; freed later by the garbage collector, in the middle of
    another engine's capture, they invalidated it (seen in `ee-vla eval --engine graph`). The
    collector runs at nearly every allocation here, which made that failure certain."""
    model = tiny_lm("llama", seed=1, device="cuda")
    pool = EnginePool(model, 8, graphs=True, max_engines=1)
    old = gc.get_threshold()
    gc.set_threshold(1)
    try:
        for b in (1, 2, 3, 1, 2):
            inputs = padded_prompts(b, 9, [0] * b, seed=b, device="cuda")
            _assert_all_match(compare_to_eager(model, inputs, 8, pool))
    finally:
        gc.set_threshold(*old)
    assert list(pool.engines) == [2]


def test_profiler_times_step_replays_alone(tmp_path, capsys):
    """`--steps-only`: each engine is built for the asked widths and no prompt, and the printed
    table gives its replay times and build seconds (no prefill, decoders or generate)."""
    from ee_vla.benchmarks.profile import main

    assert (
        main(
            [
                "--shape",
                "tiny",
                "--device",
                "cuda",
                "--engines",
                "graph",
                "compiled",
                "--compile-mode",
                "aot_eager",
                "--steps-only",
                "--step-widths",
                "1",
                "5",
                "--step-iters",
                "3",
                "--kernels",
                "3",
                "--no-plots",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    out = json.loads((tmp_path / "profile_tiny.json").read_text())
    assert set(out["raw"]) == {"graph", "compiled"} and out["results"] == {} and out["hf_generate"] is None
    for engine in ("graph", "compiled"):
        raw = out["raw"][engine]
        assert set(raw) == {"replay_w1_ms", "replay_w5_ms", "kernels_w1", "kernels_w5"}
        assert raw["replay_w1_ms"] > 0 and raw["replay_w5_ms"] > 0
        assert len(raw["kernels_w5"]["top"]) == 3 and raw["kernels_w5"]["per_forward_ms"] > 0
        assert f"{engine:<8} built (compiled, captured) in" in printed
        assert f"{engine} step w5: " in printed and "graph replay alone" in printed


@pytest.mark.parametrize("mode", ["fp8", "fp8_tensor"])
def test_fp8_policies_run_on_the_graph_engine(tiny_vla_dir, mode):
    """Both fp8 modes quantise the policy on a GPU that has fp8 and decode finite actions through
    CUDA graphs, batch of 2, AR and Jacobi."""
    import numpy as np

    from ee_vla.models.quantize import quantized_mode
    from ee_vla.policy import VLAPolicy

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    pytest.importorskip("torchao", reason="quantize needs torchao: pip install 'ee_vla[quant]'")
    policy = VLAPolicy.from_pretrained(
        tiny_vla_dir, decoder="ar", device="cuda", dtype="bfloat16", engine="graph", quantize=mode
    )
    assert quantized_mode(policy.vla.model) == mode
    rng = np.random.default_rng(0)
    size = policy.vla.image_size
    obs = {"pixels": rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8), "instruction": ["pick up the cube"] * 2}
    for decoder in ("ar", "jacobi"):
        policy.decoder = decoder
        policy.reset()
        actions = policy.predict_action_chunk(obs)
        assert actions.shape == (2, policy.chunk_size, policy.action_dim) and np.isfinite(actions).all()


def test_a_calibrated_fp8_policy_runs_on_the_graph_engine(tiny_vla_dir, tmp_path):
    """fp8_tensor with activation scales from a calibration recorded on a batch of observations:
    the captured forwards decode finite actions, and Jacobi equals AR on the quantised model."""
    import numpy as np

    from ee_vla.models.quantize import quantized_mode, recording_activation_amax, save_calibration
    from ee_vla.models.vla import VLA
    from ee_vla.policy import VLAPolicy

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    pytest.importorskip("torchao", reason="quantize needs torchao: pip install 'ee_vla[quant]'")
    vla = VLA.from_pretrained(tiny_vla_dir, device="cuda", dtype=torch.bfloat16)
    rng = np.random.default_rng(0)
    size = vla.image_size
    obs = {"pixels": rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8), "instruction": ["pick up the cube"] * 2}
    with recording_activation_amax(vla.model) as table, torch.inference_mode():
        vla.model(**vla.build_inputs(obs["pixels"], obs["instruction"]))
    cal = save_calibration(tmp_path / "cal.json", table)
    policy = VLAPolicy.from_pretrained(
        tiny_vla_dir,
        decoder="ar",
        device="cuda",
        dtype="bfloat16",
        engine="graph",
        quantize="fp8_tensor",
        calibration=str(cal),
    )
    assert quantized_mode(policy.vla.model) == "fp8_tensor"
    chunks = {}
    for decoder in ("ar", "jacobi"):
        policy.decoder = decoder
        policy.reset()
        chunks[decoder] = policy.predict_action_chunk(obs)
    assert chunks["ar"].shape == (2, policy.chunk_size, policy.action_dim) and np.isfinite(chunks["ar"]).all()
    assert np.array_equal(chunks["ar"], chunks["jacobi"])
