"""OpenVLA's network, built from transformers' own classes, with its checkpoint's weights.

The result is a `LlavaForConditionalGeneration` (so every ee_vla engine and decoder runs it as it
runs ee_vla's own VLAs) whose vision tower and projector are OpenVLA's:

- `PatchFeaturizer`: one or two vision transformers (transformers' `Dinov2WithRegistersModel` for
  timm's DINOv2-with-registers, `SiglipVisionModel` for timm's SigLIP), each taking its 3 of the 6
  stacked input channels and giving the patch features of its second-to-last block (OpenVLA's
  choice; the last block is not built), concatenated along the feature axis;
- `Projector`: fc1-GELU-fc2 (one tower) or fc1-GELU-fc2-GELU-fc3 (fused towers, fc1 to 4x the
  vision width).

Vision towers: transformers' classes rather than timm, so the package needs no timm (whose
dependency on torchvision pulls a CUDA build on a CPU machine) and no new library at all; the cost
is a key map from timm's names (`blocks.N.attn.qkv`, `ls1.scale_factor`, ...) to transformers', in
`load_weights`. The image placeholder id is the last id of the padded vocabulary (one the tokenizer
never produces); features replace the placeholders that follow BOS, which is where OpenVLA inserts
them.
"""

from __future__ import annotations

import torch
from safetensors import safe_open
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ee_vla.models.files import ModelLoadError
from ee_vla.models.openvla.format import TOWER_PREFIXES, OpenVLAFormat, TowerSpec


def _int_ratio(t: TowerSpec) -> int:
    """transformers' DINOv2 sizes its MLP as an integer multiple of the width (timm's is 4x)."""
    if t.mlp_hidden % t.embed_dim:
        raise ModelLoadError(f"{t.timm_id}: MLP width {t.mlp_hidden} is not a multiple of {t.embed_dim}")
    return t.mlp_hidden // t.embed_dim


def _tower_module(t: TowerSpec) -> nn.Module:
    """A transformers vision transformer with `t`'s sizes and depth - 1 blocks."""
    if t.kind == "dinov2":
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        cfg = Dinov2WithRegistersConfig(
            hidden_size=t.embed_dim,
            num_hidden_layers=t.depth - 1,
            num_attention_heads=t.num_heads,
            mlp_ratio=_int_ratio(t),
            image_size=t.image_size,
            patch_size=t.patch_size,
            num_register_tokens=t.reg_tokens,
            layer_norm_eps=1e-6,
            hidden_act="gelu",
            layerscale_value=1.0,
        )
        return Dinov2WithRegistersModel(cfg)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(
        hidden_size=t.embed_dim,
        intermediate_size=t.mlp_hidden,
        num_hidden_layers=t.depth - 1,
        num_attention_heads=t.num_heads,
        image_size=t.image_size,
        patch_size=t.patch_size,
        layer_norm_eps=1e-6,
        hidden_act="gelu",  # timm's nn.GELU (exact), not SigLIP's tanh approximation
        vision_use_head=False,
    )
    return SiglipVisionModel(cfg)


class PatchFeaturizer(nn.Module):
    """(B, 3 * towers, S, S) -> (B, patches, sum of widths): each tower's second-to-last block."""

    def __init__(self, towers: tuple[TowerSpec, ...]):
        super().__init__()
        self.specs = towers
        self.towers = nn.ModuleList(_tower_module(t) for t in towers)
        self.patch_size = towers[0].patch_size

    def forward(self, pixel_values: torch.Tensor, **_: object) -> BaseModelOutputWithPooling:
        feats = []
        for i, (spec, tower) in enumerate(zip(self.specs, self.towers, strict=True)):
            px = pixel_values[:, 3 * i : 3 * i + 3]
            hidden = tower(pixel_values=px, output_hidden_states=True).hidden_states[-1]
            feats.append(hidden[:, spec.prefix_tokens :])
        out = torch.cat(feats, dim=-1)
        return BaseModelOutputWithPooling(last_hidden_state=out, hidden_states=(out,))


class Projector(nn.Module):
    """OpenVLA's MLP from the vision features to the language model's width."""

    def __init__(self, vision_dim: int, llm_dim: int, layers: int):
        super().__init__()
        self.layers = layers
        if layers == 2:
            self.fc1, self.fc2 = nn.Linear(vision_dim, llm_dim), nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        return self.fc3(self.act(x)) if self.layers == 3 else x


