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
* Positions. Position ids are the real prompt length + start + j, exactly `HFStep`'s, so a
  left-padded sample decodes as it would alone.
* Prompt buckets. A prompt of P tokens is left-padded further, to a multiple of `prefill_bucket`
  (masked padding, positions from the attention mask as in `HFStep`), so that prompts of nearby
  lengths share one static prefill shape. A Llava-style VLA's prompt with `pixel_values` is bucketed
  too: the engine runs the vision tower itself and puts the image features in place of the
  placeholder embeddings with a gather (transformers' own merge counts the placeholders on the host,
  which a graph cannot hold; the engine checks that count on the device and reads it with the
  forward's end). Prompts with any other extra inputs run eagerly at their own length.

With `graphs=True` (CUDA only) each width is captured once as a `torch.cuda.CUDAGraph` whose
inputs are the static buffers (and each prompt bucket, lazily, at its first prefill): a step is
then a few device copies into them and one replay, with no per-layer kernel launches from Python.
Without graphs the very same buffers and padded forwards run eagerly, which is what the CPU tests
check against `HFStep` (the graph only replays them).

Compile modes and attention backends: see `ee_vla.engine.modes`.

Nothing in transformers is patched: the cache is a `transformers.Cache` of our own layers.
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache

from ee_vla.decoding.hf import check_window, prompt_positions
from ee_vla.engine.attention import install_slot_attention
from ee_vla.engine.cache import SlotLayer, _PromptBuffers, _Slots, _WidthBuffers
from ee_vla.engine.modes import (  # noqa: F401 (the modes' names, importable from here)
    COMPILE_MODES,
    SDPA_BACKENDS,
    _sdpa_context,
    check_compile_mode,
    check_sdpa_backends,
    model_logits,
)
from ee_vla.engine.prompts import PromptBuckets
from ee_vla.engine.splitkv import ATTN_NAME
from ee_vla.timing import cuda_ms_back_to_back, synchronize

log = logging.getLogger(__name__)


def _checked_options(
    batch_size: int,
    max_prompt_len: int,
    max_new_tokens: int,
    widths: Sequence[int] | None,
    compile: str | None,
    prefill_bucket: int | None,
    sdpa_backends: Sequence[str] | None,
) -> tuple[tuple[str, ...] | None, list[int]]:
    """`StaticEngine`'s options checked: (sdpa_backends as a tuple or None, the sorted widths);
    ValueError naming the first bad one."""
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
    return sdpa_backends, widths


def _global_attention_config(model):
    """The language model's config; NotImplementedError for sliding-window layers."""
    text = model.config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or getattr(text, "use_sliding_window", False):
        raise NotImplementedError(f"StaticEngine supports global attention only; this model has layers {layer_types}")
    return text


def _image_token_of(model) -> int | None:
    """A Llava-style VLA's image placeholder id; None for a model without a vision tower."""
    image_token = getattr(model.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(model.config, "image_token_index", None)
    return image_token if hasattr(model, "get_image_features") else None


class StaticEngine(PromptBuckets):
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
            static-shape forward through `torch.compile` (see `ee_vla.engine.modes`).
        sdpa_backends: None (torch's choice) or names from `SDPA_BACKENDS`: the attention kernels
            the language model's forwards may use (see `ee_vla.engine.modes`).
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
        sdpa_backends, widths = _checked_options(
            batch_size, max_prompt_len, max_new_tokens, widths, compile, prefill_bucket, sdpa_backends
        )
        text = _global_attention_config(model)
        if getattr(text, "_attn_implementation", None) == ATTN_NAME:
            install_slot_attention(model)
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
        self._model_logits = model_logits(self._eager_logits, compile, sdpa_backends)
        self._min = torch.finfo(self.dtype).min
        # A Llava-style VLA: its image placeholder id (its prompts with pixel_values are bucketed too)
        self._image_token = _image_token_of(model)
        self._image_tokens: int | None = None  # image features per image, known after the first image prefill
        self._image_graph_failed = False  # a failed capture of an image prefill: those run without a graph
        self._generation = 0
        self._released = False
        self.captured_s = 0.0
        self.setup_s = 0.0  # seconds spent capturing prompt buckets' graphs since construction (one-time work)
        with torch.inference_mode():
            self._allocate(text)
            if graphs:
                self._capture(warmup)

    def _allocate(self, text) -> None:
        """The KV cache (`text`: the language model's config), the mask's inputs, the step's
        start and bases, and the static buffers of every width."""
        batch_size, dev = self.batch_size, self.device
        n_layers = text.num_hidden_layers
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self._slots = _Slots(torch.arange(1, device=dev), consecutive=True)
        shape = (batch_size, kv_heads, self.capacity, head_dim)
        heads = batch_size * text.num_attention_heads
        self.cache = Cache(
            layers=[
                SlotLayer(
                    torch.zeros(shape, dtype=self.dtype, device=dev),
                    torch.zeros(shape, dtype=self.dtype, device=dev),
                    self._slots,
                    torch.zeros(heads, dtype=torch.int32, device=dev),
                )
                for _ in range(n_layers)
            ]
        )
        self._kidx = torch.arange(self.capacity, device=dev)
        self._key_ok = torch.ones(batch_size, self.capacity, dtype=torch.bool, device=dev)
        self._slots.key_ok = self._key_ok  # the rule of `_mask`, for the fused attention kernel
        # A step's window starts at generated position `_start`: its position ids are
        # `_pos_base + _start + j` (`_pos_base`: each sample's real prompt length) and its cache
        # slots `_slot_base + _start + j` (`_slot_base`: the padded prompt length). The prefill
        # sets the bases, a step sets `_start`; the forward (and its graph) computes the rest.
        self._start = torch.zeros(1, dtype=torch.long, device=dev)
        self._pos_base = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        self._slot_base = torch.full((1,), self.max_prompt_len, dtype=torch.long, device=dev)
        self._buffers = {
            w: _WidthBuffers(
                ids=torch.zeros(batch_size, w, dtype=torch.long, device=dev), arange=torch.arange(w, device=dev)
            )
            for w in self.widths
        }
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # prompt buckets, keyed by (bucket length, guess tokens run after the prompt)
        self._prompts: dict[tuple[int, int], _PromptBuffers] = {}
        self._prompt_graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

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

    def _set_prompt_state(self, mask: torch.Tensor, prompt_len: int) -> None:
        """What the steps after a prefill read, from its (B, prompt_len + L) attention mask (L guess
        tokens after the prompt): the cache slots that are keys (`_key_ok`), each row's real prompt
        length (`_pos_base`) and the prompt's padded length (`_slot_base`)."""
        self._key_ok.fill_(True)
        self._key_ok[:, : mask.shape[1]].copy_(mask)
        self._pos_base.copy_(mask[:, :prompt_len].sum(1, keepdim=True))
        self._slot_base.fill_(prompt_len)

    def _forward(self, width: int) -> torch.Tensor:
        """One step over the width-`width` buffers; (B, w, V) logits."""
        buf = self._buffers[width]
        at = self._start + buf.arange
        slots = self._slot_base + at
        self._slots.index = slots
        return self._model_logits(
            buf.ids, self._mask(slots), self._pos_base + at, rows_only=self.logit_rows is not None
        )

    def _graph_of(self, forward) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture `forward()` as a CUDA graph, after `warmup` eager runs on a side stream (the
        PyTorch recipe). The cache entries the warm-ups write are junk, and are zeroed afterwards:
        later prefills and steps overwrite or mask them, but a masked NaN would still reach every
        query (its attention weight is 0, and 0 x NaN is NaN). A capture happens only at the
        engine's start and inside a prefill, before the prefill's replay writes its cache slots.

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
            for layer in self.cache.layers:
                layer.keys.zero_()
                layer.values.zero_()
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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        window: torch.Tensor | None = None,
        **extra,
    ) -> tuple[StaticStep, torch.Tensor, float]:
        """Run the prompt into cache slots 0 .. P-1; returns (step, first_logits (B, V), seconds).
        Mirrors `HFStep.prefill`: left padding allowed, `extra` goes to the model (e.g.
        `pixel_values`), a `window` (B, L) of guess tokens runs after the prompt (slots P .. P+L-1,
        generated positions 0 .. L-1) and the logits are then (B, 1 + L, V). A new prefill
        invalidates the previous prefill's step."""
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
        bucketed = self.prefill_bucket is not None and (not extra or images)
        if window is not None:
            # a bucketed prefill checks the window's values with its forward's end (`_input_faults`)
            window = check_window(window, input_ids, values=not bucketed)
            if window.shape[1] > self.max_new_tokens:
                raise ValueError(
                    f"a prefill window of {window.shape[1]} tokens exceeds the engine's "
                    f"max_new_tokens={self.max_new_tokens}"
                )
        if bucketed:
            pixels = extra["pixel_values"].to(dev) if images else None
            logits, P, faults = self._bucketed_prefill(input_ids, attention_mask, pixels, window)
        else:
            faults = None
            L = 0 if window is None else window.shape[1]
            ids, mask = input_ids, attention_mask
            if L:
                ids, mask = torch.cat([ids, window], 1), torch.cat([mask, torch.ones_like(window)], 1)
            self._set_prompt_state(mask, P)
            slots = torch.arange(P + L, device=dev)
            self._slots.index = slots
            with _sdpa_context(self.sdpa_backends):
                out = self._model_forward(
                    input_ids=ids,
                    attention_mask=self._mask(slots),
                    position_ids=prompt_positions(mask),
                    logits_to_keep=1 + L,
                    **extra,
                )
            logits = out.logits[:, -1, :] if window is None else out.logits
        self._generation += 1
        step = StaticStep(self, self._generation, P)
        # one host read: it waits for the forward (the seconds are the prefill's, not its launch's)
        if faults is not None:
            self._raise_input_faults(faults.tolist(), input_ids, window)
        else:
            synchronize(dev)
        return step, logits, time.perf_counter() - t

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

    def __init__(self, engine: StaticEngine, generation: int, prompt_len: int):
        self.engine = engine
        self.generation = generation
        self.prompt_len = prompt_len
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
