"""VLA models: a stock Llava-family transformers network with ee_vla's tokenizers (see `vla`)."""

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
    "read_contract",
]


def create_random_vla_dir(path: str | Path, preset: str = "tiny", chunk_size: int = 3, seed: int = 0, **kwargs) -> Path:
    """Write a randomly initialised VLA of a preset to `path` (for tests, demos and benchmarks)."""
    from ee_vla.models.vla import VLA

    return VLA.create(preset, chunk_size=chunk_size, seed=seed, **kwargs).save_pretrained(path)