def build_network(fmt: OpenVLAFormat):
    """The network of an OpenVLA checkpoint, its tensors on the meta device (no memory, no
    initialisation): `load_weights` gives it the checkpoint's."""
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    text = dict(fmt.text_config)
    text_cfg = AutoConfig.for_model(text.pop("model_type"), **text)
    cfg = LlavaConfig(
        # Llava builds a SigLIP tower from this; PatchFeaturizer replaces it
        vision_config=SiglipVisionConfig(
            hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1
        ),
        text_config=text_cfg,
        image_token_id=image_token_id(fmt),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=fmt.n_image_tokens,
    )
    with torch.device("meta"):
        net = LlavaForConditionalGeneration(cfg)
        net.model.vision_tower = PatchFeaturizer(fmt.towers)
        net.model.multi_modal_projector = Projector(fmt.vision_dim, text_cfg.hidden_size, fmt.projector_layers)
    return net


def image_token_id(fmt: OpenVLAFormat) -> int:
    """The image placeholder: the padded vocabulary's last id, which no text token uses."""
    return int(fmt.text_config["vocab_size"]) - 1


# ---- weights ----------------------------------------------------------------------------------
def _split_qkv(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = w.chunk(3, dim=0)
    return q, k, v


def _tower_keys(target: set[str], prefix: str, kind: str, depth: int) -> dict[str, str | tuple[str, int]]:
    """timm name (under `prefix`) -> the transformers tower's name (or (name, q/k/v part))."""
    new_dino = any(".attention.q_proj." in k for k in target)
    m: dict[str, str | tuple[str, int]] = {}
    if kind == "dinov2":
        m |= {
            "cls_token": "embeddings.cls_token",
            "reg_token": "embeddings.register_tokens",
            "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
            "norm.weight": "layernorm.weight",  # the final norm: loaded, not used (block depth-2's output is)
            "norm.bias": "layernorm.bias",
        }
        layer, attn = "encoder.layer.{i}.", ("attention.{p}_proj" if new_dino else "attention.attention.{q}")
        out = "attention.o_proj" if new_dino else "attention.output.dense"
        names = {"norm1": "norm1", "norm2": "norm2", "ls1.scale_factor": "layer_scale1.lambda1"}
        names |= {"ls2.scale_factor": "layer_scale2.lambda1"}
    else:
        m |= {
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight",
            "norm.bias": "post_layernorm.bias",
        }
        layer, attn, out = "encoder.layers.{i}.", "self_attn.{p}_proj", "self_attn.out_proj"
        names = {"norm1": "layer_norm1", "norm2": "layer_norm2"}
    for i in range(depth - 1):
        dst = layer.format(i=i)
        for src, tgt in names.items():
            suffixes = ("",) if src.startswith("ls") else (".weight", ".bias")
            for s in suffixes:
                m[f"blocks.{i}.{src}{s}"] = dst + tgt + s
        for s in (".weight", ".bias"):
            m[f"blocks.{i}.attn.proj{s}"] = dst + out + s
            m[f"blocks.{i}.mlp.fc1{s}"] = dst + "mlp.fc1" + s
            m[f"blocks.{i}.mlp.fc2{s}"] = dst + "mlp.fc2" + s
            for part, (p, q) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
                m[f"blocks.{i}.attn.qkv{s}#{part}"] = (dst + attn.format(p=p, q=q) + s, part)
    return {prefix + k: v for k, v in m.items()}


def _read(files) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[k] = fh.get_tensor(k)
    return tensors


def load_weights(
    net, fmt: OpenVLAFormat, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Give `net` (from `build_network`) the checkpoint's weights in `dtype` on `device`,
    converting timm's layout; ModelLoadError naming any tensor that is missing, unexpected or of the
    wrong shape. Returns the checkpoint's tensors the network does not hold (the towers' last
    blocks and heads), which `save_pretrained` writes back."""
    src = _read(fmt.weight_files)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    kept: dict[str, torch.Tensor] = {}
    target = net.state_dict()
    for i, (t, prefix) in enumerate(zip(fmt.towers, TOWER_PREFIXES, strict=False)):
        tower_target = {k.split(f"model.vision_tower.towers.{i}.", 1)[1] for k in target if f"towers.{i}." in k}
        for key, dst in _tower_keys(tower_target, prefix, t.kind, t.depth).items():
            name, part = (key.split("#")[0], int(key.split("#")[1])) if "#" in key else (key, None)
            if name not in src:
                raise ModelLoadError(f"{fmt.path}: the weights have no {name}")
            value = src[name] if part is None else _split_qkv(src[name])[part]
            tgt = dst[0] if isinstance(dst, tuple) else dst
            state[f"model.vision_tower.towers.{i}.{tgt}"] = value
            used.add(name)
        pos = src[prefix + "pos_embed"]
        used.add(prefix + "pos_embed")
        if t.kind == "dinov2":  # patches only in timm (no_embed_class): the class position is zero
            pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
            state[f"model.vision_tower.towers.{i}.embeddings.position_embeddings"] = pos
            mask = f"model.vision_tower.towers.{i}.embeddings.mask_token"
            state[mask] = torch.zeros(target[mask].shape)  # used in pre-training only
        else:
            state[f"model.vision_tower.towers.{i}.embeddings.position_embedding.weight"] = pos[0]
        unbuilt = (prefix + f"blocks.{t.depth - 1}.", prefix + "attn_pool.", prefix + "fc_norm.")
        kept |= {k: v for k, v in src.items() if k.startswith(unbuilt)}  # the last block and heads
    for k, v in src.items():
        if k.startswith("projector."):
            state["model.multi_modal_projector." + k.split(".", 1)[1]] = v
            used.add(k)
        elif k.startswith("language_model.lm_head."):
            state["lm_head." + k.split("lm_head.", 1)[1]] = v
            used.add(k)
        elif k.startswith("language_model.model."):
            state["model.language_model." + k.split("language_model.model.", 1)[1]] = v
            used.add(k)
    unexpected = sorted(set(src) - used - set(kept))
    missing = sorted(set(target) - set(state))
    if unexpected or missing:
        raise ModelLoadError(
            f"{fmt.path}: weights do not match the OpenVLA network: "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelLoadError(
            f"{fmt.path}: {len(wrong)} tensors have the wrong shape, e.g. {k}: {tuple(state[k].shape)} "
            f"(the config gives {tuple(target[k].shape)})"
        )
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(net, device)
    return kept


def _rebuild_buffers(net, device: str | torch.device) -> None:
    """The buffers a checkpoint does not hold (computed at construction): rotary frequencies and
    position ids, rebuilt on `device` after a construction on the meta device (or `to_empty`)."""
    lm = net.model.language_model
    with torch.device(device):
        lm.rotary_emb = type(lm.rotary_emb)(config=lm.config)
    for module in net.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if name == "position_ids":
                module.register_buffer(
                    name, torch.arange(buf.shape[-1], device=device).expand(buf.shape), persistent=False
                )
    left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"OpenVLA network tensors not loaded: {left[:5]}")


def checkpoint_state(net, fmt: OpenVLAFormat) -> dict[str, torch.Tensor]:
    """`net`'s weights under the checkpoint's names (the inverse of `load_weights`): what a
    fine-tuned network writes back. The towers' last blocks and heads are not in `net`; the caller
    keeps the checkpoint's."""
    sd = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for i, (t, prefix) in enumerate(zip(fmt.towers, TOWER_PREFIXES, strict=False)):
        base = f"model.vision_tower.towers.{i}."
        tower = {k.split(base, 1)[1] for k in sd if k.startswith(base)}
        qkv: dict[str, list[torch.Tensor | None]] = {}
        for key, dst in _tower_keys(tower, prefix, t.kind, t.depth).items():
            if isinstance(dst, tuple):
                name, part = key.split("#")[0], int(key.split("#")[1])
                qkv.setdefault(name, [None, None, None])[part] = sd[base + dst[0]]
            else:
                out[key] = sd[base + dst]
        out |= {name: torch.cat(parts, dim=0) for name, parts in qkv.items()}  # type: ignore[arg-type]
        if t.kind == "dinov2":
            out[prefix + "pos_embed"] = sd[base + "embeddings.position_embeddings"][:, 1:]
        else:
            out[prefix + "pos_embed"] = sd[base + "embeddings.position_embedding.weight"][None]
    for k, v in sd.items():
        if k.startswith("model.multi_modal_projector."):
            out["projector." + k.split("model.multi_modal_projector.", 1)[1]] = v
        elif k.startswith("lm_head."):
            out["language_model." + k] = v
        elif k.startswith("model.language_model."):
            out["language_model.model." + k.split("model.language_model.", 1)[1]] = v
    return out
