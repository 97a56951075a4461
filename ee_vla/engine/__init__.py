"""Decode engines: the eager `HFStep` reference, and a static-KV-cache step replayed as CUDA graphs.

`make_prefill(kind, model, max_new_tokens)` returns a callable with `HFStep.prefill`'s contract, so
the one decode loop (`ee_vla.decoding.core.iter_decode`) drives every engine unchanged.
`ee_vla.benchmarks.profile` measures them (`python -m ee_vla.benchmarks.profile --help`).
"""

from ee_vla.engine.factory import ENGINES, EngineKind, EnginePool, make_prefill, resolve_engine
from ee_vla.engine.static import StaticEngine, StaticStep

__all__ = ["ENGINES", "EngineKind", "EnginePool", "StaticEngine", "StaticStep", "make_prefill", "resolve_engine"]
