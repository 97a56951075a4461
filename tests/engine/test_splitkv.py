"""The split-KV attention kernel (`ee_vla.engine.splitkv`) against torch's SDPA: on a GPU, or on the
CPU through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET there). bfloat16 runs on
the GPU only: the interpreter's bf16 `tl.dot` is wrong."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from ee_vla.benchmarks.check import padded_prompts, tiny_lm  # noqa: E402
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


def test_static_engine_with_ee_splitkv_decodes_sdpa_tokens(monkeypatch):
    """The registered attention through the static engine: the decode steps (<= 64 queries) run
    the kernel and the prefill runs SDPA; Jacobi and AR tokens equal the SDPA model's."""
    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", 8)  # one program per (row, head): fewer to interpret
    calls = []
    real = splitkv.splitkv_attention
    monkeypatch.setattr(splitkv, "splitkv_attention", lambda *a, **kw: calls.append(a[0].shape[2]) or real(*a, **kw))
    inputs = padded_prompts(2, 70, [0, 3], seed=1, device=DEVICE)
    n = 6
    tokens = {}
    compiled = "inductor" if DEVICE == "cuda" else "aot_eager"  # traced around the kernel's custom op
    for attn, compile_mode in (("sdpa", None), (splitkv.ATTN_NAME, None), (splitkv.ATTN_NAME, compiled)):
        model = _lm(attn)
        for method in ("ar", "jacobi"):
            engine = StaticEngine(model, batch_size=2, max_prompt_len=70, max_new_tokens=n, compile=compile_mode)
            step, first, _ = engine.prefill(**inputs)
            tokens[attn, compile_mode, method], stats = decode(step, first, n, DecodeConfig(method=method))
            assert stats.exact
    for key in tokens:
        assert torch.equal(tokens[key], tokens["sdpa", None, "ar"]), key
    assert set(calls) == {1, n - 1}  # AR steps and the Jacobi window; the 80-token prefill is SDPA's
    # Without the engine's explicit mask (plain transformers forward), the name falls back to SDPA.
    calls.clear()
    out = _lm(splitkv.ATTN_NAME)(**inputs).logits
    torch.testing.assert_close(out, _lm("sdpa")(**inputs).logits)
    assert calls == []


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
