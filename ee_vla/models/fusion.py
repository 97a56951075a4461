"""Projections that read the same input, merged into one linear layer.

    fuse_projections(vla.model)   # q/k/v -> qkv_proj, gate/up -> gate_up_proj in every decoder layer

A Llama or Qwen2 decoder layer multiplies the same hidden states by three attention matrices
(q, k, v) and by two MLP matrices (gate, up). One product with the matrices stacked reads the same
weights in one kernel instead of three or two, and a quantised layer scales its input once instead
of once per product: fewer, larger kernels, which is what a step over a few tokens is short of.

transformers' own forward still runs: the fused layer is applied to the module's input, and the
former projections become column slices of its output (`q_proj(x)` is then `x[..., :n_q]`), so the
module computes what it computed before, from the stacked product. Only modules whose forward
passes its first input to each of those projections qualify; `_fusible` lists them by class.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


class Columns(nn.Module):
    """`x[..., start:stop]`: what a former projection returns once its rows are in a fused layer."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start : self.stop]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop}"


def _fusible() -> dict[type, tuple[tuple[str, ...], str]]:
    """Module class -> (the projections it applies to its first input, the fused layer's name)."""
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    return {
        llama.LlamaAttention: (QKV, "qkv_proj"),
        llama.LlamaMLP: (GATE_UP, "gate_up_proj"),
        qwen2.Qwen2Attention: (QKV, "qkv_proj"),
        qwen2.Qwen2MLP: (GATE_UP, "gate_up_proj"),
    }


@functools.cache
def _fused_class(base: type, fused_name: str) -> type:
    """A subclass of `base` whose forward applies `fused_name` to its first input, then `base`'s."""

    def forward(self, hidden_states, *args, **kwargs):
        return base.forward(self, getattr(self, fused_name)(hidden_states), *args, **kwargs)

    return type(f"Fused{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def _stack(layers: list[nn.Linear]) -> nn.Linear:
    first = layers[0]
    w = first.weight
    if any(m.in_features != first.in_features or m.weight.dtype != w.dtype for m in layers):
        raise ValueError("fused projections must share their input width and dtype")
    has_bias = [m.bias is not None for m in layers]
    if any(has_bias) != all(has_bias):
        raise ValueError("fused projections must all have a bias or none")
    out = sum(m.out_features for m in layers)
    # built on the meta device: no initialisation of weights that are replaced at once
    fused = nn.Linear(first.in_features, out, bias=all(has_bias), device="meta", dtype=w.dtype)
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in layers]), requires_grad=w.requires_grad)
    if all(has_bias):
        fused.bias = nn.Parameter(torch.cat([m.bias.detach() for m in layers]), requires_grad=w.requires_grad)
    return fused.train(first.training)  # the mode of the layers it replaces


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up in every Llama/Qwen2 attention and MLP of `model`, in place; returns
    how many modules changed (0 when called again). Outputs equal the unfused model's up to the
    rounding of a product computed in one kernel instead of several."""
    table = _fusible()
    done = 0
    for module in list(model.modules()):
        spec = table.get(type(module))
        if spec is None:
            continue
        names, fused_name = spec
        layers = [getattr(module, n) for n in names]
        # plain float weights only: a layer already converted (a quantised tensor subclass) stays as is
        if not all(type(m) is nn.Linear and type(m.weight.data) is torch.Tensor for m in layers):
            continue
        setattr(module, fused_name, _stack(layers))
        start = 0
        for name, layer in zip(names, layers, strict=True):
            setattr(module, name, Columns(start, start + layer.out_features).train(layer.training))
            start += layer.out_features
        module.__class__ = _fused_class(type(module), fused_name)
        done += 1
    return done


def is_fused(model: nn.Module) -> bool:
    """Whether `fuse_projections` changed `model` (some projection is now a slice of a fused layer)."""
    return any(isinstance(m, Columns) for m in model.modules())
