"""Load-time checks of a model directory, run before or right after anything is allocated: the
sizes of its configs (`ModelBounds`), the safetensors file, the weights transformers loaded (none
missing, none NaN) and the image normalisation of `ee_vla.json`. Each failure is a
`ModelLoadError` (or a ValueError for the normalisation) that names the file and the field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ee_vla.models.files import EE_VLA_FILE, ModelLoadError


@dataclass(frozen=True)
class ModelBounds:
    """Upper bounds on a model directory's sizes, checked before anything is allocated, so that a
    corrupt or hostile config (e.g. ``num_hidden_layers: 1000000``) fails at once with a
    `ModelLoadError` instead of growing memory for minutes. Generous: a 7B OpenVLA-shaped model
    (32 layers, hidden 4096, MLP 11008, vocabulary 32064, 224 px images, 256 patches) is far
    inside every one."""

    layers: int = 256
    """Transformer layers of the language model and of the vision tower, each."""
    hidden: int = 16384
    """Hidden size of the language model and of the vision tower."""
    intermediate: int = 65536
    """MLP width of the language model and of the vision tower."""
    heads: int = 256
    """Attention heads (query and key/value)."""
    vocab: int = 1 << 20
    """Vocabulary size (text and action tokens)."""
    positions: int = 1 << 20
    """max_position_embeddings of the language model (absolute-position models allocate a table)."""
    image_size: int = 1024
    """Input image side of the vision tower and of `ee_vla.json`, in pixels."""
    image_tokens: int = 16384
    """Image placeholder tokens per prompt (image_seq_length)."""
    chunk_size: int = 64
    """Actions per chunk (`ee_vla.json`)."""
    action_dim: int = 64
    """Dimensions of one action (the action tokenizer's statistics)."""


MODEL_BOUNDS = ModelBounds()


def _bounded(where: str, value, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ModelLoadError(f"{where} = {value!r} is outside 1..{limit} (ee_vla.models.checks.ModelBounds)")


def check_config_bounds(config, extra: dict, path: Path, bounds: ModelBounds = MODEL_BOUNDS) -> None:
    """Raise `ModelLoadError` naming the first size of a Llava config (`config.json`) or of
    `ee_vla.json` (`extra`) that is outside `bounds`."""
    cfg, ee = path / "config.json", path / EE_VLA_FILE
    text, vision = config.text_config, config.vision_config
    for name, limit in (
        ("num_hidden_layers", bounds.layers),
        ("hidden_size", bounds.hidden),
        ("intermediate_size", bounds.intermediate),
        ("num_attention_heads", bounds.heads),
        ("num_key_value_heads", bounds.heads),
        ("vocab_size", bounds.vocab),
        ("max_position_embeddings", bounds.positions),
    ):
        if hasattr(text, name) and (name != "num_key_value_heads" or getattr(text, name) is not None):
            _bounded(f"{cfg}: text_config.{name}", getattr(text, name), limit)
    for name, limit in (
        ("num_hidden_layers", bounds.layers),
        ("hidden_size", bounds.hidden),
        ("intermediate_size", bounds.intermediate),
        ("num_attention_heads", bounds.heads),
        ("image_size", bounds.image_size),
        ("patch_size", bounds.image_size),
    ):
        if hasattr(vision, name):
            _bounded(f"{cfg}: vision_config.{name}", getattr(vision, name), limit)
    _bounded(f"{cfg}: image_seq_length", getattr(config, "image_seq_length", None), bounds.image_tokens)
    _bounded(f"{ee}: chunk_size", extra.get("chunk_size"), bounds.chunk_size)
    _bounded(f"{ee}: image_size", extra.get("image_size"), bounds.image_size)
    stats = extra["action_tokenizer"]["stats"]
    _bounded(f"{ee}: action_tokenizer action_dim (len q01)", len(stats["q01"]), bounds.action_dim)


def _check_loading_info(info: dict, path: Path) -> None:
    """Missing, unexpected or mismatched weights are an error: transformers would fill a missing
    tensor with random values (a model that loads 'OK' and drives the robot with noise)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} ({shown})")
    problems += [str(m) for m in info.get("error_msgs") or ()]
    if problems:
        weights, config = path / "model.safetensors", path / "config.json"
        raise ModelLoadError(f"{weights} does not match {config}: " + "; ".join(problems))


def _check_finite_weights(model, path: Path) -> None:
    """Every floating-point parameter and buffer must be finite: NaN weights give NaN logits."""
    bad = [
        name
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ModelLoadError(f"{path / 'model.safetensors'}: {len(bad)} tensors hold NaN or inf ({shown})")


def check_image_normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
    """(mean, std) as tuples of 3 finite floats, std > 0; a ValueError naming the field otherwise
    (a zero std turns every image into inf/NaN)."""
    out = []
    for name, v in (("image_mean", mean), ("image_std", std)):
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be 3 numbers (RGB), got {v!r}") from e
        if a.shape != (3,) or not np.isfinite(a).all():
            raise ValueError(f"{name} must be 3 finite numbers (RGB), got {v!r}")
        out.append(tuple(float(x) for x in a))
    if min(out[1]) <= 0:
        raise ValueError(f"image_std must be > 0 in every channel, got {list(std)}")
    return out[0], out[1]


def _check_safetensors(path: Path) -> None:
    """Fail with a clear message if safetensors cannot open the file or read its last tensor. The
    header, size and truncation checks are `check_model_dir`'s (`check_safetensors_header`), which
    `VLA.from_pretrained` runs first."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if not keys:
                raise ModelLoadError(f"{path} holds no tensors")
            f.get_slice(keys[-1])
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path} is not a valid safetensors file ({e})") from e
