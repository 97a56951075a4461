"""Initial guesses for the Jacobi window (token 0 always comes from the prefill)."""

from __future__ import annotations

import torch


def prompt_guess(
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_tokens: int,
    generator: torch.Generator | None = None,
    exclude: tuple[int, ...] = (),
) -> torch.Tensor:
    """(B, n) tokens drawn uniformly from each sample's own (unpadded) prompt, as CLLM/CEED do,
    skipping `exclude` ids (e.g. image placeholders, which are most of a VLA prompt)."""
    B = prompt_ids.shape[0]
    out = torch.empty(B, n_tokens, dtype=torch.long)
    for b in range(B):
        keep = attention_mask[b].bool() & ~torch.isin(prompt_ids[b], torch.tensor(exclude, dtype=prompt_ids.dtype))
        valid = prompt_ids[b][keep].cpu()
        if len(valid) == 0:
            raise ValueError(f"sample {b}: no prompt token left to draw a guess from")
        idx = torch.randint(len(valid), (n_tokens,), generator=generator)
        out[b] = valid[idx]
    return out.to(prompt_ids.device)


def warm_guess(previous: torch.Tensor, shift: int, unit: int) -> torch.Tensor:
    """The previous chunk shifted left by `shift` tokens (the actions executed since), the freed
    tail filled with the last action repeated: robot actions are smooth in time. A row of negative
    ids (no previous chunk) stays negative: no guess for that sample (`iter_decode`)."""
    B, n = previous.shape
    if shift < 0 or shift % unit:
        raise ValueError(f"warm-start shift must be a non-negative multiple of {unit}, got {shift}")
    if shift >= n:
        return previous[:, -unit:].repeat(1, n // unit)
    tail = previous[:, -unit:].repeat(1, shift // unit) if shift else previous[:, :0]
    return torch.cat([previous[:, shift:], tail], dim=1)
