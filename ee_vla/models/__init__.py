"""VLA models: a stock Llava-family transformers network with ee_vla's tokenizers (see `vla`), and
OpenVLA-format checkpoints loaded natively (see `openvla`)."""

from __future__ import annotations

from pathlib import Path

from ee_vla.models.contract import ModelContract, read_contract
from ee_vla.models.files import EE_VLA_FILE, MODEL_FILES, ModelLoadError, check_model_dir

__all__ = [
    "EE_VLA_FILE",
    "MODEL_FILES",
    "ModelContract",
    "ModelLoadError",
    "check_model_dir",
    "create_random_vla_dir",
    "load_vla",
    "read_contract",
]


def create_random_vla_dir(path: str | Path, preset: str = "tiny", chunk_size: int = 3, seed: int = 0, **kwargs) -> Path:
    """Write a randomly initialised VLA of a preset to `path` (for tests, demos and benchmarks)."""
    from ee_vla.models.vla import VLA

    return VLA.create(preset, chunk_size=chunk_size, seed=seed, **kwargs).save_pretrained(path)


def load_vla(path: str | Path, device="cpu", dtype=None, unnorm_key: str | None = None, chunk_size: int | None = None):
    """The VLA saved in `path`: an ee_vla model directory (`VLA.from_pretrained`) or an OpenVLA
    checkpoint (`OpenVLA.from_pretrained`, with `unnorm_key` and `chunk_size`, default its own). An ee_vla
    model's chunk size and action statistics are its own: a different `chunk_size`, or an
    `unnorm_key`, is a ValueError."""
    from ee_vla.models.openvla.format import is_openvla_dir

    if is_openvla_dir(path):
        from ee_vla.models.openvla import OpenVLA

        return OpenVLA.from_pretrained(path, device=device, dtype=dtype, unnorm_key=unnorm_key, chunk_size=chunk_size)
    if unnorm_key is not None:
        raise ValueError(f"unnorm_key applies to OpenVLA checkpoints; {path} is an ee_vla model (own statistics)")
    from ee_vla.models.vla import VLA

    vla = VLA.from_pretrained(path, device=device, dtype=dtype)
    if chunk_size is not None and chunk_size != vla.chunk_size:
        raise ValueError(f"chunk_size {chunk_size}: {path} was trained to emit chunks of {vla.chunk_size} actions")
    return vla
