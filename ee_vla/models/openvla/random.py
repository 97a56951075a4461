"""A randomly initialised OpenVLA of the real shapes, for benchmarks: no checkpoint to download.

    vla = random_openvla("7b", tokenizer_dir, device="cuda", dtype=torch.bfloat16)

`7b` is openvla-7b's network: DINOv2 ViT-L/14 with 4 registers and SigLIP So400m/14 at 224 px,
the fused 3-layer projector and Llama-2-7B; `tiny` the same layout at toy sizes. The tokenizer
(any Llama-2 vocabulary of 32000 ids, with "▁" at 29871) comes from `tokenizer_dir`. Weights are
drawn from N(0, 0.02) (norm scales 1, layer scales 1e-5, biases 0), so the decoded actions mean
nothing; the shapes, and hence the time, are those of the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ee_vla.models.openvla.format import ImageTransform, OpenVLAFormat, TowerSpec

_IMAGENET = ImageTransform(224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ImageTransform(224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

SIZES = {
    "7b": dict(
        towers=(
            TowerSpec("vit_large_patch14_reg4_dinov2.lvd142m", "dinov2", 224, 14, 1024, 24, 16, 4.0, 4),
            TowerSpec("vit_so400m_patch14_siglip_224", "siglip", 224, 14, 1152, 27, 16, 4304 / 1152),
        ),
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    ),
    "tiny": dict(
        towers=(
            TowerSpec("vit_large_patch14_reg4_dinov2.lvd142m", "dinov2", 224, 14, 32, 3, 2, 4.0, 4),
            TowerSpec("vit_so400m_patch14_siglip_224", "siglip", 224, 14, 48, 3, 3, 4.0),
        ),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    ),
}
"""Network sizes by name."""


def openvla_format(size: str) -> OpenVLAFormat:
    """The `OpenVLAFormat` of a random model of `size` (no files: `weight_files` is empty)."""
    if size not in SIZES:
        raise ValueError(f"unknown OpenVLA size {size!r}: choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    text = dict(
        model_type="llama",
        vocab_size=32064,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        pad_token_id=32000,
        **s["text"],
    )
    stats = {"q01": [-0.03] * 6 + [0.0], "q99": [0.03] * 6 + [1.0], "mask": [True] * 6 + [False]}
    return OpenVLAFormat(
        path=Path(f"<random openvla-{size}>"),
        vision_backbone_id="dinosiglip-vit-so-224px",
        towers=s["towers"],
        projector_layers=3,
        resize_strategy="resize-naive",
        transforms=(_IMAGENET, _HALF),
        letterbox_fill=(127, 127, 127),
        text_config=text,
        norm_stats={"random": {"action": stats}},
        n_action_bins=256,
        pad_to_multiple_of=64,
        pad_token_id=32000,
        weight_files=(),
    )


@torch.no_grad()
def random_openvla(
    size: str,
    tokenizer_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 1,
    seed: int = 0,
):
    """An `OpenVLA` of `size` with random weights on `device` (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    from ee_vla.models.openvla.model import OpenVLA
    from ee_vla.models.openvla.network import _rebuild_buffers, build_network

    fmt = openvla_format(size)
    net = build_network(fmt).to(dtype).to_empty(device=device)  # allocated once, in `dtype`
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif "lambda1" in name:
            p.fill_(1e-5)
        elif p.ndim == 1 or "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    _rebuild_buffers(net, device)
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    if len(tok) < fmt.vocab_size or tok.convert_ids_to_tokens(29871) != "▁":
        raise ValueError(f"{tokenizer_dir}: not a Llama-2 tokenizer (32000 ids, '▁' at 29871)")
    return OpenVLA(net.eval(), tok, fmt, chunk_size=chunk_size)
