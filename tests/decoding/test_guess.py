import pytest
import torch

from ee_vla.decoding.guess import prompt_guess, warm_guess


def test_prompt_guess_draws_only_unpadded_non_excluded_prompt_tokens():
    ids = torch.tensor([[0, 0, 5, 5, 5, 7, 8], [9, 5, 5, 5, 5, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    g = prompt_guess(ids, mask, 50, torch.Generator().manual_seed(0), exclude=(5,))
    assert set(g[0].tolist()) == {7, 8} and set(g[1].tolist()) == {9, 10, 11}
    with pytest.raises(ValueError, match="no prompt token left"):
        prompt_guess(ids[:1, :5], mask[:1, :5], 3, exclude=(5,))


def test_warm_guess_shifts_by_executed_actions_and_repeats_the_last():
    prev = torch.arange(9).view(1, 9)  # 3 actions of 3 tokens
    assert warm_guess(prev, 3, 3).tolist() == [[3, 4, 5, 6, 7, 8, 6, 7, 8]]
    assert warm_guess(prev, 0, 3).tolist() == prev.tolist()
    assert warm_guess(prev, 9, 3).tolist() == [[6, 7, 8] * 3]
    with pytest.raises(ValueError, match="multiple of 3"):
        warm_guess(prev, 2, 3)
