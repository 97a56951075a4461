"""Pick the decode engine by name: one `prefill` callable with `HFStep.prefill`'s signature.

    prefill = make_prefill("auto", model, max_new_tokens=21)       # graph on CUDA, eager otherwise
    step, first_logits, seconds = prefill(model, input_ids, attention_mask, pixel_values=px)

* ``eager``: `HFStep.prefill` (transformers DynamicCache, eager forwards): the reference.
* ``static``: `StaticEngine` without CUDA graphs (same padded static-shape forwards, any device).
* ``graph``: `StaticEngine` with one CUDA graph per window width (CUDA only).
* ``compiled``: `StaticEngine` whose forwards are compiled by `torch.compile` (Inductor), captured
  as CUDA graphs on CUDA; on the CPU the compiled forwards run without graphs. Building it costs
  a compilation per window width and prompt bucket (seconds for the `small` VLA, a minute or more
  for a 7B), paid at the first call of each shape.
* ``auto``: ``graph`` when the device is CUDA, ``eager`` otherwise.

A `StaticEngine` has a fixed batch size and prompt capacity; `EnginePool` keeps one engine per
batch size and rebuilds it (recapturing its graphs, seconds) when a longer prompt arrives.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from ee_vla.engine.cache import _round_up
from ee_vla.engine.static import StaticEngine, StaticStep, check_sdpa_backends
from ee_vla.runtime import ENGINES, EngineKind

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineKind", "EnginePool", "Prefill", "make_prefill", "resolve_engine"]

Prefill = Callable[..., tuple[Callable[[torch.Tensor, int], torch.Tensor], torch.Tensor, float]]


def resolve_engine(kind: str, device: str | torch.device) -> Literal["eager", "static", "graph", "compiled"]:
    """The concrete engine for `kind` on `device` (``auto``: graph on CUDA, eager otherwise)."""
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {'|'.join(ENGINES)}, got {kind!r}")
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if kind == "auto":
        return "graph" if on_cuda else "eager"
    if kind == "graph" and not on_cuda:
        raise ValueError(f"engine='graph' needs a CUDA device with CUDA available, got device {device!r}")
    return kind  # type: ignore[return-value]


class EnginePool:
    """`prefill(model, input_ids, attention_mask=None, **extra)` over `StaticEngine`s, one per batch
    size (fixed shapes per engine), grown when a prompt exceeds an engine's capacity.

    Args:
        model: the model every call must pass (checked: an engine is bound to one model).
        max_new_tokens: longest chunk decoded per call (the engine's widths cover every decoder).
        graphs: capture CUDA graphs (``graph`` engine) or run the static forwards eagerly.
        compile: None or a `StaticEngine` compile mode (``compiled`` engine: "inductor").
        sdpa_backends: None or the attention backends of every engine (`StaticEngine`).
        logit_rows: None or the (lo, hi) ids whose logits decode steps compute (`StaticEngine`).
        widths: window widths of each engine (None: `StaticEngine`'s default, 1 and n - 1).
        prompt_headroom: extra prompt slots allocated beyond the first prompt seen (rounded up
            to a multiple of 64), so that instructions of varying length reuse the engine.
        max_engines: engines kept at once (least recently used released first; a vectorised
            evaluation decodes every batch size from 1 to its number of envs).
    """

    def __init__(
        self,
        model,
        max_new_tokens: int,
        *,
        graphs: bool,
        widths: Sequence[int] | None = None,
        prompt_headroom: int = 32,
        max_engines: int = 8,
        compile: str | None = None,
        sdpa_backends: Sequence[str] | None = None,
        logit_rows: tuple[int, int] | None = None,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"EnginePool max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.graphs = graphs
        self.compile = compile
        self.sdpa_backends = check_sdpa_backends(sdpa_backends, "EnginePool sdpa_backends")
        self.logit_rows = logit_rows
        self.widths = None if widths is None else tuple(widths)
        self.prompt_headroom = prompt_headroom
        self.max_engines = max_engines
        self.engines: OrderedDict[int, StaticEngine] = OrderedDict()
        self.setup_s = 0.0
        """Seconds this pool has spent on one-time work inside its calls: building engines (their
        CUDA-graph captures, compilation) and capturing new prompt buckets. A timed caller
        subtracts the increase over a call (`ee-vla eval` does, and reports it as `setup_s`)."""

    def engine(self, batch_size: int, prompt_len: int) -> StaticEngine:
        """The engine for this batch size, (re)built when missing or too small for the prompt."""
        eng = self.engines.get(batch_size)
        if eng is not None and prompt_len <= eng.max_prompt_len:
            self.engines.move_to_end(batch_size)
            return eng
        if eng is not None:
            log.info("prompt of %d tokens exceeds the engine's %d: rebuilding it", prompt_len, eng.max_prompt_len)
            del self.engines[batch_size]
            eng.release()
        while len(self.engines) >= self.max_engines:
            _, old = self.engines.popitem(last=False)
            old.release()  # its graphs are freed now, never by the garbage collector during a capture
        t = time.perf_counter()
        eng = StaticEngine(
            self.model,
            batch_size=batch_size,
            max_prompt_len=_round_up(prompt_len + self.prompt_headroom, 64),
            max_new_tokens=self.max_new_tokens,
            widths=self.widths,
            graphs=self.graphs,
            compile=self.compile,
            sdpa_backends=self.sdpa_backends,
            logit_rows=self.logit_rows,
        )
        self.engines[batch_size] = eng
        self.setup_s += time.perf_counter() - t
        return eng

    def __call__(
        self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra
    ) -> tuple[StaticStep, torch.Tensor, float]:
        """Same contract as `HFStep.prefill(model, input_ids, attention_mask, window=None, **extra)`."""
        if model is not self.model:
            raise ValueError("this engine pool was built for another model")
        B, P = input_ids.shape
        eng = self.engine(B, P)
        before = eng.setup_s
        try:
            return eng.prefill(input_ids, attention_mask, **extra)
        finally:
            self.setup_s += eng.setup_s - before


def make_prefill(
    kind: str,
    model,
    max_new_tokens: int,
    *,
    device: str | torch.device | None = None,
    widths: Sequence[int] | None = None,
    compile_mode: str = "inductor",
    sdpa_backends: Sequence[str] | None = None,
    logit_rows: tuple[int, int] | None = None,
) -> Prefill:
    """A prefill callable for engine `kind` (see module docstring). `device` defaults to the
    model's; `max_new_tokens` is the chunk length (tokens) the policy decodes; `compile_mode` is
    the ``compiled`` engine's (`ee_vla.engine.static.COMPILE_MODES`); `sdpa_backends` the attention
    kernels a static engine's forwards may use (`StaticEngine`; None: torch's choice, and the
    only value the ``eager`` engine takes); `logit_rows` the (lo, hi) ids whose logits a static
    engine's decode steps compute (`StaticEngine`; the eager engine computes all)."""
    from ee_vla.decoding.hf import HFStep

    kind = resolve_engine(kind, device if device is not None else next(model.parameters()).device)
    if kind == "eager":
        if sdpa_backends is not None:
            raise ValueError("sdpa_backends applies to the static, graph and compiled engines, not eager")
        return HFStep.prefill
    compiled = kind == "compiled"  # compiled: with CUDA graphs on a GPU, compiled forwards alone elsewhere
    return EnginePool(
        model,
        max_new_tokens,
        graphs=next(model.parameters()).device.type == "cuda" if compiled else kind == "graph",
        widths=widths,
        compile=compile_mode if compiled else None,
        sdpa_backends=sdpa_backends,
        logit_rows=logit_rows,
    )
