"""The training forward mirrors the decoder; consistency, AR and mixed-label pieces on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer
from ee_vla.decoding import DecodeConfig, decode
from ee_vla.decoding.guess import prompt_guess
from ee_vla.decoding.hf import HFStep
from ee_vla.training.losses import (
    WindowLM,
    after_first_wrong,
    ar_loss,
    consistency_loss,
    mixed_labels,
    window_logits,
)


@pytest.fixture(scope="module")
def vla():
    from ee_vla.models.vla import VLA

    return VLA.create("tiny", chunk_size=2, seed=1)


@pytest.fixture(scope="module")
def inputs(vla):
    px = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    # different prompt lengths: the batch is left-padded
    return vla.build_inputs(px, ["pick up the red cube", "push", "reach the purple sphere on the left"])


def test_window_logits_match_the_decoder(vla, inputs):
    n = vla.n_action_tokens
    step, first, _ = HFStep.prefill(vla.model, **inputs)
    ar, _ = decode(step, first, n, DecodeConfig(method="ar"), action_range=vla.action_range)
    with torch.no_grad():
        logits = window_logits(WindowLM(vla.model), inputs, ar[:, :-1])
    assert logits.shape == (3, n, len(vla.tokenizer))
    lo, hi = vla.action_range
    torch.testing.assert_close(logits[:, 0], first, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits[..., lo : hi + 1].argmax(-1) + lo, ar)  # teacher forcing on AR = AR


def test_window_tokens_are_embedded_like_the_decoder_even_image_ids(vla, inputs):
    """A `prompt` guess can put `<image>` ids in the window: they are vocabulary tokens there."""
    n = vla.n_action_tokens
    guess = prompt_guess(inputs["input_ids"], inputs["attention_mask"], n, torch.Generator().manual_seed(0))
    guess[:, 3] = vla.image_token_id
    step, _, _ = HFStep.prefill(vla.model, **inputs)
    ref = step(guess[:, : n - 1], 0)  # the decoder's iteration over the whole window
    with torch.no_grad():
        logits = window_logits(WindowLM(vla.model), inputs, guess[:, : n - 1])
    torch.testing.assert_close(logits[:, 1:], ref, atol=1e-4, rtol=1e-4)


def test_ar_loss_on_the_action_block():
    logits = torch.full((1, 2, 10), -10.0)
    logits[0, 0, 7] = logits[0, 1, 9] = 10.0
    labels = torch.tensor([[7, 9]])
    assert ar_loss(logits, labels, (6, 9)) < 1e-6
    assert ar_loss(logits, labels, (6, 9), label_smoothing=0.1) > 0.1
    assert ar_loss(logits, labels, None, reduction="sum") == pytest.approx(2 * ar_loss(logits, labels, None).item())


def test_consistency_loss_is_zero_at_the_fixed_point_and_only_trains_the_state_branch():
    torch.manual_seed(0)
    fixed = torch.randn(2, 4, 8)
    assert consistency_loss(fixed.clone(), fixed).item() == pytest.approx(0.0, abs=1e-7)
    state = torch.randn(2, 4, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, requires_grad=True)
    loss = consistency_loss(state, target)
    loss.backward()
    assert loss > 0 and state.grad.abs().sum() > 0 and target.grad is None
    mask = torch.tensor([[False, False, True, True], [False, True, True, True]])
    masked = consistency_loss(state.detach(), target.detach(), mask)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(state.detach(), -1),
        torch.log_softmax(target.detach(), -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    assert masked.item() == pytest.approx(kl[mask].mean().item(), rel=1e-5)


def test_after_first_wrong():
    fixed = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    state = torch.tensor([[5, 6, 7, 8], [5, 0, 7, 8], [5, 6, 7, 0]])
    keep = after_first_wrong(state, fixed)
    assert keep.tolist() == [
        [False, False, False, False],  # state == Y*: every position sees the fixed point's inputs
        [False, False, True, True],  # input 1 is wrong: predictions 2.. depend on it
        [False, False, False, False],  # only the last input differs, and no position reads it
    ]


def test_mixed_labels_replace_exactly_the_deviating_steps():
    tok = ActionTokenizer.openvla(ActionStats(q01=[-1.0] * 3, q99=[1.0] * 3, mask=[True] * 3), vocab_size=1000)
    gt_actions = np.array([[[0.0, 0.0, 0.0], [0.5, -0.5, 0.2], [0.9, 0.9, -0.9], [-0.3, 0.1, 0.0]]])  # (1, 4, 3)
    fixed_actions = gt_actions.copy()
    fixed_actions[0, 1] += [0.01, -0.01, 0.0]  # ~1 bin off on two dims: mean 0.007 < threshold, kept
    fixed_actions[0, 2] = [0.5, 0.9, -0.9]  # 0.4 off on one dim: mean 0.13 > 0.1, replaced
    fixed_actions[0, 3] = [0.3, -0.5, 0.6]  # far off, replaced
    gt, fixed = tok.encode_chunk(gt_actions), tok.encode_chunk(fixed_actions)
    labels, replaced = mixed_labels(fixed, gt, tok, threshold=0.1)
    assert replaced.tolist() == [[False, False, True, True]]
    np.testing.assert_array_equal(labels[0, :6], fixed[0, :6])  # steps 0, 1 keep the fixed point
    np.testing.assert_array_equal(labels[0, 6:], gt[0, 6:])  # steps 2, 3 take the ground truth
    assert not np.array_equal(labels[0, 3:6], gt[0, 3:6])  # step 1 really differed from the ground truth
    lab_all, rep_all = mixed_labels(fixed, gt, tok, threshold=0.0)
    assert rep_all.tolist() == [[False, True, True, True]] and np.array_equal(lab_all, gt)
    lab_none, rep_none = mixed_labels(fixed, gt, tok, threshold=10.0)
    assert not rep_none.any() and np.array_equal(lab_none, fixed)
