"""Greedy decoding of action-token chunks: AR, Jacobi and CEED over one loop (see `core`)."""

from ee_vla.decoding.config import DecodeConfig
from ee_vla.decoding.core import (
    DecodeState,
    DecodeStats,
    NonFiniteLogitsError,
    decode,
    iter_decode,
    token_distance,
)

__all__ = [
    "DecodeConfig",
    "DecodeState",
    "DecodeStats",
    "NonFiniteLogitsError",
    "decode",
    "iter_decode",
    "token_distance",
]
