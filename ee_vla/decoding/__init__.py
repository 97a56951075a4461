"""Greedy decoding of action-token chunks: AR, Jacobi and CEED over one loop (see `core`).

The names below are loaded on first use (PEP 562), so that `ee_vla.decoding.config` (and
`ee_vla.runtime`, which builds on it) import without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ee_vla.decoding.config import DecodeConfig
    from ee_vla.decoding.core import (
        DecodeState,
        DecodeStats,
        NonFiniteLogitsError,
        decode,
        iter_decode,
        token_distance,
    )

_EXPORTS = {
    "DecodeConfig": "ee_vla.decoding.config",
    "DecodeState": "ee_vla.decoding.core",
    "DecodeStats": "ee_vla.decoding.core",
    "NonFiniteLogitsError": "ee_vla.decoding.core",
    "decode": "ee_vla.decoding.core",
    "iter_decode": "ee_vla.decoding.core",
    "token_distance": "ee_vla.decoding.core",
}

__all__ = [
    "DecodeConfig",
    "DecodeState",
    "DecodeStats",
    "NonFiniteLogitsError",
    "decode",
    "iter_decode",
    "token_distance",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
