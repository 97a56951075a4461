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


def check_window(window: torch.Tensor, input_ids: torch.Tensor, values: bool = True) -> torch.Tensor:
    """A prefill's guess window on the prompt's device: (B, L >= 1) token ids for B prompts.
    `values`: check that the ids are >= 0 too (a host read; a caller that reads the device
    anyway may check them there instead)."""
    if window.ndim != 2 or window.shape[0] != input_ids.shape[0] or window.shape[1] < 1:
        raise ValueError(
            f"the prefill's window must be (batch={input_ids.shape[0]}, L >= 1) token ids, got {tuple(window.shape)}"
        )
    if values and bool((window < 0).any()):
        raise ValueError("the prefill's window holds negative token ids")
    return window.to(input_ids.device, torch.long)


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
        cls,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        window: torch.Tensor | None = None,
        **extra,
    ) -> tuple[HFStep, torch.Tensor, float]:
        """Run the prompt. Returns (step, first_logits (B, V), seconds). `extra` goes to the model
        (e.g. `pixel_values` for a VLA). `window` (B, L): generated tokens 0 .. L-1 (a guess) run
        after the prompt in the same forward; the logits are then (B, 1 + L, V), those of the
        prompt's last position and of each window token (see `ee_vla.decoding.core.iter_decode`)."""
        t = time.perf_counter()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_mask, keep = attention_mask, 1
        if window is not None:
            window = check_window(window, input_ids)
            keep = 1 + window.shape[1]
            input_ids = torch.cat([input_ids, window], 1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(window, dtype=attention_mask.dtype)], 1)
        cache = DynamicCache()
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=prompt_positions(attention_mask),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
            **extra,
        )
        logits = out.logits[:, -1, :] if window is None else out.logits[:, -keep:, :]
        synchronize(input_ids.device)
        return cls(model, out.past_key_values, prompt_mask), logits, time.perf_counter() - t

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
