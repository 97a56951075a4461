"""OpenVLA's Hugging Face checkpoint layout, read without torch.

An OpenVLA checkpoint (openvla/openvla-7b and its fine-tunes) is a directory with:

- `config.json`: `model_type: "openvla"`, the vision backbone id (e.g. `dinosiglip-vit-so-224px`:
  DINOv2 ViT-L/14 with 4 registers and SigLIP So400m/14, both at 224 px, features concatenated),
  the LLM backbone id and its `text_config` (Llama-2), the projector (`arch_specifier`), the image
  resize strategy, `norm_stats` (per dataset: action q01/q99/mask), `n_action_bins` and
  `pad_to_multiple_of` (the vocabulary is padded to a multiple of it);
- `model.safetensors` or shards with `model.safetensors.index.json`, with the timm key names of
  the vision towers (`vision_backbone.featurizer.*`, `vision_backbone.fused_featurizer.*`), the
  projector (`projector.fc1..fc3`) and the LLM (`language_model.*`);
- the Llama tokenizer files and `preprocessor_config.json` (per tower: input size, interpolation,
  mean and std).

The vision towers' kinds come from their timm model ids (the table below), their sizes from the
weights' shapes, their numbers of attention heads from the timm model; a checkpoint whose towers
are not the timm model's size (small test checkpoints) gives them as `timm_model_args` (one dict
per tower with `num_heads`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_vla.models.files import ModelLoadError, check_safetensors_header

OPENVLA_MODEL_TYPE = "openvla"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CHUNK_KEY = "ee_vla_chunk_size"
"""config.json key of a checkpoint trained to emit several actions per call (ee_vla writes it)."""
EMPTY_TOKEN_ID = 29871
"""Llama-2's "▁" token, which OpenVLA's `predict_action` appends to every prompt (its training
prompts end with it)."""


@dataclass(frozen=True)
class TowerSpec:
    """One timm vision transformer of the featurizer."""

    timm_id: str
    kind: str
    """dinov2 (class token, register tokens, layer scale, position embeddings of the patches only)
    | siglip (no class token, no layer scale)."""
    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    reg_tokens: int = 0

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches (class token and registers), dropped from the features."""
        return (1 + self.reg_tokens) if self.kind == "dinov2" else 0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


_SO400M = dict(kind="siglip", embed_dim=1152, num_heads=16)
TIMM_TOWERS: dict[str, dict[str, Any]] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": dict(kind="dinov2", embed_dim=1024, num_heads=16),
    "vit_so400m_patch14_siglip_224": _SO400M,
    "vit_so400m_patch14_siglip_384": _SO400M,
}
"""The timm vision transformers ee_vla builds natively, by OpenVLA's timm model id."""


