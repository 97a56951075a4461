"""Properties over tiny random LMs of five families (rotary Llama, Qwen2, Mistral, Phi3 and
absolute-position GPT-2): greedy Jacobi decoding run to convergence returns exactly the AR tokens,
and a left-padded sample decodes exactly as it would alone (which only an absolute-position model
can check for the position ids: rotary attention sees relative positions only)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.hf import HFStep

from .conftest import ARCHS, VOCAB, draw_case, draw_prompts, tiny_lm


def _run(model, ids, mask, n, cfg, guess=None, action_range=None):
    step, logits, _ = HFStep.prefill(model, ids, mask)
    return decode(step, logits, n, cfg, guess=guess, action_range=action_range)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_jacobi_to_convergence_equals_ar(data):
    model, ids, mask, n, action_range = draw_case(data.draw, (1, 4), 1, 16)
    batch = ids.shape[0]
    ar_tokens, ar_stats = _run(model, ids, mask, n, DecodeConfig(method="ar"), action_range=action_range)
    assert ar_stats.iterations == n - 1

    window = data.draw(st.one_of(st.none(), st.integers(1, 16)))
    keep = True if window is not None else data.draw(st.booleans())
    guess = torch.tensor(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=batch * n, max_size=batch * n))).view(
        batch, n
    )
    cfg = DecodeConfig(method="jacobi", window=window, keep_final_kv=keep)
    tokens, stats = _run(model, ids, mask, n, cfg, guess=guess, action_range=action_range)
    assert torch.equal(tokens, ar_tokens)
    assert stats.forward_passes <= n  # the prefill + at most n - 1 parallel iterations
    assert stats.exact and set(stats.exit_reason) == {"converged"}


def test_ar_equals_transformers_generate():
    model = tiny_lm("llama", 0)
    model.generation_config.eos_token_id = None
    ids = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)[:, 7:]
    tokens, _ = _run(model, ids, torch.ones_like(ids), 10, DecodeConfig(method="ar"))
    assert torch.equal(tokens, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_equals_each_sample_alone(arch):
    model = tiny_lm(arch, 1)
    ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    for b, pad in enumerate([0, 3, 5, 8]):
        mask[b, :pad] = 0
    for cfg in (DecodeConfig(method="ar"), DecodeConfig(method="jacobi")):
        batch_tokens, _ = _run(model, ids, mask, 12, cfg)
        for b in range(4):
            alone, _ = _run(model, ids[b : b + 1, mask[b].bool()], None, 12, cfg)
            assert torch.equal(alone[0], batch_tokens[b]), f"{arch} {cfg.method}: padded row {b} differs from alone"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_left_padding_is_invisible(data):
    """Any left padding of any sample of a batch (AR or Jacobi, with a window or not) gives the
    tokens that sample gets alone."""
    arch = data.draw(st.sampled_from(ARCHS))
    model = tiny_lm(arch, data.draw(st.integers(0, 2)))
    ids, mask = draw_prompts(data.draw, 3)
    n = data.draw(st.integers(1, 10))
    cfg = data.draw(
        st.sampled_from(
            [DecodeConfig(method="ar"), DecodeConfig(method="jacobi"), DecodeConfig(method="jacobi", window=3)]
        )
    )
    batch_tokens, _ = _run(model, ids, mask, n, cfg)
    for b in range(3):
        alone, _ = _run(model, ids[b : b + 1, mask[b].bool()], None, n, cfg)
        assert torch.equal(alone[0], batch_tokens[b])
