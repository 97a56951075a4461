"""Tiny random causal LMs (float64, so argmax ties cannot flip between window shapes): Llama and
Qwen2 from the helper the GPU exactness check uses, plus GPT-2 (absolute, learned positions: a
position-id bug changes its tokens, where rotary models only see relative positions) and Mistral
and Phi3 (other rotary families with their own attention/MLP code)."""

import functools

import torch
from hypothesis import strategies as st

from ee_vla.benchmarks.check import TINY_VOCAB as VOCAB
from ee_vla.benchmarks.check import tiny_lm as _tiny_lm

__all__ = ["ARCHS", "VOCAB", "draw_case", "draw_prompts", "tiny_lm"]

ARCHS = ("llama", "qwen2", "gpt2", "mistral", "phi3")


@functools.cache
def tiny_lm(arch: str, seed: int):
    if arch in ("llama", "qwen2"):
        return _tiny_lm(arch, seed)
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed + 1000 * ARCHS.index(arch))  # Mistral would otherwise equal Llama's weights
    if arch == "gpt2":
        # a larger init than GPT-2's 0.02 so that the learned position table visibly moves the
        # argmax; untied head so sharpening it does not scale the embeddings
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            initializer_range=0.3,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = MistralForCausalLM(MistralConfig(**kw)) if arch == "mistral" else Phi3ForCausalLM(Phi3Config(**kw))
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model.to(torch.float64).eval()


def draw_prompts(draw, batch: int, max_len: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Hypothesis-drawn prompts: (batch, P) ids of the tiny vocabulary and an attention mask with
    random left padding (every row keeps at least one real token)."""
    P = draw(st.integers(2, max_len))
    ids = torch.tensor(draw(st.lists(st.integers(0, VOCAB - 1), min_size=batch * P, max_size=batch * P))).view(batch, P)
    mask = torch.ones(batch, P, dtype=torch.long)
    for b in range(batch):
        mask[b, : draw(st.integers(0, P - 1))] = 0
    return ids, mask


def draw_case(draw, batches: tuple[int, ...], n_min: int, n_max: int, max_len: int = 12):
    """A drawn decoding case: (model, ids, mask, n tokens, action_range) over the five families,
    a batch size from `batches`, left-padded prompts and the action block or the whole vocabulary."""
    model = tiny_lm(draw(st.sampled_from(ARCHS)), draw(st.integers(0, 2)))
    ids, mask = draw_prompts(draw, draw(st.sampled_from(batches)), max_len)
    n = draw(st.integers(n_min, n_max))
    action_range = draw(st.sampled_from([None, (VOCAB - 16, VOCAB - 1)]))
    return model, ids, mask, n, action_range
