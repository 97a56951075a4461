"""Tiny random causal LMs (float64, so argmax ties cannot flip between window shapes), built by the
same helper the GPU exactness check uses."""

import functools

from ee_vla.engine.check import TINY_VOCAB as VOCAB
from ee_vla.engine.check import tiny_lm as _tiny_lm

__all__ = ["VOCAB", "tiny_lm"]


@functools.cache
def tiny_lm(arch: str, seed: int):
    return _tiny_lm(arch, seed)
