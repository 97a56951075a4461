"""The prefill of a `StaticEngine`'s prompt buckets: a prompt left-padded to a multiple of
`prefill_bucket` over static buffers (captured as a CUDA graph at its first use when the engine
uses graphs); a Llava-style VLA's prompt brings its images, merged into the placeholder embeddings
inside the same forward."""

from __future__ import annotations

import logging
import time

import torch

from ee_vla.decoding.hf import prompt_positions
from ee_vla.engine.cache import _PromptBuffers, _round_up

log = logging.getLogger(__name__)


class PromptBuckets:
    """`StaticEngine`'s bucketed prefill (a mixin: it reads and writes the engine's buffers, cache
    slots, graphs and image-token state)."""

    def _prompt_forward(self, key: tuple[int, int]) -> torch.Tensor:
        """The prefill of the buffers of `key` = (bucket length, guess tokens L after it);
        (B, 1 + L, V) logits of the prompt's last position and of the guess tokens. It also sets
        what the steps after it read (`_set_prompt_state`), so that a replay needs only the
        prompt, its mask, the window and the images copied in."""
        buf = self._prompts[key]
        Pb, L = key
        self._set_prompt_state(buf.mask, Pb)
        positions = prompt_positions(buf.mask)
        self._slots.index = buf.slots
        mask = self._mask(buf.slots)
        if buf.pixels is None:
            return self._model_logits(buf.ids, mask, positions, logits_to_keep=1 + L)
        # A VLA prompt: the image features replace the placeholder embeddings in order (what Llava's
        # masked_scatter does), as a gather with no host-side count, so that a graph can hold it.
        m = self.model
        B = buf.ids.shape[0]
        embeds = m.get_input_embeddings()(buf.ids)
        feats = torch.cat(list(m.get_image_features(pixel_values=buf.pixels, return_dict=True).pooler_output), 0)
        self._image_tokens = feats.shape[0] // B  # a shape, not a value: nothing is read on the host
        is_image = buf.ids == self._image_token
        idx = (is_image.reshape(-1).cumsum(0) - 1).clamp_(0, feats.shape[0] - 1)
        merged = torch.where(is_image.unsqueeze(-1), feats.to(embeds.dtype)[idx].view(B, Pb + L, -1), embeds)
        return self._model_logits(None, mask, positions, inputs_embeds=merged, logits_to_keep=1 + L)

    def _bucketed_prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values=None,
        window: torch.Tensor | None = None,
        ahead: bool = True,
    ):
        """Prefill left-padded to the prompt's bucket (replayed when graphs are on); returns
        (first_logits, bucket length, faults). A VLA prompt brings its images: they go through the
        vision tower inside the same forward (and graph). A `window` (B, L) of guess tokens runs
        after the bucket, at generated positions 0 .. L-1, and the logits are then (B, 1 + L, V)
        (`StaticEngine.prefill`). `faults`: the inputs' checks, on the device (`_input_faults`),
        for the caller to read once with the forward's end. The first capture of a bucket also
        captures the longer ones (`ahead`, `_capture_longer_buckets`)."""
        B, P = input_ids.shape
        L = 0 if window is None else window.shape[1]
        Pb = min(_round_up(P, self.prefill_bucket), self.max_prompt_len)
        key = (Pb, L)
        buf = self._prompts.get(key)
        if buf is None:
            buf = self._prompts[key] = _PromptBuffers(
                ids=torch.zeros(B, Pb + L, dtype=torch.long, device=self.device),
                mask=torch.ones(B, Pb + L, dtype=torch.long, device=self.device),
                slots=torch.arange(Pb + L, device=self.device),
                pixels=None if pixel_values is None else torch.zeros_like(pixel_values, device=self.device),
            )

        def layout(px):
            return None if px is None else (tuple(px.shape), px.dtype)

        if layout(buf.pixels) != layout(pixel_values):
            raise ValueError(
                f"this engine's {Pb}-token prompt bucket was built for pixel_values of {layout(buf.pixels)}, "
                f"got {layout(pixel_values)}"
            )

        def to_capture() -> bool:  # an image prefill that a graph could not hold runs without one
            failed = buf.pixels is not None and self._image_graph_failed
            return key not in self._prompt_graphs and self.uses_graphs and not failed

        if ahead and to_capture():
            self._capture_longer_buckets(input_ids, attention_mask, pixel_values, window)
        self._load_prompt(buf, input_ids, attention_mask, pixel_values, window)
        if to_capture():
            # its warm-up runs write the cache only; the replay redoes it
            t = time.perf_counter()
            try:
                self._prompt_graphs[key] = self._graph_of(lambda: self._prompt_forward(key))
                dt = time.perf_counter() - t
                self.setup_s += dt
                log.info(
                    "captured the prefill of a %d-token prompt bucket%s in %.2f s",
                    Pb,
                    f" and {L} guess tokens" if L else "",
                    dt,
                )
            except Exception as e:  # a vision tower that a graph cannot hold: its prefills run unreplayed
                if buf.pixels is None:
                    raise
                self._image_graph_failed = True
                log.warning("could not capture the image prefill as a CUDA graph (%s): it runs without one", e)
        if key in self._prompt_graphs:
            graph, out = self._prompt_graphs[key]
            graph.replay()
            out = out.clone()  # the graph's output buffer is overwritten by the next replay
        else:
            out = self._prompt_forward(key)
        faults = self._input_faults(input_ids, pixel_values is not None, window)
        return (out[:, -1, :] if window is None else out), Pb, faults

    @property
    def _padding_id(self) -> int:
        """The id of left padding: any valid id that is not the image placeholder (masked as a
        key, its own output unused)."""
        return 1 if self._image_token == 0 else 0

    def _load_prompt(self, buf: _PromptBuffers, input_ids, attention_mask, pixel_values, window) -> None:
        """Copy a prompt (left-padded to the bucket), its mask, its window and its images into the
        bucket's buffers (the forward derives the rest from them)."""
        P, Pb = input_ids.shape[1], buf.slots.shape[0] - (0 if window is None else window.shape[1])
        pad = Pb - P
        buf.ids[:, :pad].fill_(self._padding_id)
        buf.ids[:, pad:Pb].copy_(input_ids)
        buf.mask[:, :pad].zero_()
        buf.mask[:, pad:Pb].copy_(attention_mask)
        if window is not None:  # the window's mask entries stay 1
            # a negative id would index the embedding out of range (on a GPU, an error that ends the
            # process's CUDA context): clamped here, and refused once the prefill reads its faults
            torch.clamp(window, min=0, out=buf.ids[:, Pb:])
        if pixel_values is not None:
            buf.pixels.copy_(pixel_values)

    def _capture_longer_buckets(self, input_ids, attention_mask, pixel_values, window) -> None:
        """Capture the prefill of every longer bucket up to `max_prompt_len` now, with this prompt
        left-padded to each: a longer instruction later finds its graph ready instead of waiting
        for a capture (0.5-1 s on a 7B model) inside a timed call. Compiled engines skip it (a
        compilation per bucket costs far more)."""
        if self.compile is not None:
            return
        B, P = input_ids.shape
        first = min(_round_up(P, self.prefill_bucket), self.max_prompt_len)
        step, top = self.prefill_bucket, self.max_prompt_len
        for Pb in sorted({min(b, top) for b in range(first + step, top + step, step)}):
            pad = Pb - P
            ids = torch.cat([input_ids.new_full((B, pad), self._padding_id), input_ids], 1)
            mask = torch.cat([attention_mask.new_zeros((B, pad)), attention_mask], 1)
            self._bucketed_prefill(ids, mask, pixel_values, window, ahead=False)

    def _input_faults(self, input_ids: torch.Tensor, images: bool, window: torch.Tensor | None) -> torch.Tensor | None:
        """The checks of a prefill's inputs that its forward cannot make, as device flags (None:
        nothing to check): every prompt holds one placeholder per image feature (what transformers'
        Llava checks in its forward; the engine's merge could not, inside a graph), and the window
        holds token ids (>= 0). Computed without a host read: the prefill reads them with the end
        of its forward (`_raise_input_faults`), and the forward is harmless on faulty inputs (the
        merge's gather and the window's ids are clamped)."""
        flags = []
        if images and self._image_tokens is not None and input_ids.device.type != "meta":
            flags.append(((input_ids == self._image_token).sum(1) != self._image_tokens).any())
        if window is not None:
            flags.append((window < 0).any())
        return torch.stack(flags) if flags else None

    def _raise_input_faults(self, faults: list[bool], input_ids: torch.Tensor, window: torch.Tensor | None) -> None:
        """ValueError naming what is wrong, for the host copy of `_input_faults`' flags."""
        if not any(faults):
            return
        if window is not None and faults[-1]:
            raise ValueError("the prefill's window holds negative token ids")
        counts = (input_ids == self._image_token).sum(1)
        raise ValueError(
            f"image placeholders per prompt {counts.tolist()} do not match the {self._image_tokens} "
            f"features of one image (placeholder id {self._image_token})"
        )
