"""The split-KV attention kernel (`ee_vla.engine.splitkv`) against torch's SDPA: on a GPU, or on the
CPU through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET there). bfloat16 runs on
the GPU only: the interpreter's bf16 `tl.dot` is wrong."""

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from ee_vla.benchmarks.check import TINY_VOCAB, padded_prompts, tiny_lm  # noqa: E402
from ee_vla.decoding import DecodeConfig, decode  # noqa: E402
from ee_vla.engine import StaticEngine, splitkv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_gpu = pytest.mark.skipif(DEVICE == "cpu", reason="bfloat16 needs a GPU (Triton's interpreter gets bf16 dots wrong)")


def _inputs(B, H, Hk, M, S, D, dtype, mask_heads=1, keep=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(DEVICE, dtype) for h, n in ((H, M), (Hk, S), (Hk, S)))
    allowed = torch.rand(B, mask_heads, M, S, generator=g) < keep
    allowed[..., 0] = True  # every query sees a key
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return q, k, v, mask.to(DEVICE)


def _reference(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    f = [t.double() for t in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask)]
    return F.scaled_dot_product_attention(*f[:3], attn_mask=f[3]).transpose(1, 2)


@pytest.mark.parametrize(
    "B, H, Hk, M, S, D, mask_heads, splits",
    [
        (1, 4, 4, 22, 100, 64, 1, None),  # a 22-token Jacobi window, default split plan
        (1, 4, 4, 1, 100, 64, 1, 3),  # an AR step
        (2, 4, 2, 7, 77, 32, 1, 5),  # grouped KV heads, batch 2, S not a multiple of the block
        (2, 2, 1, 5, 40, 16, 2, 1),  # a per-head mask, one split
        (1, 2, 2, 64, 33, 16, 1, 2),  # the longest query block the kernel takes
    ],
)
def test_kernel_equals_sdpa_in_float32(B, H, Hk, M, S, D, mask_heads, splits):
    q, k, v, mask = _inputs(B, H, Hk, M, S, D, torch.float32, mask_heads)
    out = splitkv.splitkv_attention(q, k, v, mask, num_splits=splits)
    assert out.shape == (B, M, H, D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=on_gpu)])
def test_kernel_in_half_precision_and_with_splits_that_see_no_key(dtype):
    """Keys past slot 10 are all masked: most of the 8 splits have no visible key, and must weigh
    nothing in the merge (no NaN, no bias), as in the static engine's stale slots above the window."""
    q, k, v, mask = _inputs(1, 4, 4, 6, 256, 32, dtype)
    mask[..., 10:] = torch.finfo(dtype).min
    out = splitkv.splitkv_attention(q, k, v, mask, num_splits=8)
    assert torch.isfinite(out).all()
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=tol, rtol=tol)


@on_gpu
def test_kernel_at_the_7b_step_shape_in_bfloat16():
    """OpenVLA's Jacobi window (22 queries, 32 heads of 128) over a 363-slot cache."""
    q, k, v, mask = _inputs(1, 32, 32, 22, 363, 128, torch.bfloat16)
    out = splitkv.splitkv_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=2e-2, rtol=2e-2)


@settings(max_examples=25, deadline=None)
@given(
    keys=st.integers(1, 2000),
    batch_heads=st.integers(1, 256),
    sms=st.integers(1, 200),
    block=st.sampled_from([16, 32, 64]),
    asked=st.one_of(st.none(), st.integers(1, 64)),
)
def test_split_plan_covers_every_key_and_leaves_no_split_empty(keys, batch_heads, sms, block, asked):
    n, length = splitkv.plan_splits(batch_heads, keys, block, asked, programs=sms)
    assert length % block == 0 and n >= 1
    assert n * length >= keys > (n - 1) * length  # the last split starts before the end
    if asked is not None:
        assert n <= asked


