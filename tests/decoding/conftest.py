"""Tiny random causal LMs (float64, so argmax ties cannot flip between window shapes)."""

import functools

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 48


@functools.cache
def tiny_lm(arch: str, seed: int):
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    # Sharpen the output so greedy tokens repeat structure (otherwise every window token is noise).
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model.double().eval()