@dataclass(frozen=True)
class ImageTransform:
    """The processor's transform of one tower: letterbox or not, resize, crop, normalise."""

    size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class OpenVLAFormat:
    """What ee_vla reads from an OpenVLA checkpoint directory."""

    path: Path
    vision_backbone_id: str
    towers: tuple[TowerSpec, ...]
    projector_layers: int
    """2 (`gelu-mlp`) or 3 (`fused-gelu-mlp`, the fused towers')."""
    resize_strategy: str
    """resize-naive | resize-crop | letterbox."""
    transforms: tuple[ImageTransform, ...]
    letterbox_fill: tuple[int, int, int]
    """The letterbox border's colour (the processor's: int(255 * mean) of the last tower)."""
    text_config: dict[str, Any]
    norm_stats: dict[str, Any]
    n_action_bins: int
    pad_to_multiple_of: int
    pad_token_id: int
    weight_files: tuple[Path, ...]
    chunk_size: int = 1
    """Actions per call the checkpoint was trained to emit (`ee_vla_chunk_size`; 1: OpenVLA's)."""

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary before padding: action tokens are its last `n_action_bins - 1` ids."""
        return int(self.text_config["vocab_size"]) - self.pad_to_multiple_of

    @property
    def vision_dim(self) -> int:
        return sum(t.embed_dim for t in self.towers)

    @property
    def n_image_tokens(self) -> int:
        return self.towers[0].n_patches

    def unnorm_key(self, key: str | None) -> str:
        """The dataset whose statistics un-normalise the actions: `key`, or the only one there is."""
        keys = sorted(self.norm_stats)
        if key is None or key == "":
            if len(keys) != 1:
                raise ValueError(
                    f"{self.path} holds action statistics of {len(keys)} datasets: choose one with unnorm_key "
                    f"({', '.join(keys)})"
                )
            return keys[0]
        if key not in self.norm_stats:
            raise ValueError(f"unnorm_key {key!r} is not in {self.path}'s norm_stats: choose one of {', '.join(keys)}")
        return key

    def action_stats(self, key: str | None) -> dict[str, Any]:
        """The `action` statistics (q01, q99, mask, ...) of dataset `key` (see `unnorm_key`)."""
        return self.norm_stats[self.unnorm_key(key)]["action"]


def is_openvla_dir(path: str | Path) -> bool:
    """Whether `path` is a directory whose config.json says `model_type: "openvla"`."""
    cfg = Path(path) / "config.json"
    try:
        return json.loads(cfg.read_text()).get("model_type") == OPENVLA_MODEL_TYPE
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path.parent} is not a complete OpenVLA checkpoint: no {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{path} is corrupt: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is corrupt: expected a JSON object")
    return data


def weight_files(path: Path) -> tuple[tuple[Path, ...], dict[str, tuple[int, ...]]]:
    """The checkpoint's safetensors files (one, or the shards its index lists), headers checked,
    and the name -> shape of every tensor in them (from the headers only)."""
    if (path / INDEX_FILE).is_file():
        index = _json(path / INDEX_FILE)
        try:
            names = sorted(set(index["weight_map"].values()))
        except (KeyError, AttributeError, TypeError) as e:
            raise ModelLoadError(f"{path / INDEX_FILE} is corrupt: no weight_map ({e!r})") from e
        files = tuple(path / n for n in names)
    elif (path / SINGLE_FILE).is_file():
        files = (path / SINGLE_FILE,)
    else:
        raise ModelLoadError(f"{path} holds no weights ({SINGLE_FILE} or {INDEX_FILE})")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{path / INDEX_FILE} lists {f.name}, which is missing")
        shapes.update({k: tuple(v["shape"]) for k, v in check_safetensors_header(f).items()})
    return files, shapes


TOWER_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


def _tower(timm_id: str, size: int, prefix: str, shapes: dict, args: dict, where: Path) -> TowerSpec:
    """One tower: its kind from the timm id, its sizes from the weights' shapes, its heads from
    the timm id (or `timm_model_args` when the sizes are not the timm model's)."""
    known = TIMM_TOWERS[timm_id]
    try:
        embed, _, patch, _ = shapes[prefix + "patch_embed.proj.weight"]
        mlp = shapes[prefix + "blocks.0.mlp.fc1.weight"][0]
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{where}: the weights have no {prefix}patch_embed / blocks ({e!r})") from e
    depth = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in shapes if k.startswith(prefix + "blocks."))
    heads = args.get("num_heads")
    if heads is None:
        if embed != known["embed_dim"]:
            raise ModelLoadError(
                f"{where}: tower {timm_id} has embed_dim {embed}, not the timm model's {known['embed_dim']}: "
                "its number of attention heads is unknown (give timm_model_args with num_heads)"
            )
        heads = known["num_heads"]
    if embed % int(heads):
        raise ModelLoadError(f"{where}: tower {timm_id}: embed_dim {embed} is not a multiple of {heads} heads")
    reg = shapes.get(prefix + "reg_token", (1, 0, 0))[1] if known["kind"] == "dinov2" else 0
    return TowerSpec(
        timm_id=timm_id,
        kind=known["kind"],
        image_size=int(size),
        patch_size=int(patch),
        embed_dim=int(embed),
        depth=depth,
        num_heads=int(heads),
        mlp_ratio=mlp / embed,
        reg_tokens=int(reg),
    )


def _towers(cfg: dict[str, Any], shapes: dict, where: Path) -> tuple[TowerSpec, ...]:
    ids, sizes = list(cfg.get("timm_model_ids") or []), list(cfg.get("image_sizes") or [])
    overrides = list(cfg.get("timm_model_args") or [{}] * len(ids))
    if not ids or len(ids) != len(sizes) or len(overrides) != len(ids) or len(ids) > 2:
        raise ModelLoadError(f"{where}: timm_model_ids {ids} and image_sizes {sizes} do not describe 1 or 2 towers")
    acts = list(cfg.get("timm_override_act_layers") or [None] * len(ids))
    towers = []
    for i, (timm_id, size, args, act) in enumerate(zip(ids, sizes, overrides, acts, strict=False)):
        if timm_id not in TIMM_TOWERS:
            raise ModelLoadError(
                f"{where}: vision tower {timm_id!r} ({cfg.get('vision_backbone_id')}) is not supported; "
                f"ee_vla builds {', '.join(sorted(TIMM_TOWERS))}"
            )
        if act not in (None, "gelu"):
            raise ModelLoadError(f"{where}: vision tower activation {act!r} is not supported (only GELU)")
        towers.append(_tower(timm_id, size, TOWER_PREFIXES[i], shapes, dict(args), where))
    if len({t.n_patches for t in towers}) != 1:
        raise ModelLoadError(f"{where}: the towers give different numbers of patches ({[t.n_patches for t in towers]})")
    return tuple(towers)


