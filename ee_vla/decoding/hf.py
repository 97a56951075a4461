"""The decode `step` for transformers causal LMs (and Llava-style VLAs) using the standard caches.

`HFStep.prefill(model, input_ids, attention_mask, **extra)` runs the prompt once (left padding
allowed: positions are derived from the attention mask, so a padded sample decodes exactly as it
would alone) and returns the step plus the logits that give the first generated token. The step
then runs any window of generated tokens after cutting the cache back to the prompt plus the
committed generated tokens. Nothing in transformers is patched.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from ee_vla.timing import synchronize


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each sample counts from 0 at its first real token, so
    a padded sample sees the positions it would have alone. Every engine and the training forward
    use this, which is what makes their tokens agree."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def crop_cache(cache, length: int) -> None:
    """Cut `cache` back to `length` positions, across transformers versions (4.x took an absolute
    length, 5.x takes a negative number of positions to drop)."""
    extra = cache.get_seq_length() - length
    if extra < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} positions to {length}")
    if extra:
        cache.crop(-extra)


class HFStep:
    """`step(tokens, start) -> logits` over a transformers model with a DynamicCache."""

    def __init__(self, model, cache, prompt_mask: torch.Tensor):
        self.model = model
        self.cache = cache
        self.prompt_mask = prompt_mask
        self.prompt_len = prompt_mask.shape[1]
        self.valid_len = prompt_mask.sum(1, keepdim=True)  # (B, 1) real prompt tokens per sample
        self.calls = 0

    @classmethod
    @torch.inference_mode()
    def prefill(
        cls, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra
    ) -> tuple[HFStep, torch.Tensor, float]:
        """Run the prompt. Returns (step, first_logits (B, V), seconds). `extra` goes to the model
        (e.g. `pixel_values` for a VLA)."""
        t = time.perf_counter()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = prompt_positions(attention_mask)
        cache = DynamicCache()
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        logits = out.logits[:, -1, :]
        synchronize(input_ids.device)
        return cls(model, out.past_key_values, attention_mask), logits, time.perf_counter() - t

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        B, L = tokens.shape
        crop_cache(self.cache, self.prompt_len + start)
        dev = tokens.device
        position_ids = self.valid_len + start + torch.arange(L, device=dev)[None, :]
        mask = torch.cat([self.prompt_mask, torch.ones(B, start + L, dtype=self.prompt_mask.dtype, device=dev)], 1)
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.calls += 1
        return out.logits