def test_what_the_kernel_refuses_is_named():
    q, k, v, mask = _inputs(1, 2, 2, 4, 20, 16, torch.float32)
    assert splitkv.kernel_applies(q, k, mask) is None
    assert splitkv.kernel_applies(q, k, None) == "no explicit mask"
    assert "4-D" in splitkv.kernel_applies(q, k, mask[0])
    assert "4-D" in splitkv.kernel_applies(q, k, mask == 0)
    assert "dtype" in splitkv.kernel_applies(q.double(), k.double(), mask)
    assert "head dim" in splitkv.kernel_applies(q[..., :12], k[..., :12], mask)
    long_q = torch.zeros(1, 2, splitkv.MAX_QUERIES + 1, 16)
    assert "queries" in splitkv.kernel_applies(long_q, k, mask)
    assert splitkv.kernel_applies(q, k, mask, dropout=0.1) == "dropout"
    with pytest.raises(ValueError, match="dtype"):
        splitkv.splitkv_attention(q.double(), k.double(), v.double(), mask.double())
    with pytest.raises(ValueError, match="do not match"):
        splitkv.splitkv_attention(q, k, v[:, :, :10], mask)
    with pytest.raises(ValueError, match="mask heads 3 must be 1 or 2"):
        splitkv.splitkv_attention(q, k, v, mask.expand(1, 3, 4, 20))


def test_without_the_interpreter_a_cpu_tensor_is_refused(monkeypatch):
    monkeypatch.setattr(splitkv, "INTERPRET", False)
    q, k, _, mask = _inputs(1, 2, 2, 4, 20, 16, torch.float32)
    assert splitkv.kernel_applies(q.cpu(), k.cpu(), mask.cpu()) == "device cpu"


def _lm(attn: str):
    """float32, head dim 16 (the kernel's smallest), grouped KV heads."""
    return tiny_lm("llama", seed=0, dtype=torch.float32, device=DEVICE, attn_implementation=attn, head_dim=16)


@pytest.mark.parametrize("fused, merge_in_kernel", [(False, False), (True, False), (True, True)])
def test_static_engine_with_ee_splitkv_decodes_sdpa_tokens(monkeypatch, fused, merge_in_kernel):
    """The registered attention through the static engine: the decode steps (<= 64 queries) run
    the kernel and the prefill runs SDPA; Jacobi and AR tokens equal the SDPA model's. Fused (the
    engine's attention layers: rotary embedding and cache write inside the kernel, the splits merged
    by torch or in the kernel) or not (transformers' layers, the kernel as the attention function),
    and the caches the steps leave equal the SDPA model's."""
    from ee_vla.engine import attention

    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", 8)  # one program per (row, head): fewer to interpret
    monkeypatch.setattr(attention, "FUSED", fused)
    monkeypatch.setattr(attention, "MERGE_IN_KERNEL", merge_in_kernel)
    calls = []
    for name in ("splitkv_attention", "rope_splitkv_attention"):
        real = getattr(splitkv, name)
        counted = lambda *a, _r=real, _n=name, **kw: calls.append((_n, a[0].shape)) or _r(*a, **kw)  # noqa: E731
        monkeypatch.setattr(splitkv, name, counted)
    inputs = padded_prompts(2, 70, [0, 3], seed=1, device=DEVICE)
    n = 4
    tokens, caches = {}, {}
    compiled = "inductor" if DEVICE == "cuda" else "aot_eager"  # traced around the kernel's custom op
    for attn, compile_mode in (("sdpa", None), (splitkv.ATTN_NAME, None), (splitkv.ATTN_NAME, compiled)):
        model = _lm(attn)
        for method in ("ar", "jacobi"):
            engine = StaticEngine(model, batch_size=2, max_prompt_len=70, max_new_tokens=n, compile=compile_mode)
            step, first, _ = engine.prefill(**inputs)
            tokens[attn, compile_mode, method], stats = decode(step, first, n, DecodeConfig(method=method))
            assert stats.exact
            caches[attn, compile_mode, method] = [(lay.keys.clone(), lay.values.clone()) for lay in engine.cache.layers]
    for key in tokens:
        assert torch.equal(tokens[key], tokens["sdpa", None, "ar"]), key
        for (k, v), (k0, v0) in zip(caches[key], caches["sdpa", None, key[2]], strict=True):
            torch.testing.assert_close((k, v), (k0, v0), atol=1e-5, rtol=1e-5)
    used = "rope_splitkv_attention" if fused else "splitkv_attention"
    assert {name for name, _ in calls} == {used}
    # AR steps and the Jacobi window (query lengths 1 and n - 1); the 70-token prefill (over MAX_QUERIES) is SDPA's
    seq_dim = 1 if fused else 2  # the fused kernel takes (B, M, H, D) projections, the other (B, H, M, D)
    assert {shape[seq_dim] for _, shape in calls} == {1, n - 1}
    # Without the engine's cache and mask (a plain transformers forward of the model the engines
    # installed their layers in), the name falls back to SDPA.
    assert type(model.model.layers[0].self_attn).__name__ == "SlotLlamaAttention"
    calls.clear()
    out = model(**inputs).logits
    torch.testing.assert_close(out, _lm("sdpa")(**inputs).logits)
    assert calls == []


