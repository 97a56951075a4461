"""The static-shape decode step: a preallocated KV cache for prompt + window, replayed as CUDA graphs.

`StaticEngine(model, batch_size=..., max_prompt_len=..., max_new_tokens=...)` allocates, once, a KV
cache of `capacity = max_prompt_len + max_new_tokens + max(widths)` slots per layer and, for every
window width in `widths` (default: 1 for AR and `max_new_tokens - 1` for a whole Jacobi window),
static input buffers (token ids; the window's start, from which the forward computes its position
ids and cache slots). `engine.prefill(input_ids,
attention_mask, **extra)` mirrors `HFStep.prefill`: it runs the prompt into slots 0 .. P-1 and
returns `(step, first_logits, seconds)`, where `step(tokens, start)` is the same protocol that
`ee_vla.decoding.core.iter_decode` drives.

Why the static step gives the eager step's tokens:

* Slots. Generated position p lives at slot P + p (P = padded prompt length of this prefill). A
  step writes its L tokens at slots P+start .. P+start+L-1 and overwrites whatever was there.
* Masks. Every forward gets an explicit 4-D additive mask over all `capacity` slots: query at slot
  q sees key slot k iff k <= q and k is not a prompt padding slot. Entries left over from earlier
  iterations (or from the padding of the window) sit at slots > q of every real query, so they
  are masked by causality: the cache never needs to be cropped, which is what `HFStep` does with a
  DynamicCache (`crop` to P + start) and what makes the shapes static.
* Padding of the window. A call with L tokens runs the smallest captured width w >= L; the w - L
  padded inputs come after the real ones, so no real query sees them (causality again), and their
  outputs are dropped. Their KV entries land above the real ones and are masked later.
* Positions. Position ids are `valid_len + start + j`, exactly `HFStep`'s, so a left-padded
  sample decodes as it would alone.
* Prompt buckets. A prompt of P tokens is left-padded further, to a multiple of `prefill_bucket`
  (masked padding, positions from the attention mask as in `HFStep`), so that prompts of nearby
  lengths share one static prefill shape. A Llava-style VLA's prompt with `pixel_values` is bucketed
  too: the engine runs the vision tower itself and puts the image features in place of the
  placeholder embeddings with a gather (transformers' own merge counts the placeholders on the host,
  which a graph cannot hold; the engine checks that count outside the forward). Prompts with any
  other extra inputs run eagerly at their own length.

With `graphs=True` (CUDA only) each width is captured once as a `torch.cuda.CUDAGraph` whose
inputs are the static buffers (and each prompt bucket, lazily, at its first prefill): a step is
then a few device copies into them and one replay, with no per-layer kernel launches from Python.
Without graphs the very same buffers and padded forwards run eagerly, which is what the CPU tests
check against `HFStep` (the graph only replays them).

With `compile="inductor"` every static-shape forward (each width, each prompt bucket) first goes
through `torch.compile(dynamic=False)`: Inductor fuses the many small kernels of transformers'
eager modules (RMSNorm, rotary, SiLU-gate, residual adds, the cache writes) into a few generated
ones, which matters because a 7B forward over a short window is otherwise bound by launching and
running ~40 small kernels per layer rather than by reading the weights. The compiled forward is
then captured as the CUDA graph like the eager one.

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

Nothing in transformers is patched: the cache is a `transformers.Cache` of our own layers.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ee_vla.decoding.hf import prompt_positions
from ee_vla.timing import cuda_ms_back_to_back, synchronize

log = logging.getLogger(__name__)

COMPILE_MODES: dict[str, dict] = {
    "inductor": {"backend": "inductor"},
    "frozen": {"backend": "inductor", "inductor_config": {"freezing": True}},
    "max-autotune": {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"},
    "aot_eager": {"backend": "aot_eager"},
}
"""`StaticEngine(compile=...)` choices and their `torch.compile` arguments (always dynamic=False:
every forward of the engine has a static shape; the engine captures its own CUDA graphs), with
`inductor_config`: `torch._inductor.config` settings in force while the forwards compile."""


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


class _Slots:
    """The cache slots written by the forward that is running now (shared by all layers)."""

    def __init__(self, index: torch.Tensor):
        self.index = index


class SlotLayer(CacheLayerMixin):
    """One layer's preallocated keys and values (batch, kv_heads, capacity, head_dim).

    `update` writes the new entries at the slots in `slots.index` (set by the engine before each
    forward; a static buffer while a CUDA graph is captured) and returns the whole cache: the mask
    decides what each query sees.
    """

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: _Slots):
        super().__init__()
        self.keys, self.values, self.slots = keys, values, slots
        self.max_cache_len = keys.shape[2]
        self.dtype, self.device = keys.dtype, keys.device
        self.batch_size, self.num_heads = keys.shape[:2]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the tensors are allocated up front (their addresses must never change)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        idx = self.slots.index
        if (
            key_states.shape[2] != idx.shape[0]
            or key_states.shape[:2] != self.keys.shape[:2]
            or (key_states.shape[-1] != self.keys.shape[-1] or value_states.shape[-1] != self.values.shape[-1])
        ):
            raise ValueError(
                f"KV states of shape {tuple(key_states.shape)} do not fit a static cache of shape "
                f"{tuple(self.keys.shape)} written at {idx.shape[0]} slots"
            )
        self.keys.index_copy_(2, idx, key_states.to(self.dtype))
        self.values.index_copy_(2, idx, value_states.to(self.dtype))
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_seq_length(self) -> int:
        """0: the engine always passes explicit position ids and masks, nothing reads a length."""
        return 0

    def get_max_length(self) -> int:
        return self.max_cache_len


@dataclass
class _WidthBuffers:
    """Static inputs of one window width (their addresses are baked into its CUDA graph). Its
    position ids and cache slots are computed inside the forward from the engine's `_start`,
    `_pos_base` and `_slot_base`, so that a step copies in only its tokens and its start."""

    ids: torch.Tensor  # (B, w) token ids
    arange: torch.Tensor  # (w,) 0 .. w-1


@dataclass
class _PromptBuffers:
    """Static inputs of one prompt bucket (length Pb)."""

    ids: torch.Tensor  # (B, Pb) token ids, left-padded
    mask: torch.Tensor  # (B, Pb) attention mask (long)
    positions: torch.Tensor  # (B, Pb) position ids
    slots: torch.Tensor  # (Pb,) 0 .. Pb-1
    pixels: torch.Tensor | None = None  # (B, C, H, W) images of a VLA prompt


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class StaticEngine:
    """A fixed-batch decode engine over one preallocated KV cache (optionally CUDA-graph replayed).

    Args:
        model: a transformers causal LM or Llava-style VLA (all-global attention: no sliding
            window layers), on its device, in eval mode.
        batch_size: rows of every prefill (fixed: the graphs have static shapes).
        max_prompt_len: longest padded prompt a prefill may bring.
        max_new_tokens: longest chunk decoded after a prefill (n_tokens of `iter_decode`).
        widths: window widths to build (a call of L tokens runs the smallest width >= L); default
            (1, max_new_tokens - 1): AR and a whole Jacobi window, which covers every DecodeConfig.
        graphs: capture one CUDA graph per width (default: when the model is on CUDA).
        prefill_bucket: prompts without extra inputs are left-padded to a multiple of this (at most
            max_prompt_len) and, with graphs, each bucket's prefill is captured at its first use;
            None: every prefill runs eagerly at the prompt's own length.
        warmup: eager forwards per width before its capture (cuBLAS/allocator initialisation).
        compile: None (transformers' eager modules) or a key of `COMPILE_MODES`: run every
            static-shape forward through `torch.compile` (see the module docstring).
        sdpa_backends: None (torch's choice) or names from `SDPA_BACKENDS`: the attention kernels
            the language model's forwards may use (see the module docstring).
        logit_rows: None, or the inclusive (lo, hi) token ids whose logits the decode steps
            compute: the output layer multiplies only those rows of its weight, and every other
            id's logit is the dtype's minimum. For action decoding, whose argmax reads only the
            action tokens (`iter_decode(action_range=...)`): OpenVLA's 256 of 32064 ids, 1/125 of
            the output layer's weights. The prefill computes every logit.
    """

    def __init__(
        self,
        model,
        *,
        batch_size: int,
        max_prompt_len: int,
        max_new_tokens: int,
        widths: Sequence[int] | None = None,
        graphs: bool | None = None,
        prefill_bucket: int | None = 16,
        warmup: int = 2,
        compile: str | None = None,
        sdpa_backends: Sequence[str] | None = None,
        logit_rows: tuple[int, int] | None = None,
    ):
        sdpa_backends = check_sdpa_backends(sdpa_backends, "StaticEngine sdpa_backends")
        if batch_size < 1:
            raise ValueError(f"StaticEngine batch_size must be >= 1, got {batch_size}")
        if max_prompt_len < 1:
            raise ValueError(f"StaticEngine max_prompt_len must be >= 1, got {max_prompt_len}")
        if max_new_tokens < 1:
            raise ValueError(f"StaticEngine max_new_tokens must be >= 1, got {max_new_tokens}")
        widths = sorted(set(widths if widths is not None else (1, max(1, max_new_tokens - 1))))
        if not widths or widths[0] < 1:
            raise ValueError(f"StaticEngine widths must be >= 1, got {widths}")
        if compile is not None and compile not in COMPILE_MODES:
            raise ValueError(f"StaticEngine compile must be None or one of {'|'.join(COMPILE_MODES)}, got {compile!r}")
        if prefill_bucket is not None and prefill_bucket < 1:
            raise ValueError(f"StaticEngine prefill_bucket must be >= 1 or None, got {prefill_bucket}")
        text = model.config.get_text_config(decoder=True)
        layer_types = getattr(text, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types) or getattr(text, "use_sliding_window", False):
            raise NotImplementedError(
                f"StaticEngine supports global attention only; this model has layers {layer_types}"
            )
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        if graphs is None:
            graphs = self.device.type == "cuda"
        if graphs and self.device.type != "cuda":
            raise ValueError(f"StaticEngine graphs=True needs a CUDA model, the model is on {self.device}")
        self.batch_size, self.max_prompt_len, self.max_new_tokens = batch_size, max_prompt_len, max_new_tokens
        self.widths = widths
        self.capacity = max_prompt_len + max_new_tokens + widths[-1]
        self.uses_graphs = graphs
        self.prefill_bucket = prefill_bucket
        self._warmup = warmup
        self.compile = compile
        self.sdpa_backends = sdpa_backends
        self.logit_rows = self._check_logit_rows(model, logit_rows)
        self._model_logits = self._eager_logits
        if compile is not None:
            _raise_recompile_limit()
            kwargs = dict(COMPILE_MODES[compile])
            settings = kwargs.pop("inductor_config", None)
            compiled = torch.compile(self._eager_logits, dynamic=False, **kwargs)
            if settings:
                import torch._inductor.config as inductor_config

                compiled = _within(compiled, lambda: inductor_config.patch(settings))
            self._model_logits = compiled
        if sdpa_backends is not None:
            self._model_logits = _within(self._model_logits, lambda: _sdpa_context(sdpa_backends))
        n_layers = text.num_hidden_layers
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self._min = torch.finfo(self.dtype).min
        # A Llava-style VLA: its image placeholder id (its prompts with pixel_values are bucketed too)
        image_token = getattr(model.config, "image_token_id", None)
        if image_token is None:
            image_token = getattr(model.config, "image_token_index", None)
        self._image_token = image_token if hasattr(model, "get_image_features") else None
        self._image_tokens: int | None = None  # image features per image, known after the first image prefill
        self._image_graph_failed = False  # a failed capture of an image prefill: those run without a graph
        self._generation = 0
        self._released = False
        self.captured_s = 0.0
        self.setup_s = 0.0  # seconds spent capturing prompt buckets' graphs since construction (one-time work)
        with torch.inference_mode():
            dev = self.device
            self._slots = _Slots(torch.arange(1, device=dev))
            shape = (batch_size, kv_heads, self.capacity, head_dim)
            self.cache = Cache(
                layers=[
                    SlotLayer(
                        torch.zeros(shape, dtype=self.dtype, device=dev),
                        torch.zeros(shape, dtype=self.dtype, device=dev),
                        self._slots,
                    )
                    for _ in range(n_layers)
                ]
            )
            self._kidx = torch.arange(self.capacity, device=dev)
            self._key_ok = torch.ones(batch_size, self.capacity, dtype=torch.bool, device=dev)
            # A step's window starts at generated position `_start`: its position ids are
            # `_pos_base + _start + j` (`_pos_base`: each sample's real prompt length) and its cache
            # slots `_slot_base + _start + j` (`_slot_base`: the padded prompt length). The prefill
            # sets the bases, a step sets `_start`; the forward (and its graph) computes the rest.
            self._start = torch.zeros(1, dtype=torch.long, device=dev)
            self._pos_base = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
            self._slot_base = torch.full((1,), max_prompt_len, dtype=torch.long, device=dev)
            self._buffers = {
                w: _WidthBuffers(
                    ids=torch.zeros(batch_size, w, dtype=torch.long, device=dev), arange=torch.arange(w, device=dev)
                )
                for w in widths
            }
            self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
            self._prompts: dict[int, _PromptBuffers] = {}
            self._prompt_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
            if graphs:
                self._capture(warmup)

    # ---- forward over the static buffers -------------------------------------------------------
    def _mask(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, 1, len(slots), capacity) additive mask: a query at slot q sees key slots k <= q that
        are not prompt padding. A padding query also sees itself, so that no row is fully masked
        (a fully masked row can turn into NaN, which would then leak through 0 * NaN into the
        attention of real queries); real queries never see padding keys."""
        k, q = self._kidx[None, None, None, :], slots[None, None, :, None]
        allowed = (k <= q) & (self._key_ok[:, None, None, :] | (k == q))
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, self._min)

    @staticmethod
    def _check_logit_rows(model, rows: tuple[int, int] | None) -> tuple[int, int] | None:
        if rows is None:
            return None
        head = model.get_output_embeddings()
        if head is None or not hasattr(model, "model") or not isinstance(head, torch.nn.Linear):
            raise ValueError("StaticEngine logit_rows needs a model with a `model` backbone and a Linear output layer")
        lo, hi = (int(r) for r in rows)
        if not 0 <= lo <= hi < head.out_features:
            raise ValueError(f"StaticEngine logit_rows must be 0 <= lo <= hi < {head.out_features}, got {rows}")
        return lo, hi

    def _eager_logits(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, rows_only: bool = False, **extra
    ) -> torch.Tensor:
        """The model's forward over the static cache (compiled when the engine compiles). With
        `rows_only`, the backbone and only `logit_rows` of the output layer (see `logit_rows`)."""
        if not rows_only:
            return self._model_forward(input_ids=ids, attention_mask=mask, position_ids=positions, **extra).logits
        hidden = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True
        ).last_hidden_state
        head = self.model.get_output_embeddings()
        lo, hi = self.logit_rows
        bias = None if head.bias is None else head.bias[lo : hi + 1]
        part = torch.nn.functional.linear(hidden, head.weight[lo : hi + 1], bias)
        logits = part.new_full((*part.shape[:-1], head.out_features), self._min)
        logits[..., lo : hi + 1] = part
        return logits

    def _model_forward(self, **kwargs):
        """`self.model(**kwargs)` over the engine's cache."""
        return self.model(past_key_values=self.cache, use_cache=True, **kwargs)

    def _buffer_forward(self, buf, **extra) -> torch.Tensor:
        """One forward of a set of static buffers (what a CUDA graph captures): logits."""
        self._slots.index = buf.slots
        return self._model_logits(buf.ids, self._mask(buf.slots), buf.positions, **extra)

    def _forward(self, width: int) -> torch.Tensor:
        """One step over the width-`width` buffers; (B, w, V) logits."""
        buf = self._buffers[width]
        at = self._start + buf.arange
        slots = self._slot_base + at
        self._slots.index = slots
        return self._model_logits(
            buf.ids, self._mask(slots), self._pos_base + at, rows_only=self.logit_rows is not None
        )

    def _prompt_forward(self, length: int) -> torch.Tensor:
        """The prefill of the bucket-`length` buffers; (B, 1, V) logits of the last position."""
        buf = self._prompts[length]
        if buf.pixels is None:
            return self._buffer_forward(buf, logits_to_keep=1)
        # A VLA prompt: the image features replace the placeholder embeddings in order (what Llava's
        # masked_scatter does), as a gather with no host-side count, so that a graph can hold it.
        m = self.model
        B, Pb = buf.ids.shape
        embeds = m.get_input_embeddings()(buf.ids)
        feats = torch.cat(list(m.get_image_features(pixel_values=buf.pixels, return_dict=True).pooler_output), 0)
        self._image_tokens = feats.shape[0] // B  # a shape, not a value: nothing is read on the host
        is_image = buf.ids == self._image_token
        idx = (is_image.reshape(-1).cumsum(0) - 1).clamp_(0, feats.shape[0] - 1)
        merged = torch.where(is_image.unsqueeze(-1), feats.to(embeds.dtype)[idx].view(B, Pb, -1), embeds)
        self._slots.index = buf.slots
        return self._model_logits(None, self._mask(buf.slots), buf.positions, inputs_embeds=merged, logits_to_keep=1)

    def _graph_of(self, forward) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture `forward()` as a CUDA graph, after `warmup` eager runs on a side stream (the
        PyTorch recipe). The cache entries written meanwhile are junk: every later prefill and step
        overwrites or masks them.

        Python's cyclic garbage collector is off from the warm-up to the end of the capture (after
        one collection): an engine dropped earlier (e.g. evicted from an `EnginePool`) is only freed
        by it, and freeing its graphs while a stream captures invalidates the capture."""
        if self._released:
            raise RuntimeError("this StaticEngine was released")
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            torch.cuda.synchronize(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(max(1, self._warmup)):
                    forward()
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = forward()
            torch.cuda.synchronize(self.device)
        finally:
            if was_enabled:
                gc.enable()
        return graph, out

    def release(self) -> None:
        """Free the CUDA graphs, the cache and the buffers now (not whenever the garbage collector
        gets to this engine); its steps and prefills raise afterwards."""
        if self._released:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for graph, _ in [*self._graphs.values(), *self._prompt_graphs.values()]:
            reset = getattr(graph, "reset", None)
            if reset is not None:
                reset()
        self._graphs.clear()
        self._prompt_graphs.clear()
        self._prompts.clear()
        self._buffers.clear()
        self.cache = None
        self._released = True

    def _capture(self, warmup: int) -> None:
        """Capture one CUDA graph per window width."""
        t = time.perf_counter()
        for w in self.widths:
            self._graphs[w] = self._graph_of(lambda w=w: self._forward(w))
        self.captured_s = time.perf_counter() - t
        log.info(
            "captured CUDA graphs for widths %s (batch %d, %d cache slots%s) in %.2f s",
            self.widths,
            self.batch_size,
            self.capacity,
            f", compiled by {self.compile}" if self.compile else "",
            self.captured_s,
        )

    # ---- the step protocol -------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra
    ) -> tuple[StaticStep, torch.Tensor, float]:
        """Run the prompt into cache slots 0 .. P-1; returns (step, first_logits (B, V), seconds).
        Mirrors `HFStep.prefill`: left padding allowed, `extra` goes to the model (e.g.
        `pixel_values`). A new prefill invalidates the previous prefill's step."""
        t = time.perf_counter()
        B, P = input_ids.shape
        if self._released:
            raise RuntimeError("this StaticEngine was released (e.g. evicted from its EnginePool)")
        if B != self.batch_size:
            raise ValueError(f"this StaticEngine decodes batches of {self.batch_size}, got a batch of {B}")
        if P > self.max_prompt_len:
            raise ValueError(f"prompt of {P} tokens exceeds the engine's max_prompt_len={self.max_prompt_len}")
        dev = self.device
        input_ids = input_ids.to(dev)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(dev).long()
        images = self._image_token is not None and set(extra) == {"pixel_values"}
        if self.prefill_bucket is not None and (not extra or images):
            pixels = extra["pixel_values"].to(dev) if images else None
            logits, P, attention_mask = self._bucketed_prefill(input_ids, attention_mask, pixels)
        else:
            self._key_ok.fill_(True)
            self._key_ok[:, :P] = attention_mask.bool()
            slots = torch.arange(P, device=dev)
            self._slots.index = slots
            with _sdpa_context(self.sdpa_backends):
                out = self._model_forward(
                    input_ids=input_ids,
                    attention_mask=self._mask(slots),
                    position_ids=prompt_positions(attention_mask),
                    logits_to_keep=1,
                    **extra,
                )
            logits = out.logits[:, -1, :]
        self._generation += 1
        step = StaticStep(self, self._generation, P, attention_mask.sum(1, keepdim=True))
        self._pos_base.copy_(step.valid_len)
        self._slot_base.fill_(P)
        synchronize(dev)  # the seconds are the prefill's, not its launch's
        return step, logits, time.perf_counter() - t

    def _bucketed_prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values=None):
        """Prefill left-padded to the prompt's bucket (replayed when graphs are on); returns
        (first_logits, bucket length, the padded attention mask). A VLA prompt brings its images:
        they go through the vision tower inside the same forward (and graph)."""
        B, P = input_ids.shape
        Pb = min(_round_up(P, self.prefill_bucket), self.max_prompt_len)
        learn_count = pixel_values is not None and self._image_tokens is None
        if pixel_values is not None and not learn_count:
            self._check_image_tokens(input_ids)
        buf = self._prompts.get(Pb)
        if buf is None:
            buf = self._prompts[Pb] = _PromptBuffers(
                ids=torch.zeros(B, Pb, dtype=torch.long, device=self.device),
                mask=torch.ones(B, Pb, dtype=torch.long, device=self.device),
                positions=torch.arange(Pb, device=self.device).repeat(B, 1),
                slots=torch.arange(Pb, device=self.device),
                pixels=None if pixel_values is None else torch.zeros_like(pixel_values, device=self.device),
            )

        def layout(px):
            return None if px is None else (tuple(px.shape), px.dtype)

        if layout(buf.pixels) != layout(pixel_values):
            raise ValueError(
                f"this engine's {Pb}-token prompt bucket was built for pixel_values of {layout(buf.pixels)}, "
                f"got {layout(pixel_values)}"
            )
        pad = Pb - P
        # any valid id that is not the image placeholder: masked as a key, its own output unused
        buf.ids[:, :pad].fill_(1 if self._image_token == 0 else 0)
        buf.ids[:, pad:].copy_(input_ids)
        buf.mask[:, :pad].zero_()
        buf.mask[:, pad:].copy_(attention_mask)
        buf.positions.copy_(prompt_positions(buf.mask))
        if pixel_values is not None:
            buf.pixels.copy_(pixel_values)
        self._key_ok.fill_(True)
        self._key_ok[:, :Pb] = buf.mask.bool()
        skip = buf.pixels is not None and self._image_graph_failed
        if Pb not in self._prompt_graphs and self.uses_graphs and not skip:
            # its warm-up runs write the cache only; the replay redoes it
            t = time.perf_counter()
            try:
                self._prompt_graphs[Pb] = self._graph_of(lambda: self._prompt_forward(Pb))
                dt = time.perf_counter() - t
                self.setup_s += dt
                log.info("captured the prefill of a %d-token prompt bucket in %.2f s", Pb, dt)
            except Exception as e:  # a vision tower that a graph cannot hold: its prefills run unreplayed
                if buf.pixels is None:
                    raise
                self._image_graph_failed = True
                log.warning("could not capture the image prefill as a CUDA graph (%s): it runs without one", e)
        if Pb in self._prompt_graphs:
            graph, out = self._prompt_graphs[Pb]
            graph.replay()
            logits = out[:, -1, :].clone()
        else:
            logits = self._prompt_forward(Pb)[:, -1, :]
        if learn_count:
            self._check_image_tokens(input_ids)  # the first image prefill has just learnt the feature count
        return logits, Pb, buf.mask

    def _check_image_tokens(self, input_ids: torch.Tensor) -> None:
        """Every prompt must hold one placeholder per image feature (what transformers' Llava
        checks in its forward; the engine's merge could not, inside a graph)."""
        if self._image_tokens is None or input_ids.device.type == "meta":
            return
        counts = (input_ids == self._image_token).sum(1)
        if bool((counts != self._image_tokens).any()):
            raise ValueError(
                f"image placeholders per prompt {counts.tolist()} do not match the {self._image_tokens} "
                f"features of one image (placeholder id {self._image_token})"
            )

    def width_for(self, length: int) -> int:
        """The smallest built width that holds `length` tokens."""
        i = bisect.bisect_left(self.widths, length)
        if i == len(self.widths):
            raise ValueError(
                f"a window of {length} tokens exceeds the engine's widths {self.widths} "
                f"(build it with a larger max_new_tokens or widths)"
            )
        return self.widths[i]

    def _run(self, tokens: torch.Tensor, start: int, prompt_len: int) -> torch.Tensor:
        B, L = tokens.shape
        if B != self.batch_size or L < 1:
            raise ValueError(f"step tokens must be ({self.batch_size}, L >= 1), got {tuple(tokens.shape)}")
        if start < 0:
            raise ValueError(f"step start must be >= 0, got {start}")
        w = self.width_for(L)
        if prompt_len + start + w > self.capacity:
            raise ValueError(
                f"positions {start}..{start + w - 1} after a {prompt_len}-token prompt exceed the engine's "
                f"{self.capacity} cache slots (max_new_tokens={self.max_new_tokens})"
            )
        buf = self._buffers[w]
        buf.ids[:, :L].copy_(tokens)
        if L < w:  # any valid id will do: padded outputs are dropped, their KV entries masked
            buf.ids[:, L:].copy_(tokens[:, -1:].expand(B, w - L))
        self._start.fill_(start)  # positions and slots follow inside the forward (see _WidthBuffers)
        if self.uses_graphs:
            graph, logits = self._graphs[w]
            graph.replay()
            return logits[:, :L].clone()  # the graph's output buffer is overwritten by the next replay
        return self._forward(w)[:, :L]

    def replay(self, width: int) -> None:
        """Replay the width-`width` step graph once as it stands (no copies in or out): for timing."""
        if not self.uses_graphs:
            raise RuntimeError("replay needs an engine with CUDA graphs")
        self._graphs[width][0].replay()

    def replay_ms(self, width: int, iters: int = 50) -> float:
        """Device time of one replay of the width-`width` step graph, in ms: `iters` replays back to
        back between two CUDA events, after one untimed. What a step costs the GPU, without the
        host's work around it (the buffer copies, the launch, the logits' clone, the sync). The
        replays reuse the buffers of the last step: they rewrite only the window's cache slots."""
        return cuda_ms_back_to_back(lambda: self.replay(width), iters)  # `replay` raises without graphs


class StaticStep:
    """`step(tokens, start) -> logits` of one prefill of a `StaticEngine` (see `ee_vla.decoding.core`)."""

    def __init__(self, engine: StaticEngine, generation: int, prompt_len: int, valid_len: torch.Tensor):
        self.engine = engine
        self.generation = generation
        self.prompt_len = prompt_len
        self.valid_len = valid_len  # (B, 1) real prompt tokens per sample
        self.calls = 0

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        if self.engine._released:
            raise RuntimeError("this step's engine was released (e.g. evicted from its EnginePool)")
        if self.generation != self.engine._generation:
            raise RuntimeError("this step belongs to an earlier prefill: the engine's cache now holds another prompt")
        logits = self.engine._run(tokens.to(self.engine.device), int(start), self.prompt_len)
        self.calls += 1
        return logits
