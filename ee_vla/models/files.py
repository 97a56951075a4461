"""The files of a saved policy directory, checked without importing torch or transformers."""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
"""OpenVLA's prompt, ee_vla's too (`ee_vla.models.vla.prompt_text` fills it)."""
EE_VLA_FILE = "ee_vla.json"
"""ee_vla's own part of a model directory: action tokenizer, image statistics, chunk size, prompt."""
MODEL_FILES = ("config.json", "model.safetensors", EE_VLA_FILE, "tokenizer.json")
"""The files every saved policy directory holds (`VLA.save_pretrained`)."""


class ModelLoadError(RuntimeError):
    """A model directory is missing, incomplete or corrupt."""


def check_model_dir(path: str | Path, what: str = "policy path") -> Path:
    """`path` as a Path, if it is a directory with the files of a saved policy (an ee_vla model or
    an OpenVLA checkpoint); else ModelLoadError.

    Imports nothing heavy: callers (the CLI, the ROS node before it spawns its policy process) check
    a path at once instead of after torch and transformers have loaded."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{what} {path} is not a directory")
    from ee_vla.models.openvla.format import is_openvla_dir, read_openvla

    if is_openvla_dir(path):
        read_openvla(path)  # its configuration, tokenizer files and weights' headers
        return path
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(f"{what} {path} is not an ee_vla model directory: missing {', '.join(missing)}")
    for name in ("config.json", EE_VLA_FILE):
        try:
            if not isinstance(json.loads((path / name).read_text()), dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ModelLoadError(f"{path / name} is corrupt: {e}") from e
    check_safetensors_header(path / "model.safetensors")
    return path


MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors header accepted (safetensors' own limit)."""


def check_safetensors_header(path: Path) -> dict:
    """ModelLoadError if `path` is empty, truncated or not safetensors: its header (8-byte length,
    then JSON) must parse, list at least one tensor, and end within the file. Reads the header only,
    and returns its tensor entries (name -> dtype, shape, data_offsets)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise ModelLoadError(f"{path} is not a valid safetensors file ({e})") from e
    if not ends:
        raise ModelLoadError(f"{path} holds no tensors")
    if 8 + n + max(ends) > size:
        raise ModelLoadError(f"{path} is truncated: its header says {8 + n + max(ends)} bytes, the file has {size}")
    return {k: v for k, v in header.items() if k != "__metadata__"}