def test_fused_layers_run_a_short_padded_prefill_with_a_guess_window_as_sdpa(monkeypatch):
    """A prompt of at most `MAX_QUERIES` tokens, left-padded, with a guess window after it: the
    prefill runs the fused kernel too, its mask computed from the key flags that the prefill sets
    (a padding slot is no key). The prefill's logits and the steps' tokens equal the SDPA model's."""
    from ee_vla.engine import attention

    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", 8)
    monkeypatch.setattr(attention, "FUSED", True)
    queries = []
    real = splitkv.rope_splitkv_attention
    monkeypatch.setattr(
        splitkv, "rope_splitkv_attention", lambda *a, **kw: queries.append(a[0].shape[1]) or real(*a, **kw)
    )
    inputs = padded_prompts(2, 20, [0, 5], seed=2, device=DEVICE)
    window = torch.randint(0, TINY_VOCAB, (2, 4), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    logits, tokens = {}, {}
    for attn in ("sdpa", splitkv.ATTN_NAME):
        engine = StaticEngine(_lm(attn), batch_size=2, max_prompt_len=20, max_new_tokens=5)
        step, logits[attn], _ = engine.prefill(**inputs, window=window)
        tokens[attn], stats = decode(step, logits[attn][:, 0], 5, DecodeConfig(method="jacobi"))
        assert stats.exact
    assert 24 in queries  # the prompt and its window in one fused forward
    torch.testing.assert_close(logits[splitkv.ATTN_NAME], logits["sdpa"], atol=1e-5, rtol=1e-5)
    assert torch.equal(tokens[splitkv.ATTN_NAME], tokens["sdpa"])


def test_a_compiled_forward_gives_every_layer_the_same_cos_and_sin(monkeypatch):
    """The fused op takes its inputs in any layout (`flexible_layout`): Inductor computes the rotary
    embedding's cos and sin once per forward and hands the same two buffers to every layer's kernel.
    With exact strides (torch's default for custom ops) it copied them into new buffers for each
    layer, computing them again each time."""
    from torch._inductor.utils import run_and_get_code

    from ee_vla.engine import attention

    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", 8)
    monkeypatch.setattr(attention, "FUSED", True)
    model = _lm(splitkv.ATTN_NAME)
    engine = StaticEngine(model, batch_size=1, max_prompt_len=20, max_new_tokens=3, compile="inductor")
    _, codes = run_and_get_code(lambda: engine.prefill(**padded_prompts(1, 20, [0], seed=4, device=DEVICE)))
    calls = [c for code in codes for c in re.findall(r"torch\.ops\.ee_vla\.rope_splitkv\.default\((.*)\)", code)]
    assert len(calls) == model.config.num_hidden_layers >= 2
    # (query, key, value views, then cos and sin): the same two names in every call
    assert len({tuple(_top_level_args(c)[3:5]) for c in calls}) == 1, calls


def _top_level_args(call: str) -> list[str]:
    """A generated call's arguments, split at the commas outside parentheses."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(call):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            args.append(call[start:i].strip())
            start = i + 1
    return [*args, call[start:].strip()]


def test_attention_bench_checks_and_times_every_variant(tmp_path):
    from ee_vla.benchmarks import attn_bench

    report = attn_bench.main(
        ["--device", DEVICE, "--dtype", "float32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16"]
        + ["--keys", "60", "--queries", "1", "5", "--layers", "2", "--iters", "1", "--splits", "0", "2"]
        + ["--out", str(tmp_path)]
    )
    rows = report["rows"]
    assert [r["queries"] for r in rows] == [1, 1, 1, 5, 5, 5]
    assert all(r["us"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows)
    assert "splits=2" in rows[2]["variant"] and "(auto)" in rows[1]["variant"]
    assert (tmp_path / "attn_bench.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--queries", "0"], "--queries 0: each must be 1 .. 40"),
        (["--queries", "41"], "--queries 41: each must be 1 .. 40"),
        (["--heads", "3"], "--heads 3 must be a multiple of --kv-heads 2"),
        (["--splits", "-1"], "--splits must be >= 0"),
        (["--block-n", "24"], "--block-n 24: each must be a power of two"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--dtype", "bfloat16", "--device", "cpu"], "interpreter gets bfloat16 products wrong"),
    ],
)
def test_attention_bench_names_an_option_that_cannot_run(extra, message):
    from ee_vla.benchmarks import attn_bench

    base = ["--device", DEVICE, "--dtype", "float32", "--heads", "4", "--kv-heads", "2", "--keys", "40"]
    with pytest.raises(SystemExit, match=re.escape(message)):
        attn_bench.main(base + extra)


def test_attention_bench_refuses_cuda_where_there_is_none(monkeypatch):
    from ee_vla.benchmarks import attn_bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=re.escape("attn_bench: device='cuda' but CUDA is not available")):
        attn_bench.main(["--device", "cuda", "--dtype", "float32"])


@pytest.mark.parametrize("engine_mask", [False, True])
@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize(
    "B, H, Hk, M, S, D, first, splits",
    [
        (1, 4, 4, 22, 100, 64, 50, None),  # a Jacobi window in the middle of the cache
        (2, 4, 2, 7, 77, 32, 70, 5),  # grouped KV heads, batch 2, the window at the cache's end
        (2, 4, 2, 1, 40, 16, 3, 3),  # an AR step
        (1, 2, 1, 5, 33, 16, 0, 2),  # a window at slot 0
    ],
)
def test_rope_kernel_equals_transformers_rotary_cache_write_and_sdpa(
    B, H, Hk, M, S, D, first, splits, merge, engine_mask
):
    """`rope_splitkv_attention` against transformers' `apply_rotary_pos_emb`, a cache write at the
    window's slots and SDPA (float32): the output, both caches (only the window's slots change), and
    the merge counters, back at zero. With `engine_mask`, a `StaticEngine`'s mask (some slots below
    the window are not keys, a different set per batch row) computed by the kernel from the key
    flags, and a rotation whose cos and sin halves differ (any cos and sin, not only Llama's), with
    cos, sin, keys and values in layouts that differ pairwise."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(B * 100 + M)
    qkv = torch.randn(B, M, (H + 2 * Hk) * D, generator=g).to(DEVICE)  # one fused projection's output
    q, k, v = qkv.split([H * D, Hk * D, Hk * D], -1)
    q, k, v = q.view(B, M, H, D), k.view(B, M, Hk, D), v.view(B, M, Hk, D)
    positions = torch.arange(first, first + M, device=DEVICE) + torch.arange(B, device=DEVICE)[:, None]
    freqs = positions[..., None].float() * 10000.0 ** (-torch.arange(0, D, 2, device=DEVICE).float() / D)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()
    keys, values = (torch.randn(B, Hk, S, D, generator=g).to(DEVICE) for _ in range(2))
    slots = torch.arange(first, first + M, device=DEVICE)
    key_ok = None
    allowed = torch.arange(S, device=DEVICE) <= slots[:, None]
    if engine_mask:  # any cos and sin, in layouts unlike each other's; values unlike the keys' layout
        cos = (torch.rand(B, D, M, generator=g).to(DEVICE) * 2 - 1).transpose(1, 2)
        sin = torch.rand(B, M, D, generator=g).to(DEVICE) * 2 - 1
        v = v.contiguous()
        key_ok = torch.rand(B, S, generator=g).to(DEVICE) < 0.7
        n = torch.arange(S, device=DEVICE)
        allowed = allowed & (key_ok[:, None, :] | (n == slots[:, None]))  # StaticEngine._mask's rule
    mask = torch.zeros(B, 1, M, S, device=DEVICE).masked_fill_(
        ~allowed.view(-1, 1, M, S), torch.finfo(torch.float32).min
    )

    q_rot, k_rot = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    ref_keys, ref_values = keys.clone(), values.clone()
    ref_keys[:, :, first : first + M], ref_values[:, :, first : first + M] = k_rot, v.transpose(1, 2)
    expected = _reference(q_rot, ref_keys, ref_values, mask)

    counters = torch.zeros(B * H, dtype=torch.int32, device=DEVICE) if merge else None
    out = splitkv.rope_splitkv_attention(
        q, k, v, cos, sin, keys, values, slots, mask, counters, num_splits=splits, key_ok=key_ok
    )
    assert out.shape == (B, M, H, D)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close((keys, values), (ref_keys, ref_values), atol=1e-6, rtol=1e-6)
    if merge:
        assert not counters.any()


@on_gpu
@pytest.mark.parametrize("key_flags", [False, True])
@pytest.mark.parametrize("merge", [False, True])
def test_rope_kernel_at_the_7b_step_shape_in_bfloat16(merge, key_flags):
    """OpenVLA's Jacobi window (22 queries, 32 heads of 128) written at slots 340-361 of a 363-slot
    cache, against transformers' rotary embedding, the cache write and SDPA in float64; with
    `key_flags`, 12 padding slots at the prompt's start (no keys), the mask computed from the flags."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, H, M, S, D, first = 1, 32, 22, 363, 128, 340
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, M, H, D, generator=g).to(DEVICE, torch.bfloat16) for _ in range(3))
    freqs = torch.arange(first, first + M)[:, None].float() * 10000.0 ** (-torch.arange(0, D, 2).float() / D)
    emb = torch.cat([freqs, freqs], -1)[None].to(DEVICE)
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    keys, values = (torch.randn(B, H, S, D, generator=g).to(DEVICE, torch.bfloat16) for _ in range(2))
    slots = torch.arange(first, first + M, device=DEVICE)
    allowed = torch.arange(S, device=DEVICE) <= slots[:, None]
    key_ok = None
    if key_flags:
        key_ok = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
        key_ok[:, :12] = False
        allowed = allowed & key_ok[0]
    mask = torch.zeros(B, 1, M, S, device=DEVICE, dtype=torch.bfloat16).masked_fill_(~allowed, -3e38)
    q_rot, k_rot = apply_rotary_pos_emb(
        q.transpose(1, 2).double(), k.transpose(1, 2).double(), cos.double(), sin.double()
    )
    ref_keys, ref_values = keys.double(), values.double()
    ref_keys[:, :, first : first + M], ref_values[:, :, first : first + M] = k_rot, v.transpose(1, 2).double()
    expected = _reference(q_rot, ref_keys, ref_values, mask.double())
    counters = torch.zeros(B * H, dtype=torch.int32, device=DEVICE) if merge else None
    out = splitkv.rope_splitkv_attention(q, k, v, cos, sin, keys, values, slots, mask, counters, key_ok=key_ok)
    torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(keys.double(), ref_keys, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(values.double(), ref_values)
    if merge:
        assert not counters.any()


def test_rope_kernel_refuses_what_does_not_fit():
    q, k, v = (torch.zeros(1, 4, h, 16, device=DEVICE) for h in (2, 1, 1))
    cos = sin = torch.zeros(1, 4, 16, device=DEVICE)
    keys = values = torch.zeros(1, 1, 20, 16, device=DEVICE)
    slots, mask = torch.arange(4, device=DEVICE), torch.zeros(1, 1, 4, 20, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit together"):
        splitkv.rope_splitkv_attention(q, k, v, cos[:, :3], sin, keys, values, slots, mask)
    with pytest.raises(ValueError, match="counters must be int32"):
        splitkv.rope_splitkv_attention(
            q, k, v, cos, sin, keys, values, slots, mask, slots.new_zeros(1, dtype=torch.int32)
        )
    with pytest.raises(ValueError, match="dtype"):
        splitkv.rope_splitkv_attention(q.double(), k, v, cos, sin, keys, values, slots, mask)
    flags = [torch.ones(1, 19, dtype=torch.bool).to(DEVICE), torch.ones(1, 20).to(DEVICE)]
    flags.append(torch.ones(1, 20, dtype=torch.bool, device="meta"))  # another device than the cache's
    for f in flags:
        with pytest.raises(ValueError, match="key_ok must be bool of shape"):
            splitkv.rope_splitkv_attention(q, k, v, cos, sin, keys, values, slots, mask, key_ok=f)


def test_attention_bench_times_whole_attention_layers(tmp_path):
    """`attn_bench --fused`: transformers' path (rotary, cache write, kernel, merge) and the fused
    kernel with both merges, each checked against the first, for each split plan asked (transformers'
    path, which runs its own plan, once)."""
    from ee_vla.benchmarks import attn_bench

    report = attn_bench.main(
        ["--device", DEVICE, "--dtype", "float32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16"]
        + ["--keys", "60", "--queries", "3", "--layers", "1", "--iters", "1", "--fused", "--out", str(tmp_path)]
        + ["--splits", "0", "2"]
    )
    rows = report["rows"]
    names = [
        "transformers (rotary, cache write, kernel, merge)",
        "fused, merged by torch",
        "fused, merged in the kernel",
    ]
    assert [r["variant"] for r in rows] == [f"{n} n=32 warps=4" for n in names] + [
        f"{n} n=32 warps=4 splits=2" for n in names[1:]
    ]
    assert all(r["us"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows) and rows[0]["vs_transformers"] == 1.0


def test_the_kernels_default_plans_fit_hoppers_registers():
    """Compiled for sm_90 without a GPU (Triton's compiler, ptxas, cuobjdump): the plain kernel
    (transformers' layers) and the fused one as the engines run it (merged in the kernel) at their
    default warps and the 7B shape (head dim 128, 1 and 22 queries, 32-key tiles) spill at most a
    few values to local memory, not the kilobytes per thread of a kernel whose tiles do not fit (4
    warps for the fused kernel). The profiler-only torch merge runs the same loop without the merge."""
    import inspect

    from ee_vla.benchmarks import cubin

    fused_warps = inspect.signature(splitkv.rope_splitkv_attention).parameters["num_warps"].default
    plain_warps = inspect.signature(splitkv.splitkv_attention).parameters["num_warps"].default
    calls = [
        f"resources({fused}, {merge}, {queries}, 128, 32, {warps}, keys=363, batch_heads=32, arch=90)"
        for queries in (1, 22)
        for fused, merge, warps in ((False, False, plain_warps), (True, True, fused_warps))
    ]
    try:  # one child process without the interpreter compiles them all
        found = cubin.in_child("ee_vla.benchmarks.attn_bench", f"[{', '.join(calls)}]", "the split-KV kernels")
    except (FileNotFoundError, NotImplementedError) as e:  # no NVIDIA tools, or an unknown compiler API
        pytest.skip(str(e))
    for call, r in zip(calls, found, strict=True):
        assert r["registers"] <= 255 and r["stack_bytes"] <= 64, (call, r)


def test_fused_attention_layers_over_fused_projections(monkeypatch):
    """The engine's fused attention layers on a model whose q/k/v are one stacked product
    (`ee_vla.models.fusion`, as quantisation leaves them): Jacobi and AR give the SDPA model's
    tokens; a second install changes nothing."""
    from ee_vla.engine import attention
    from ee_vla.models.fusion import fuse_projections

    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", 8)
    monkeypatch.setattr(attention, "FUSED", True)
    calls = []
    real = splitkv.rope_splitkv_attention
    monkeypatch.setattr(splitkv, "rope_splitkv_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    inputs = padded_prompts(2, 70, [0, 3], seed=1, device=DEVICE)
    n = 6
    tokens = {}
    for attn in ("sdpa", splitkv.ATTN_NAME):
        model = _lm(attn)
        if attn == splitkv.ATTN_NAME:
            assert fuse_projections(model) > 0
        for method in ("ar", "jacobi"):
            engine = StaticEngine(model, batch_size=2, max_prompt_len=70, max_new_tokens=n)
            step, first, _ = engine.prefill(**inputs)
            tokens[attn, method], stats = decode(step, first, n, DecodeConfig(method=method))
            assert stats.exact
    assert calls
    for key in tokens:
        assert torch.equal(tokens[key], tokens["sdpa", "ar"]), key
    layer = model.model.layers[0].self_attn
    assert type(layer).__name__ == "SlotFusedLlamaAttention"
    assert attention.install_slot_attention(model) == 0


def test_pdl_is_refused_where_it_cannot_run():
    """Programmatic dependent launch needs a CUDA device of compute capability 9.0 or above: the
    fused attention names that elsewhere instead of launching."""
    if DEVICE == "cuda" and torch.cuda.get_device_capability() >= (9, 0):
        pytest.skip("this GPU runs it (tests/engine/test_layer_bench.py launches it)")
    from ee_vla.benchmarks.attn_bench import layer_inputs

    inputs = layer_inputs(1, 2, 2, 3, 40, 16, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="pdl needs CUDA compute capability 9.0"):
        splitkv.rope_splitkv_attention(*inputs, pdl=True)
