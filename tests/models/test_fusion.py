"""Fused projections (`ee_vla.models.fusion`): q/k/v and gate/up stacked into one layer each."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ee_vla.models.fusion import Columns, fuse_projections, is_fused
from ee_vla.models.quantize import quantize_weights
from ee_vla.models.vla import VLA


def _tiny(arch: str):
    kw = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    # grouped-query attention: k and v narrower than q, so the slices have different widths
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**kw, num_key_value_heads=2)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**kw, num_key_value_heads=2)).eval()  # q/k/v with biases


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_model_computes_what_the_unfused_one_did(arch):
    torch.manual_seed(0)
    model = _tiny(arch)
    ids = torch.randint(0, 101, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in one row
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        # decoding with a cache goes through the same forwards
        ref_step = model(input_ids=ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        assert fuse_projections(model) == 2 * 2  # attention and MLP of each layer
        after = model(input_ids=ids, attention_mask=mask).logits
        step = model(input_ids=ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        nxt = model(input_ids=ids[:, 7:], attention_mask=mask, past_key_values=step.past_key_values).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.logits, ref_step.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt, before[:, 7:], atol=1e-5, rtol=1e-5)
    layer = model.model.layers[0]
    assert type(layer.self_attn.qkv_proj) is torch.nn.Linear and layer.self_attn.qkv_proj.out_features == 64 + 2 * 32
    assert isinstance(layer.self_attn.q_proj, Columns) and isinstance(layer.mlp.up_proj, Columns)
    assert (layer.self_attn.qkv_proj.bias is not None) == (arch == "qwen2")
    assert is_fused(model) and fuse_projections(model) == 0  # a second call changes nothing
    # the fused layers take the replaced layers' mode: an eval-mode model has no module left in training
    assert not any(m.training for m in model.modules())
    train = _tiny(arch).train()
    fuse_projections(train)
    assert all(m.training for m in train.modules())


def test_the_weights_are_the_projections_stacked():
    torch.manual_seed(1)
    model = _tiny("llama")
    attn = model.model.layers[1].self_attn
    q, k, v = (getattr(attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj"))
    fuse_projections(model)
    assert torch.equal(attn.qkv_proj.weight, torch.cat([q, k, v]))
    assert not any(isinstance(m, torch.nn.Linear) for m in (attn.q_proj, attn.k_proj, attn.v_proj))


def test_quantising_fuses_first(tiny_vla_dir):
    vla = VLA.from_pretrained(tiny_vla_dir)
    quantize_weights(vla.model, "int8")
    assert is_fused(vla.model)
    lm = vla.model.get_decoder()  # the language model; the vision tower's attention is not a Llama/Qwen2 one
    names = {n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"qkv_proj", "gate_up_proj"} <= names and not {"q_proj", "gate_proj"} & names


def test_layers_already_quantised_are_left_alone(tiny_vla_dir):
    from ee_vla.models.quantize import _torchao

    vla = VLA.from_pretrained(tiny_vla_dir)
    _torchao().quantize_(vla.model, _torchao().Int8WeightOnlyConfig())  # converted without fusing
    assert fuse_projections(vla.model) == 0 and not is_fused(vla.model)