def _transforms(pre: dict[str, Any], n: int, where: Path) -> tuple[ImageTransform, ...]:
    sizes = pre.get("input_sizes") or [[3, 224, 224]] * n
    interps = pre.get("interpolations") or ["bicubic"] * n
    means, stds = pre.get("means") or [[0.5] * 3] * n, pre.get("stds") or [[0.5] * 3] * n
    if not (len(sizes) == len(interps) == len(means) == len(stds) == n):
        raise ModelLoadError(f"{where}: expected {n} input_sizes/interpolations/means/stds, one per vision tower")
    out = []
    for size, interp, mean, std in zip(sizes, interps, means, stds, strict=True):
        if interp not in ("bicubic", "bilinear", "nearest"):
            raise ModelLoadError(f"{where}: interpolation {interp!r} is not supported")
        if not all(math.isfinite(float(s)) and float(s) > 0 for s in std):
            raise ModelLoadError(f"{where}: stds must be positive, got {std}")
        out.append(ImageTransform(int(size[-1]), interp, tuple(map(float, mean)), tuple(map(float, std))))
    return tuple(out)


def read_image_processor(
    path: Path, n_towers: int, strategy: str | None = None
) -> tuple[str, tuple[ImageTransform, ...], tuple[int, int, int]]:
    """(resize strategy, one transform per tower, letterbox fill) of `path`'s preprocessor_config.json;
    the values the processor saved (`tvf_letterbox_fill`) win over ones derived from the means."""
    where = path / "preprocessor_config.json"
    pre = _json(where)
    strategy = str(pre.get("image_resize_strategy") or strategy or "letterbox")
    if strategy not in ("resize-naive", "resize-crop", "letterbox"):
        raise ModelLoadError(f"{where}: image_resize_strategy {strategy!r} is not supported")
    transforms = _transforms(pre, n_towers, where)
    fill = pre.get("tvf_letterbox_fill") or [int(m * 255) for m in transforms[-1].mean]
    if len(fill) != 3:
        raise ModelLoadError(f"{where}: tvf_letterbox_fill must be 3 values, got {fill}")
    return strategy, transforms, (int(fill[0]), int(fill[1]), int(fill[2]))


def read_openvla(path: str | Path) -> OpenVLAFormat:
    """Read and check an OpenVLA checkpoint's configuration (no torch); ModelLoadError naming the
    file and the field when something is missing, corrupt or unsupported."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory")
    where = path / "config.json"
    cfg = _json(where)
    if cfg.get("model_type") != OPENVLA_MODEL_TYPE:
        raise ModelLoadError(f"{where}: model_type is {cfg.get('model_type')!r}, not {OPENVLA_MODEL_TYPE!r}")
    files, shapes = weight_files(path)
    towers = _towers(cfg, shapes, where)
    arch = str(cfg.get("arch_specifier", ""))
    layers = 3 if arch.endswith("fused-gelu-mlp") else 2 if arch.endswith("gelu-mlp") else 0
    if not layers:
        raise ModelLoadError(f"{where}: projector {arch!r} is not supported (gelu-mlp or fused-gelu-mlp)")
    text = cfg.get("text_config")
    if not isinstance(text, dict) or text.get("model_type", "llama") not in ("llama", "mistral"):
        raise ModelLoadError(f"{where}: text_config must describe a llama or mistral model, got {text!r:.200}")
    text = {"model_type": "llama", **text}
    norm_stats = cfg.get("norm_stats")
    if not isinstance(norm_stats, dict) or not norm_stats:
        raise ModelLoadError(f"{where}: norm_stats is missing or empty (it holds the action statistics)")
    for key, stats in norm_stats.items():
        try:
            q01, q99 = stats["action"]["q01"], stats["action"]["q99"]
        except (KeyError, TypeError) as e:
            raise ModelLoadError(f"{where}: norm_stats[{key!r}] has no action q01/q99 ({e!r})") from e
        if len(q01) != len(q99) or not q01:
            raise ModelLoadError(f"{where}: norm_stats[{key!r}] action q01 and q99 differ in length")
    strategy, transforms, fill = read_image_processor(path, len(towers), cfg.get("image_resize_strategy"))
    if "vocab_size" not in text:
        raise ModelLoadError(f"{where}: text_config has no vocab_size")
    return OpenVLAFormat(
        path=path,
        vision_backbone_id=str(cfg.get("vision_backbone_id")),
        towers=towers,
        projector_layers=layers,
        resize_strategy=strategy,
        transforms=transforms,
        letterbox_fill=fill,
        text_config=text,
        norm_stats=norm_stats,
        n_action_bins=int(cfg.get("n_action_bins", 256)),
        pad_to_multiple_of=int(cfg.get("pad_to_multiple_of", 64)),
        pad_token_id=int(cfg.get("pad_token_id", 32000)),
        weight_files=files,
        chunk_size=_chunk_size(cfg.get(CHUNK_KEY, 1), where),
    )


def _chunk_size(v: Any, where: Path) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
        raise ModelLoadError(f"{where}: {CHUNK_KEY} must be an integer in [1, 64], got {v!r}")
    return v
