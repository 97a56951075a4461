"""Projections that read the same input, merged into one linear layer.

    fuse_projections(vla.model)   # q/k/v -> qkv_proj, gate/up -> gate_up_proj in every decoder layer

A Llama or Qwen2 decoder layer multiplies the same hidden states by three attention matrices
(q, k, v) and by two MLP matrices (gate, up). One product with the matrices stacked reads the same
weights in one kernel instead of three or two, and a quantised layer scales its input once instead
of once per product: fewer, larger kernels, which is what a step over a few tokens is short of.

transformers' own forward still runs: the fused layer is applied to the module's input, and the
former projections become column slices of its output (`q_proj(x)` is then `x[..., :n_q]`), so the
module computes what it computed before, from the stacked product. Only modules whose forward
passes its first input to each of those projections qualify; they are listed in `_FUSIBLE` by class.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
_MARK = "_ee_vla_fused"


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

    table: dict[type, tuple[tuple[str, ...], str]] = {}
    for mod in (llama, qwen2):
        prefix = "Llama" if mod is llama else "Qwen2"
        table[getattr(mod, f"{prefix}Attention")] = (QKV, "qkv_proj")
        table[getattr(mod, f"{prefix}MLP")] = (GATE_UP, "gate_up_proj")
    return table


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
    fused = nn.Linear(first.in_features, out, bias=all(has_bias), device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in layers]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in layers]))
    fused.weight.requires_grad_(w.requires_grad)
    if fused.bias is not None:
        fused.bias.requires_grad_(w.requires_grad)
    return fused


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
            setattr(module, name, Columns(start, start + layer.out_features))
            start += layer.out_features
        module.__class__ = _fused_class(type(module), fused_name)
        done += 1
    if done:
        setattr(model, _MARK, True)
    return done


def is_fused(model: nn.Module) -> bool:
    """Whether `fuse_projections` changed `model`."""
    return bool(getattr(model, _MARK, False))
