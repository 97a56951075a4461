"""The static-cache step gives exactly the eager HFStep tokens through the one decode loop (CPU)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ee_vla.benchmarks.check import TINY_VOCAB, compare_to_eager, padded_prompts, tiny_lm, vla_case
from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.hf import HFStep
from ee_vla.engine import EnginePool, StaticEngine, make_prefill, resolve_engine


def _assert_all_match(results: dict) -> None:
    bad = {k: v for k, v in results.items() if not v["match"]}
    assert not bad, bad
    assert all(v["prefill_logits_max_abs_diff"] < 1e-10 for v in results.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("batch, pads", [(1, [0]), (4, [0, 3, 5, 8])])
def test_static_step_equals_eager_for_every_decoder(arch, batch, pads):
    model = tiny_lm(arch, seed=1)
    inputs = padded_prompts(batch, 9, pads, seed=3)
    n = 12
    guess = torch.randint(0, TINY_VOCAB, (batch, n), generator=torch.Generator().manual_seed(4))
    prefill = make_prefill("static", model, n)
    _assert_all_match(compare_to_eager(model, inputs, n, prefill, guess=guess))
    _assert_all_match(compare_to_eager(model, inputs, n, prefill, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))


def test_static_step_equals_eager_with_eager_attention():
    """The additive 4-D mask also serves transformers' eager attention (not only SDPA). float32:
    in float64 HF's eager attention itself turns left-padded rows into NaN (its float32 softmax
    sees float64's min as -inf on fully masked padding rows)."""
    model = tiny_lm("llama", seed=2, dtype=torch.float32, attn_implementation="eager")
    inputs = padded_prompts(4, 7, [0, 1, 4, 6], seed=5)
    res = compare_to_eager(model, inputs, 9, make_prefill("static", model, 9))
    assert all(v["match"] for v in res.values()), res
    assert all(v["prefill_logits_max_abs_diff"] < 1e-5 for v in res.values())


