"""The compiled engine's modes and the attention backends of a `StaticEngine`'s forwards.

With `compile="inductor"` every static-shape forward (each width, each prompt bucket) first goes
through `torch.compile(dynamic=False)`: Inductor fuses the many small kernels of transformers'
eager modules (RMSNorm, rotary, SiLU-gate, residual adds, the cache writes) into a few generated
ones, which matters because a 7B forward over a short window is otherwise bound by launching and
running ~40 small kernels per layer rather than by reading the weights. The compiled forward is
then captured as the CUDA graph like the eager one. On Hopper and later GPUs Inductor's own
kernels use programmatic dependent launch (`_PDL`), which shortens the gaps between kernels in the
replayed graph (docs/performance.md, "Programmatic dependent launch").

* `compile="frozen"`: Inductor's freezing as well. The weights become constants of the generated
  code, which lets Inductor fold constant work and concatenate the projections that read the same
  input and have the same shape (q/k/v without grouped KV heads, gate/up) into one matmul each. It
  is the fastest mode measured on the 7B shape (docs/performance.md). Each compiled shape holds
  its own copy of what was folded, and later changes to the model's weights are not seen.
* `compile="max-autotune"`: Inductor also benchmarks its own Triton matmul kernels against cuBLAS
  (minutes to build per shape).
* `compile="aot_eager"`: traces the same graph but runs it without code generation (what the CPU
  tests use to check that the engine's forwards trace, cheaply).

Compilation happens in the warm-up forwards, never during a capture.

`sdpa_backends=("math",)` (any of `SDPA_BACKENDS`) runs every language-model forward of the engine under
`torch.nn.attention.sdpa_kernel`: which kernels torch's scaled-dot-product attention may pick
(compiled forwards are traced under the same setting, so Inductor lowers the attention it
allows). None leaves torch's choice. With few queries (a Jacobi window over a long prefix) the
fused attention kernels tile the queries by 64 and give each head one thread block, which on the
7B shape makes the attention a seventh of the width-22 step (docs/performance.md, "The 7B step on
an H200").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import torch

_PDL = {"triton.enable_pdl": True}
"""Programmatic dependent launch for Inductor's Triton kernels: on Hopper and later GPUs each one
starts while the kernel before it finishes and waits for its inputs inside (Inductor applies it
only on CUDA devices of compute capability 9.0 and above; elsewhere the setting does nothing).
Inductor's own environment variable turns it off: `TORCHINDUCTOR_ENABLE_PDL=0`."""


def _mode_settings(inductor_config: dict) -> dict:
    """A compile mode's `inductor_config`, less PDL where the environment says
    `TORCHINDUCTOR_ENABLE_PDL=0`."""
    settings = dict(inductor_config)
    if os.environ.get("TORCHINDUCTOR_ENABLE_PDL") == "0":
        settings.pop("triton.enable_pdl", None)
    return settings


COMPILE_MODES: dict[str, dict] = {
    "inductor": {"backend": "inductor", "inductor_config": dict(_PDL)},
    "frozen": {"backend": "inductor", "inductor_config": {"freezing": True, **_PDL}},
    "max-autotune": {"backend": "inductor", "mode": "max-autotune-no-cudagraphs", "inductor_config": dict(_PDL)},
    "aot_eager": {"backend": "aot_eager"},
}
"""`StaticEngine(compile=...)` choices and their `torch.compile` arguments (always dynamic=False:
every forward of the engine has a static shape; the engine captures its own CUDA graphs), with
`inductor_config`: `torch._inductor.config` settings in force while the forwards compile (those of
an enclosing `inductor_overrides` take precedence)."""

_OVERRIDES: dict = {}


@contextlib.contextmanager
def inductor_overrides(settings: dict):
    """`torch._inductor.config` settings (dotted keys for nested ones, e.g. `triton.enable_pdl`)
    for everything compiled inside the context, over those of the compile mode itself: how a
    benchmark tries an Inductor option, or turns one of the modes' own off, without editing code."""
    global _OVERRIDES
    import torch._inductor.config as inductor_config

    before = _OVERRIDES
    _OVERRIDES = {**before, **settings}
    try:
        with inductor_config.patch(settings) if settings else contextlib.nullcontext():
            yield
    finally:
        _OVERRIDES = before


SDPA_BACKENDS: tuple[str, ...] = ("flash", "efficient", "cudnn", "math")
"""Names of `torch.nn.attention.SDPBackend`s a `StaticEngine(sdpa_backends=...)` may allow."""


def check_sdpa_backends(backends: Sequence[str] | None, owner: str) -> tuple[str, ...] | None:
    """`backends` as a tuple (None stays None); ValueError naming `owner` for an empty list or an
    unknown name."""
    if backends is None:
        return None
    backends = tuple(backends)
    bad = [b for b in backends if b not in SDPA_BACKENDS]
    if not backends or bad:
        raise ValueError(f"{owner} must be a non-empty list of {'|'.join(SDPA_BACKENDS)}, got {list(backends)}")
    return backends


def _sdpa_context(backends: tuple[str, ...] | None):
    """The `sdpa_kernel` context allowing `backends` (a null context for None)."""
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([names[b] for b in backends])


def check_compile_mode(mode: str, owner: str) -> None:
    """Raise ValueError naming `owner` (e.g. "PolicyConfig.compile_mode") unless `mode` is a key of
    `COMPILE_MODES`: the one check behind every option that picks the compiled engine's mode."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"{owner} must be one of {'|'.join(COMPILE_MODES)}, got {mode!r}")


_RECOMPILE_LIMIT = 64
"""Static shapes compiled per model code object: widths x prompt buckets x batch sizes of every
engine (torch's default, 8, would silently fall back to eager forwards past it)."""


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < _RECOMPILE_LIMIT:
            setattr(dynamo_config, name, _RECOMPILE_LIMIT)
            return


def _within(fn, context):
    """`fn` run inside a fresh `context()` at every call. The engine wraps its (compiled) forward
    in the contexts its forwards need: Inductor's settings (a compilation happens inside the first
    call of each shape, so that is where they must be in force; some of them, freezing among them,
    are not read from `torch.compile(options=...)`) and the attention backends (outside the
    compiled function, so Dynamo traces the attention with the backends they allow and never has
    to trace the context itself)."""

    def run(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    return run


def model_logits(eager: Callable, compile: str | None, sdpa_backends: tuple[str, ...] | None) -> Callable:
    """`eager` (the engine's forward) as the engine runs it: through `torch.compile` with
    `COMPILE_MODES[compile]` (its Inductor settings in force at every call) when `compile` is not
    None, then inside the `sdpa_backends` context when that is not None."""
    fn = eager
    if compile is not None:
        _raise_recompile_limit()
        kwargs = dict(COMPILE_MODES[compile])
        settings = _mode_settings(kwargs.pop("inductor_config", {}))
        compiled = torch.compile(eager, dynamic=False, **kwargs)
        if settings:
            import torch._inductor.config as inductor_config

            compiled = _within(compiled, lambda: inductor_config.patch({**settings, **_OVERRIDES}))
        fn = compiled
    if sdpa_backends is not None:
        fn = _within(fn, lambda: _sdpa_context(sdpa_backends))
    return fn
