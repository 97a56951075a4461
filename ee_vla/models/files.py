"""The files of a saved policy directory, checked without importing torch or transformers."""

from __future__ import annotations

from pathlib import Path

EE_VLA_FILE = "ee_vla.json"
"""ee_vla's own part of a model directory: action tokenizer, image statistics, chunk size, prompt."""
MODEL_FILES = ("config.json", "model.safetensors", EE_VLA_FILE, "tokenizer.json")
"""The files every saved policy directory holds (`VLA.save_pretrained`)."""


class ModelLoadError(RuntimeError):
    """A model directory is missing, incomplete or corrupt."""


def check_model_dir(path: str | Path) -> Path:
    """`path` as a Path, if it is a directory with the files of a saved policy; else ModelLoadError.

    Imports nothing heavy: callers (the CLI, the ROS node before it spawns its policy process) check
    a path at once instead of after torch and transformers have loaded."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"policy path {path} is not a directory")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(f"{path} is not an ee_vla model directory: missing {', '.join(missing)}")
    return path