def test_static_step_equals_eager_on_a_llava_vla():
    case = vla_case("tiny", "cpu", "static", torch.float64, batch=2)
    assert case["batch"] == 2
    _assert_all_match(case["results"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_static_jacobi_to_convergence_equals_eager_ar(data):
    """Property: any window / cache scheme / guess through the static engine == eager AR."""
    model = tiny_lm(data.draw(st.sampled_from(["llama", "qwen2"])), data.draw(st.integers(0, 1)))
    batch = data.draw(st.sampled_from([1, 3]))
    P = data.draw(st.integers(2, 10))
    pads = [data.draw(st.integers(0, P - 1)) for _ in range(batch)]
    inputs = padded_prompts(batch, P, pads, seed=data.draw(st.integers(0, 1000)))
    n = data.draw(st.integers(1, 14))
    window = data.draw(st.one_of(st.none(), st.integers(1, 14)))
    keep = True if window is not None else data.draw(st.booleans())
    guess = torch.tensor(data.draw(st.lists(st.integers(0, TINY_VOCAB - 1), min_size=batch * n, max_size=batch * n)))
    step, first, _ = HFStep.prefill(model, **inputs)
    ar, _ = decode(step, first, n, DecodeConfig(method="ar"))
    engine = StaticEngine(model, batch_size=batch, max_prompt_len=P, max_new_tokens=n)
    step, first, _ = engine.prefill(**inputs)
    tokens, stats = decode(
        step, first, n, DecodeConfig(method="jacobi", window=window, keep_final_kv=keep), guess=guess.view(batch, n)
    )
    assert torch.equal(tokens, ar) and stats.exact


def test_a_new_prefill_reuses_the_cache_and_stales_the_old_step():
    model = tiny_lm("qwen2", seed=0)
    engine = StaticEngine(model, batch_size=2, max_prompt_len=12, max_new_tokens=8)
    long, short = padded_prompts(2, 12, [0, 5], seed=1), padded_prompts(2, 4, [1, 0], seed=2)
    for inputs in (long, short, long):  # a short prompt after a long one leaves stale slots: masked
        old, _, _ = engine.prefill(**inputs)
        step, first, _ = engine.prefill(**inputs)
        ref_step, ref_first, _ = HFStep.prefill(model, **inputs)
        assert torch.equal(
            decode(step, first, 8, DecodeConfig(method="jacobi"))[0],
            decode(ref_step, ref_first, 8, DecodeConfig(method="jacobi"))[0],
        )
        with pytest.raises(RuntimeError, match="earlier prefill"):
            old(torch.zeros(2, 1, dtype=torch.long), 0)


def test_engine_errors_name_the_problem():
    model = tiny_lm("llama", seed=0)
    engine = StaticEngine(model, batch_size=2, max_prompt_len=6, max_new_tokens=5)
    assert engine.widths == [1, 4] and engine.width_for(1) == 1 and engine.width_for(3) == 4
    with pytest.raises(ValueError, match="batches of 2"):
        engine.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_prompt_len=6"):
        engine.prefill(torch.zeros(2, 7, dtype=torch.long))
    step, _, _ = engine.prefill(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the engine's widths"):
        step(torch.zeros(2, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="cache slots"):
        step(torch.zeros(2, 4, dtype=torch.long), 8)
    with pytest.raises(RuntimeError, match="replay needs an engine with CUDA graphs"):
        engine.replay_ms(4)
    with pytest.raises(ValueError, match="needs a CUDA model"):
        StaticEngine(model, batch_size=1, max_prompt_len=4, max_new_tokens=3, graphs=True)


def test_forward_has_no_host_sync():
    """What a CUDA graph captures must not read tensor values on the host (.item(), bool(tensor)):
    on the meta device, which holds no values, such a read raises. Prefill and steps of every width
    run there, Llama and Qwen2 (GQA), batch 2."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    for cls, cfg in ((LlamaForCausalLM, LlamaConfig(**kw)), (Qwen2ForCausalLM, Qwen2Config(**kw))):
        with torch.device("meta"):
            model = cls._from_config(cfg, dtype=torch.bfloat16).eval()
        engine = StaticEngine(model, batch_size=2, max_prompt_len=8, max_new_tokens=6, graphs=False)
        ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
        step, first, _ = engine.prefill(ids, torch.ones_like(ids))
        assert first.shape == (2, 40)
        for L in (1, 3, 5):
            assert step(torch.zeros(2, L, dtype=torch.long, device="meta"), 1).shape == (2, L, 40)


def test_sliding_window_models_are_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    )
    with pytest.raises(NotImplementedError, match="global attention"):
        StaticEngine(Qwen2ForCausalLM(cfg), batch_size=1, max_prompt_len=4, max_new_tokens=3)


def test_resolve_and_make_prefill():
    assert resolve_engine("auto", "cpu") == "eager" and resolve_engine("static", "cpu") == "static"
    assert resolve_engine("compiled", "cpu") == "compiled"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_engine("graph", "cpu")
    with pytest.raises(ValueError, match="eager|static|graph"):
        resolve_engine("fast", "cpu")
    model = tiny_lm("llama", seed=0)
    assert make_prefill("auto", model, 7) == HFStep.prefill
    pool = make_prefill("static", model, 7)
    assert isinstance(pool, EnginePool) and not pool.graphs
    compiled = make_prefill("compiled", model, 7)  # on the CPU: compiled forwards, no graphs
    assert isinstance(compiled, EnginePool) and not compiled.graphs and compiled.compile == "inductor"
    pool(model, **padded_prompts(2, 5, [0, 1]))
    first = pool.engines[2]
    pool(model, **padded_prompts(2, 9, [0, 1]))
    assert pool.engines[2] is first  # built with headroom for longer prompts
    pool(model, **padded_prompts(2, 100, [0, 1]))
    assert pool.engines[2] is not first and pool.engines[2].max_prompt_len >= 100
    pool(model, **padded_prompts(1, 5))
    assert set(pool.engines) == {1, 2}
    with pytest.raises(ValueError, match="another model"):
        pool(tiny_lm("qwen2", seed=0), **padded_prompts(1, 5))


class _ReplayGraph:
    """Stands in for a CUDA graph on the CPU: a fixed output tensor that `replay` refills by
    re-running the captured forward (which reads only the engine's static buffers)."""

    def __init__(self, forward):
        self.forward = forward
        self.out = forward()

    def replay(self) -> None:
        self.out.copy_(self.forward())


class _ReplayEngine(StaticEngine):
    def _graph_of(self, forward):
        graph = _ReplayGraph(forward)
        return graph, graph.out


def test_the_first_capture_also_captures_every_longer_bucket():
    """A longer instruction later finds its prefill graph ready: the first capture takes every
    longer bucket up to max_prompt_len (40, not a multiple of 16, is a bucket of its own), and the
    tokens of prompts in each of them stay the eager ones."""
    model = tiny_lm("llama", seed=3)
    engine = _ReplayEngine(model, batch_size=2, max_prompt_len=40, max_new_tokens=6, graphs=False)
    engine.uses_graphs = True
    with torch.inference_mode():
        engine._capture(0)
    _assert_all_match(
        compare_to_eager(model, padded_prompts(2, 9, [0, 3], seed=1), 6, lambda m, **kw: engine.prefill(**kw))
    )
    assert set(engine._prompt_graphs) == {(16, 0), (32, 0), (40, 0)}
    graphs = dict(engine._prompt_graphs)
    for length in (20, 37, 12):
        inputs = padded_prompts(2, length, [0, 5], seed=length)
        _assert_all_match(compare_to_eager(model, inputs, 6, lambda m, **kw: engine.prefill(**kw)))
    assert engine._prompt_graphs == graphs  # nothing captured after the first prefill


def test_the_replay_path_feeds_static_buffers_and_returns_fresh_logits():
    """The graph code path (buffers copied in, one replay per step and per prompt bucket, the
    output cloned) run on the CPU with a stand-in graph."""
    model = tiny_lm("llama", seed=3)
    engine = _ReplayEngine(model, batch_size=4, max_prompt_len=24, max_new_tokens=10, graphs=False)
    engine.uses_graphs = True
    with torch.inference_mode():
        engine._capture(0)
    for length in (9, 20, 9):
        inputs = padded_prompts(4, length, [0, 2, 5, 8], seed=length)
        res = compare_to_eager(model, inputs, 10, lambda m, **kw: engine.prefill(**kw))
        _assert_all_match(res)
    assert set(engine._prompt_graphs) == {(16, 0), (24, 0)} and set(engine._graphs) == {1, 9}
    step, _, _ = engine.prefill(**padded_prompts(4, 9, [0, 1, 2, 3]))
    a = step(torch.ones(4, 2, dtype=torch.long), 0)
    a_copy = a.clone()
    step(torch.full((4, 2), 7, dtype=torch.long), 0)
    assert torch.equal(a, a_copy)


def test_traced_static_engine_equals_eager():
    """The engine's forwards go through torch.compile's tracing (Dynamo + AOT functionalization of
    the in-place cache writes) and still give the eager tokens; `aot_eager` runs the traced graph
    without code generation (Inductor's kernels are checked on the GPU: tests/engine/test_gpu.py)."""
    model = tiny_lm("llama", seed=1)
    inputs = padded_prompts(4, 9, [0, 3, 5, 8], seed=3)
    n = 12
    pool = EnginePool(model, n, graphs=False, compile="aot_eager")
    _assert_all_match(compare_to_eager(model, inputs, n, pool, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))
    assert pool.engines[4].compile == "aot_eager"


def test_frozen_mode_compiles_with_inductor_freezing_in_force_only_there(monkeypatch):
    """`compile="frozen"`: torch.compile gets no `inductor_config` argument, and the settings
    (freezing, programmatic dependent launch) are in force inside every call of the compiled forward
    (where compilation happens) and only there; an enclosing `inductor_overrides` wins over them,
    and `TORCHINDUCTOR_ENABLE_PDL=0` leaves PDL out.
    Inductor's frozen kernels themselves are checked against eager on the GPU (test_gpu.py)."""
    import torch._inductor.config as inductor_config

    from ee_vla.engine.modes import inductor_overrides

    seen, kwargs_seen = [], []

    def fake_compile(fn, **kwargs):
        kwargs_seen.append(kwargs)

        def run(*a, **k):
            seen.append((inductor_config.freezing, inductor_config.triton.enable_pdl))
            return fn(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny_lm("llama", seed=1)
    inputs = padded_prompts(2, 9, [0, 3], seed=3)
    before = (inductor_config.freezing, inductor_config.triton.enable_pdl)
    pool = EnginePool(model, 6, graphs=False, compile="frozen")
    _assert_all_match(compare_to_eager(model, inputs, 6, pool))
    assert kwargs_seen == [{"dynamic": False, "backend": "inductor"}]
    assert seen and set(seen) == {(True, True)}
    assert (inductor_config.freezing, inductor_config.triton.enable_pdl) == before

    seen.clear()
    with inductor_overrides({"triton.enable_pdl": False}):
        pool = EnginePool(model, 6, graphs=False, compile="frozen")
        _assert_all_match(compare_to_eager(model, inputs, 6, pool))
    assert seen and set(seen) == {(True, False)}
    assert (inductor_config.freezing, inductor_config.triton.enable_pdl) == before

    # Inductor's environment variable turns the modes' PDL off: Inductor's own setting stays
    seen.clear()
    monkeypatch.setenv("TORCHINDUCTOR_ENABLE_PDL", "0")
    pool = EnginePool(model, 6, graphs=False, compile="frozen")
    _assert_all_match(compare_to_eager(model, inputs, 6, pool))
    assert seen and set(seen) == {(True, before[1])}


def test_a_pool_releases_the_engines_it_evicts():
    model = tiny_lm("llama", seed=0)
    pool = EnginePool(model, 6, graphs=False, max_engines=2)
    step, _, _ = pool(model, **padded_prompts(1, 5))
    first = pool.engines[1]
    pool(model, **padded_prompts(2, 5, [0, 1]))
    assert not first._released
    pool(model, **padded_prompts(3, 5, [0, 1, 2]))  # batch 1's engine is the least recently used
    assert list(pool.engines) == [2, 3] and first._released and first.cache is None
    with pytest.raises(RuntimeError, match="released"):
        step(torch.ones(1, 2, dtype=torch.long), 0)
    with pytest.raises(RuntimeError, match="released"):
        first.prefill(**padded_prompts(1, 5))
    _assert_all_match(compare_to_eager(model, padded_prompts(1, 5), 6, pool))  # rebuilt on demand


def test_a_pool_counts_its_one_time_setup_work(monkeypatch):
    """`setup_s` grows when a call builds an engine or captures a prompt bucket (what a timed caller
    subtracts), and not when a call reuses what exists."""
    model = tiny_lm("llama", seed=0)
    pool = EnginePool(model, 6, graphs=False)
    pool(model, **padded_prompts(2, 5, [0, 1]))
    built = pool.setup_s
    assert built > 0
    pool(model, **padded_prompts(2, 5, [0, 1]))
    assert pool.setup_s == built

    orig = StaticEngine._bucketed_prefill

    def capturing(self, *args, **kwargs):  # what a new bucket's CUDA-graph capture adds
        self.setup_s += 0.25
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(StaticEngine, "_bucketed_prefill", capturing)
    pool(model, **padded_prompts(2, 5, [0, 1]))
    assert pool.setup_s == pytest.approx(built + 0.25)


def test_sdpa_backends_reach_every_forward_and_keep_the_eager_tokens():
    """`sdpa_backends=("math",)` gives the eager tokens (batch 4, left padding) through the pool, the
    bucketed and the unbucketed prefill; a backend the CPU lacks ("efficient") fails inside the
    forward, which shows the setting is in force there, and only there."""
    model = tiny_lm("llama", seed=1)
    inputs = padded_prompts(4, 9, [0, 3, 5, 8], seed=3)
    pool = EnginePool(model, 8, graphs=False, sdpa_backends=["math"])
    _assert_all_match(compare_to_eager(model, inputs, 8, pool, action_range=(TINY_VOCAB - 16, TINY_VOCAB - 1)))
    assert pool.engines[4].sdpa_backends == ("math",)
    unbucketed = StaticEngine(
        model, batch_size=4, max_prompt_len=16, max_new_tokens=8, prefill_bucket=None, sdpa_backends=("math",)
    )
    _assert_all_match(compare_to_eager(model, inputs, 8, lambda m, *a, **k: unbucketed.prefill(*a, **k)))
    for bucket in (16, None):
        eng = StaticEngine(
            model,
            batch_size=4,
            max_prompt_len=16,
            max_new_tokens=8,
            prefill_bucket=bucket,
            sdpa_backends=("efficient",),
        )
        with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):
            eng.prefill(**inputs)
    assert torch._C._get_math_sdp_enabled() and torch._C._get_flash_sdp_enabled()  # restored after each call


def test_sdpa_backends_are_validated():
    model = tiny_lm("llama", seed=0)
    for bad in ([], ["fast"]):
        with pytest.raises(ValueError, match="sdpa_backends must be a non-empty list of flash|efficient"):
            StaticEngine(model, batch_size=1, max_prompt_len=4, max_new_tokens=3, sdpa_backends=bad)
        with pytest.raises(ValueError, match="EnginePool sdpa_backends"):
            EnginePool(model, 3, graphs=False, sdpa_backends=bad)
    with pytest.raises(ValueError, match="not eager"):
        make_prefill("eager", model, 3, sdpa_backends=["math"])


def test_compile_mode_is_validated():
    with pytest.raises(ValueError, match="compile must be None or one of"):
        StaticEngine(tiny_lm("llama", seed=0), batch_size=1, max_prompt_len=4, max_new_tokens=3, compile="turbo")


def _tiny_vla_inputs(batch: int = 2, seed: int = 0):
    import numpy as np

    from ee_vla.models.vla import VLA

    vla = VLA.create("tiny", chunk_size=3, seed=seed)
    vla.model.to(torch.float64)
    px = np.random.default_rng(seed).integers(0, 256, (batch, vla.image_size, vla.image_size, 3), dtype=np.uint8)
    return vla, vla.build_inputs(px, ["open the drawer", "pick up the red cube and put it in the basket"][:batch])


def test_vla_prefill_runs_in_the_static_bucket():
    """A VLA prompt with images is prefilled in the bucketed static buffers (what a CUDA graph
    captures: vision tower, merge of the image features, language model) and equals eager."""
    vla, inputs = _tiny_vla_inputs()
    n = vla.n_action_tokens
    pool = make_prefill("static", vla.model, n)
    _assert_all_match(compare_to_eager(vla.model, inputs, n, pool, action_range=vla.action_range, unit=vla.action_dim))
    (engine,) = pool.engines.values()
    (buf,) = engine._prompts.values()
    assert buf.pixels is not None and buf.pixels.shape == inputs["pixel_values"].shape
    assert engine._image_tokens == int((inputs["input_ids"][0] == vla.model.config.image_token_id).sum())


def test_vla_prefill_checks_image_placeholders_and_image_shape():
    vla, inputs = _tiny_vla_inputs()
    engine = StaticEngine(vla.model, batch_size=2, max_prompt_len=96, max_new_tokens=vla.n_action_tokens)
    engine.prefill(**inputs)
    ids = inputs["input_ids"].clone()
    ids[0, (ids[0] == vla.model.config.image_token_id).nonzero()[0]] = 5  # one placeholder lost
    with pytest.raises(ValueError, match="image placeholders per prompt"):
        engine.prefill(ids, inputs["attention_mask"], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="prompt bucket was built for pixel_values"):
        engine.prefill(**{**inputs, "pixel_values": inputs["pixel_values"][..., :32]})


def test_a_vla_prefill_with_a_window_reads_the_device_once_and_refuses_negative_ids(monkeypatch):
    """The bucketed image prefill with guess tokens checks its inputs (image placeholders, window
    ids >= 0) on the device and reads them with the end of its forward: one host read per prefill
    (on a GPU each read waits for the queue to drain). A negative id is refused after the forward
    (it ran clamped) and leaves the engine usable."""
    import sys

    vla, inputs = _tiny_vla_inputs()
    n = vla.n_action_tokens
    engine = StaticEngine(vla.model, batch_size=2, max_prompt_len=96, max_new_tokens=n)
    window = torch.full((2, n - 1), vla.action_range[0])
    _, ref, _ = engine.prefill(**inputs, window=window)

    reads = []
    for name in ("tolist", "item", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            if sys._getframe(1).f_globals.get("__name__", "").startswith(("ee_vla.engine", "ee_vla.decoding")):
                reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    import ee_vla.engine.static as static_mod

    real_sync = static_mod.synchronize
    monkeypatch.setattr(static_mod, "synchronize", lambda dev: (reads.append("synchronize"), real_sync(dev)))
    _, first, _ = engine.prefill(**inputs, window=window)
    assert reads == ["tolist"]
    torch.testing.assert_close(first, ref)
    reads.clear()
    engine.prefill(**inputs)  # no window: the placeholder check alone
    assert reads == ["tolist"]

    bad = window.clone()
    bad[1, 2] = -3
    with pytest.raises(ValueError, match="negative token ids"):
        engine.prefill(**inputs, window=bad)
    ids = inputs["input_ids"].clone()
    ids[1, (ids[1] == vla.model.config.image_token_id).nonzero()[0]] = 5
    with pytest.raises(ValueError, match=r"image placeholders per prompt \[16, 15\]"):
        engine.prefill(ids, inputs["attention_mask"], pixel_values=inputs["pixel_values"], window=window)
    _, again, _ = engine.prefill(**inputs, window=window)
    torch.testing.assert_close(again, ref)


def test_vla_prefill_has_no_host_sync():
    """The VLA prefill (vision tower + feature merge + LM) and the steps run on the meta device:
    nothing in them reads a tensor value on the host, so a CUDA graph can hold them."""
    vla, inputs = _tiny_vla_inputs()
    vla.model.to("meta")
    engine = StaticEngine(vla.model, batch_size=2, max_prompt_len=96, max_new_tokens=vla.n_action_tokens, graphs=False)
    meta = {k: v.to("meta") for k, v in inputs.items()}
    step, first, _ = engine.prefill(**meta)
    assert first.shape == (2, vla.model.config.text_config.vocab_size) and engine._image_tokens == 16
    assert step(torch.zeros(2, 3, dtype=torch.long, device="meta"), 1).shape[:2] == (2, 3)


def test_traced_vla_prefill_equals_eager():
    """The VLA prefill's language model traced by torch.compile (on the merged embeddings)."""
    vla, inputs = _tiny_vla_inputs()
    n = vla.n_action_tokens
    pool = EnginePool(vla.model, n, graphs=False, compile="aot_eager")
    res = compare_to_eager(vla.model, inputs, n, pool, action_range=vla.action_range, unit=vla.action_dim)
    _assert_all_match(res)


def test_vla_prefill_replayed_and_its_capture_failure_falls_back(caplog):
    """The graph code path for image prompts (CPU stand-in graph): replayed prefills equal eager;
    if an image prefill cannot be captured, it runs without a graph (logged), still exact."""
    vla, inputs = _tiny_vla_inputs()
    n = vla.n_action_tokens

    def engine_of(cls):
        eng = cls(vla.model, batch_size=2, max_prompt_len=96, max_new_tokens=n, graphs=False)
        eng.uses_graphs = True
        with torch.inference_mode():
            eng._capture(0)
        return eng

    kw = dict(action_range=vla.action_range, unit=vla.action_dim)
    engine = engine_of(_ReplayEngine)
    _assert_all_match(compare_to_eager(vla.model, inputs, n, lambda m, **k: engine.prefill(**k), **kw))
    assert engine._prompt_graphs and not engine._image_graph_failed

    class _NoImageGraphs(_ReplayEngine):
        def _graph_of(self, forward):
            if any(b.pixels is not None for b in self._prompts.values()) and len(self._graphs) == len(self.widths):
                raise RuntimeError("operation not permitted when stream is capturing")
            return super()._graph_of(forward)

    engine = engine_of(_NoImageGraphs)
    with caplog.at_level("WARNING"):
        _assert_all_match(compare_to_eager(vla.model, inputs, n, lambda m, **k: engine.prefill(**k), **kw))
    assert engine._image_graph_failed and not engine._prompt_graphs
    assert "runs without one" in caplog.text


@pytest.mark.parametrize("compile_mode", [None, "aot_eager"])
def test_action_logits_only_decode_the_eager_action_tokens(compile_mode):
    """`logit_rows`: decode steps multiply only the action rows of the output layer; every decoder
    gives eager HFStep's tokens under the same action range, and the other ids' logits never win."""
    model = tiny_lm("llama", seed=1)
    inputs = padded_prompts(3, 9, [0, 3, 5], seed=3)
    n, rows = 12, (TINY_VOCAB - 16, TINY_VOCAB - 1)
    pool = EnginePool(model, n, graphs=False, compile=compile_mode, logit_rows=rows)
    _assert_all_match(compare_to_eager(model, inputs, n, pool, action_range=rows))
    step, _, _ = pool(model, **inputs)
    logits = step(torch.zeros(3, 4, dtype=torch.long), 0)
    ref_step, _, _ = HFStep.prefill(model, **inputs)
    ref = ref_step(torch.zeros(3, 4, dtype=torch.long), 0)
    lo = rows[0]
    assert torch.allclose(logits[..., lo:], ref[..., lo:], atol=1e-10)
    assert (logits[..., :lo] == torch.finfo(torch.float64).min).all()


def test_action_logits_only_on_a_llava_vla():
    vla, inputs = _tiny_vla_inputs()
    n = vla.n_action_tokens
    pool = EnginePool(vla.model, n, graphs=False, logit_rows=vla.action_range)
    _assert_all_match(compare_to_eager(vla.model, inputs, n, pool, action_range=vla.action_range, unit=vla.action_dim))


def test_logit_rows_are_validated():
    model = tiny_lm("llama", seed=0)
    with pytest.raises(ValueError, match="logit_rows must be 0 <= lo <= hi"):
        StaticEngine(model, batch_size=1, max_prompt_len=4, max_new_tokens=3, logit_rows=(5, TINY_VOCAB))
    with pytest.raises(ValueError, match="logit_rows must be 0 <= lo <= hi"):
        StaticEngine(model, batch_size=1, max_prompt_len=4, max_new_tokens=3, logit_rows=(5, 4))


def test_the_exactness_check_names_a_device_it_cannot_use(capsys):
    from ee_vla.benchmarks.check import main

    with pytest.raises(SystemExit):
        main(["--device", "bogus"])
    assert "device='bogus' is not a torch device" in capsys.readouterr().err


def test_the_exactness_check_refuses_cuda_where_there_is_none(capsys, monkeypatch):
    from ee_vla.benchmarks.check import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "device='cuda' but CUDA is not available" in capsys.readouterr().err
