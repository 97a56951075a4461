"""A prefill that also runs the guess (`DecodeConfig.guess_in_prefill`): the prefill is the first
Jacobi iteration, so Jacobi to convergence still returns AR's tokens, a guess whose first k tokens
are AR's saves those iterations, and every engine's prefill computes the same logits."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.hf import HFStep
from ee_vla.engine import make_prefill

from .conftest import VOCAB, draw_case, tiny_lm


def _guess_from(ar_tokens: torch.Tensor, k: int, noise: list[int]) -> torch.Tensor:
    """AR's first k tokens, then tokens that differ from AR's."""
    B, n = ar_tokens.shape
    other = (ar_tokens + 1 + torch.tensor(noise).view(B, n) % (VOCAB - 1)) % VOCAB
    return torch.cat([ar_tokens[:, :k], other[:, k:]], 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_jacobi_with_the_guess_in_the_prefill_equals_ar(data):
    model, ids, mask, n, action_range = draw_case(data.draw, (1, 3), 2, 14, max_len=10)
    batch = ids.shape[0]
    step, first, _ = HFStep.prefill(model, ids, mask)
    ar_tokens, _ = decode(step, first, n, DecodeConfig(method="ar"), action_range=action_range)

    k = data.draw(st.integers(0, n))  # leading guess tokens that are AR's
    noise = data.draw(st.lists(st.integers(0, 10**6), min_size=batch * n, max_size=batch * n))
    guess = _guess_from(ar_tokens, k, noise)
    window = data.draw(st.one_of(st.none(), st.integers(1, n)))
    L = data.draw(st.integers(1, n - 1))
    keep = True if window is not None else data.draw(st.booleans())
    cfg = DecodeConfig(method="jacobi", window=window, keep_final_kv=keep, guess_in_prefill=True)
    step, logits, _ = HFStep.prefill(model, ids, mask, window=guess[:, :L])
    assert logits.shape[:2] == (batch, 1 + L)
    tokens, stats = decode(step, logits, n, cfg, guess=guess, action_range=action_range)
    assert torch.equal(tokens, ar_tokens)
    assert stats.exact and set(stats.exit_reason) == {"converged"}
    # the prefill made token 0 and one more per leading right guess final
    assert stats.iterations <= n - 1 - min(k, L)
    if min(k, L) == n - 1:
        assert stats.iterations == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefill_window_logits_equal_a_prefill_then_a_step(arch):
    """The logits of the prompt and window in one forward equal those of the prompt's prefill
    followed by one step over the window (left padding included)."""
    model = tiny_lm(arch, 1)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, VOCAB, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :7] = 0
    window = torch.randint(0, VOCAB, (3, 5), generator=g)
    step, first, _ = HFStep.prefill(model, ids, mask)
    ref = torch.cat([first[:, None], step(window, 0)], 1)
    _, logits, _ = HFStep.prefill(model, ids, mask, window=window)
    torch.testing.assert_close(logits, ref)


@pytest.mark.parametrize("engine", ["static", "eager"])
def test_static_engine_prefill_window_equals_eager(engine):
    """The static engine's prefill with a window (bucketed, and at its own length with
    `prefill_bucket=None`) gives HFStep's logits, and its step decodes on from there to AR's tokens."""
    from ee_vla.benchmarks.check import padded_prompts
    from ee_vla.benchmarks.check import tiny_lm as check_lm
    from ee_vla.engine.static import StaticEngine

    model = check_lm("llama", seed=0)
    n = 9
    inputs = padded_prompts(3, 7, [0, 2, 5], seed=3)
    step, first, _ = HFStep.prefill(model, **inputs)
    ar_tokens, _ = decode(step, first, n, DecodeConfig(method="ar"))
    guess = ar_tokens.clone()
    guess[:, 3:] = (guess[:, 3:] + 1) % model.config.vocab_size
    _, ref, _ = HFStep.prefill(model, **inputs, window=guess[:, : n - 1])
    bucket = None if engine == "eager" else 16
    eng = StaticEngine(model, batch_size=3, max_prompt_len=16, max_new_tokens=n, graphs=False, prefill_bucket=bucket)
    for _ in range(2):  # a second prefill reuses the bucket's buffers
        step, logits, _ = eng.prefill(**inputs, window=guess[:, : n - 1])
        torch.testing.assert_close(logits, ref)
        tokens, stats = decode(step, logits, n, DecodeConfig(method="jacobi", guess_in_prefill=True), guess=guess)
        assert torch.equal(tokens, ar_tokens) and stats.iterations <= n - 1 - 3
    # the window's prefill has its own buffers; the plain prefill still works beside it
    step, first_plain, _ = eng.prefill(**inputs)
    torch.testing.assert_close(first_plain, ref[:, 0])
    assert {key[1] for key in eng._prompts} == ({0, n - 1} if bucket else set())


def test_the_decode_loop_refuses_a_window_it_cannot_check():
    model = tiny_lm("llama", 0)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    guess = torch.zeros(2, 6, dtype=torch.long)
    step, logits, _ = HFStep.prefill(model, ids, window=guess[:, :5])
    cfg = DecodeConfig(method="jacobi", guess_in_prefill=True)
    with pytest.raises(ValueError, match="needs the guess"):
        decode(step, logits, 6, cfg)
    bad = guess.clone()
    bad[0, 1] = -1
    with pytest.raises(ValueError, match="must be token ids"):
        decode(step, logits, 6, cfg, guess=bad)
    with pytest.raises(ValueError, match="negative token ids"):
        HFStep.prefill(model, ids, window=bad[:, :5])
    with pytest.raises(ValueError, match="window must be"):
        HFStep.prefill(model, ids, window=guess[:1, :5])
    with pytest.raises(ValueError, match="jacobi/ceed option"):
        DecodeConfig(method="ar", guess_in_prefill=True)


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_policy_with_the_guess_in_the_prefill_streams_ar_actions(tiny_vla_dir, engine):
    """A warm-started Jacobi policy with the guess in its prefill returns AR's actions call after
    call (batch 2, one row without a previous chunk in the middle), with fewer forward passes once
    its guesses start right."""
    from ee_vla.policy import PolicyConfig, VLAPolicy

    rng = np.random.default_rng(0)
    ar = VLAPolicy.from_config(tiny_vla_dir, PolicyConfig(decoder=DecodeConfig(method="ar"), engine=engine))
    cfg = DecodeConfig(method="jacobi", init="warm", guess_in_prefill=True)
    pol = VLAPolicy.from_config(tiny_vla_dir, PolicyConfig(decoder=cfg, engine=engine))
    size = ar.vla.image_size
    px = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    instr = ["pick up the cube", "push the block"]
    for call in range(4):
        px = np.clip(px.astype(int) + rng.integers(-3, 4, px.shape), 0, 255).astype(np.uint8)
        obs = {"pixels": px, "instruction": instr}
        if ar.vla.proprio_dim:
            obs["agent_pos"] = np.zeros((2, ar.vla.proprio_dim))
        if call == 2:  # row 1 starts a new episode: no guess for it in this call
            prev = pol.warm_start_tokens.clone()
            prev[1] = -1
            pol.warm_start_tokens = prev
        want = ar.predict_action_chunk(obs)
        got = pol.predict_action_chunk(obs)
        np.testing.assert_array_equal(got, want)
        assert pol.last_stats.exact


def test_the_two_pass_preset_runs_the_guess_in_its_prefill_and_one_iteration(tiny_vla_dir):
    """`PolicyConfig(decoder="ceed_2pass")`: every call is two forward passes (the prefill, then
    one iteration); the episode's first call has no guess and runs the plain prefill, the next
    ones run the previous chunk's warm guess in it."""
    from ee_vla.policy import PolicyConfig, VLAPolicy

    pol = VLAPolicy.from_config(tiny_vla_dir, PolicyConfig(decoder="ceed_2pass"))
    windows = []
    prefill = pol._prefill

    def spy(model, **inputs):
        windows.append(inputs.get("window"))
        return prefill(model, **inputs)

    pol._prefill = spy
    size = pol.vla.image_size
    obs = {"pixels": np.zeros((1, size, size, 3), np.uint8), "instruction": ["pick up the cube"]}
    if pol.vla.proprio_dim:
        obs["agent_pos"] = np.zeros((1, pol.vla.proprio_dim))
    for _ in range(3):
        pol.predict_action_chunk(obs)
        assert pol.last_stats.forward_passes == 2
    n = pol.vla.n_action_tokens
    assert windows[0] is None and all(w is not None and w.shape == (1, n - 1) for w in windows[1:])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_vla_image_prefill_with_the_window_equals_eager(device):
    """A VLA prompt (image features merged in the bucketed prefill, a CUDA graph on a GPU) with the
    guess after it gives HFStep's logits, and Jacobi from there gives AR's tokens."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from ee_vla.models.vla import VLA

    vla = VLA.create("tiny", chunk_size=3, seed=0)
    vla.model.to(device=device, dtype=torch.float64)
    px = np.random.default_rng(0).integers(0, 256, (2, vla.image_size, vla.image_size, 3), dtype=np.uint8)
    inputs = vla.build_inputs(px, ["open the drawer", "pick up the red cube and put it in the basket"])
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n, ar_range = vla.n_action_tokens, vla.action_range
    step, first, _ = HFStep.prefill(vla.model, **inputs)
    ar_tokens, _ = decode(step, first, n, DecodeConfig(method="ar"), action_range=ar_range)
    guess = ar_tokens.clone()
    guess[:, 5:] = ar_range[0] + (guess[:, 5:] - ar_range[0] + 7) % (ar_range[1] - ar_range[0] + 1)
    _, ref, _ = HFStep.prefill(vla.model, **inputs, window=guess[:, : n - 1])
    pool = make_prefill("graph" if device == "cuda" else "static", vla.model, n)
    cfg = DecodeConfig(method="jacobi", guess_in_prefill=True)
    for _ in range(2):  # the second call replays the captured prefill
        step, logits, _ = pool(vla.model, **inputs, window=guess[:, : n - 1])
        torch.testing.assert_close(logits, ref)
        tokens, stats = decode(step, logits, n, cfg, guess=guess, action_range=ar_range)
        assert torch.equal(tokens, ar_tokens) and stats.iterations <= n - 1 - 5
    (engine,) = pool.engines.values()
    assert (device == "cuda") == bool(engine._prompt_graphs)
