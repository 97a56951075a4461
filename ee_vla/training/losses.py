"""The training losses, written against exactly what the decoder feeds the model.

A chunk is n = k * action_dim tokens y_0..y_{n-1}. The decoder (`ee_vla.decoding.core`) gets y_0
from the prefill's last prompt position and then feeds window tokens y_0..y_{n-2} after the prompt;
the logits at the last prompt position and at the n - 1 window positions predict y_0..y_{n-1}.
`window_logits` runs that in one causal forward (same left padding and position ids as
`HFStep`), so:

* behaviour cloning feeds the demonstration chunk (teacher forcing) and scores every position;
* the consistency loss feeds a Jacobi state Y (what one Jacobi iteration sees) and matches the
  student's own detached prediction given the fixed point Y*;
* the AR loss of distillation feeds the (mixed) labels, teacher-forced.

Only these n positions are computed (`logits_to_keep`): the prompt is never a target, which is what
a label of -100 on every prompt token would do, without computing those logits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ee_vla.action_tokenizer import ActionTokenizer
from ee_vla.decoding.hf import prompt_positions
from ee_vla.training.data import IGNORE


class WindowLM(torch.nn.Module):
    """The Llava network as the training forward: prompt (with image) + window -> window logits.

    Image features go only to the `<image>` placeholders of the prompt; window tokens are embedded
    from the vocabulary even when a guess token happens to be `<image>` (the `prompt` initial guess
    draws prompt tokens), exactly as the decoder's `HFStep`, which runs windows without pixels.
    One module, so DistributedDataParallel sees a single forward per backward.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self._checked = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        window: torch.Tensor,
    ) -> torch.Tensor:
        window = window.to(input_ids.device)
        full_ids = torch.cat([input_ids, window], 1)
        full_mask = torch.cat([attention_mask, torch.ones_like(window, dtype=attention_mask.dtype)], 1)
        position_ids = prompt_positions(full_mask)  # as HFStep: left padding is invisible
        embeds = self.net.get_input_embeddings()(full_ids)
        feats = self.net.get_image_features(pixel_values=pixel_values)
        feats = getattr(feats, "pooler_output", feats)  # transformers 5.x returns a model output
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.flatten(0, -2)
        placeholder = torch.zeros_like(full_ids, dtype=torch.bool)
        placeholder[:, : input_ids.shape[1]] = input_ids == self.net.config.image_token_id
        if not self._checked and int(placeholder.sum()) * embeds.shape[-1] != feats.numel():
            n_img = int(placeholder.sum())
            raise ValueError(f"{n_img} <image> placeholders in the prompts, {feats.shape[0]} image features")
        self._checked = True  # the count is a GPU sync: checked on the first batch only
        embeds = embeds.masked_scatter(placeholder[..., None], feats.to(embeds.dtype))
        out = self.net(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=window.shape[1] + 1,
        )
        return out.logits


def window_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], window: torch.Tensor) -> torch.Tensor:
    """(B, n, V) logits predicting y_0..y_{n-1} when the model reads prompt + `window`.

    Args:
        model: a `WindowLM` (or its DDP wrapper).
        inputs: `VLA.build_inputs` output: left-padded ``input_ids``, ``attention_mask``,
            ``pixel_values``.
        window: (B, n - 1) tokens y_0..y_{n-2} (may be empty for a one-token chunk).
    """
    return model(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], window)


def restrict_logits(
    logits: torch.Tensor, targets: torch.Tensor | None, action_range: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep only the action-token block of the vocabulary (ids shifted to 0..) when `action_range`
    is given; returns float32 logits and the matching targets."""
    logits = logits.float()
    if action_range is None:
        return logits, targets
    lo, hi = action_range
    return logits[..., lo : hi + 1], None if targets is None else targets - lo


def _reduce(per_pos: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """(B, n) per-position losses -> scalar: mean over kept positions, or sum over positions and
    mean over samples."""
    if mask is None:
        mask = torch.ones_like(per_pos, dtype=torch.bool)
    per_pos = per_pos * mask
    if reduction == "sum":
        return per_pos.sum(1).mean()
    return per_pos.sum() / mask.sum().clamp(min=1)


def ar_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    action_range: tuple[int, int] | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of (B, n, V) logits against (B, n) labels; positions
    labelled `IGNORE` (-100) are left out."""
    labels = labels.to(logits.device)
    keep = labels != IGNORE
    fill = labels.new_tensor(action_range[0] if action_range is not None else 0)  # any valid id: masked below
    lg, tg = restrict_logits(logits, torch.where(keep, labels, fill), action_range)
    per_pos = F.cross_entropy(lg.flatten(0, 1), tg.flatten(), label_smoothing=label_smoothing, reduction="none")
    return _reduce(per_pos.view(labels.shape), keep, reduction)


def consistency_loss(
    logits_state: torch.Tensor,
    logits_fixed: torch.Tensor,
    mask: torch.Tensor | None = None,
    action_range: tuple[int, int] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(Q_sg(. | Y*) || Q(. | Y)) per position, reduced over the kept positions.

    `logits_fixed` (the target, given the fixed point) is detached here; gradients flow only
    through `logits_state` (given the Jacobi state).
    """
    lq, _ = restrict_logits(logits_state, None, action_range)
    lt, _ = restrict_logits(logits_fixed.detach(), None, action_range)
    kl = F.kl_div(F.log_softmax(lq, -1), F.log_softmax(lt, -1), log_target=True, reduction="none").sum(-1)
    return _reduce(kl, mask, reduction)


def after_first_wrong(state: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: positions whose prediction depends on an input token of `state` that differs
    from `fixed` (CLLM masks the others). Position p reads inputs y_0..y_{p-1}, so it is kept when
    p > the first index where `state` and `fixed` differ."""
    wrong = state != fixed
    n = state.shape[1]
    first = torch.where(wrong.any(1), wrong.float().argmax(1), torch.full_like(wrong[:, 0], n, dtype=torch.long))
    return torch.arange(n, device=state.device)[None, :] > first[:, None]


def mixed_labels(
    fixed: np.ndarray, ground_truth: np.ndarray, tokenizer: ActionTokenizer, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """CEED's mixed-label supervision on (B, k * A) token chunks.

    An action step of the fixed point is replaced by the ground-truth step when the mean absolute
    difference of its A dims, in normalised action space (bin centres of both token sets; one bin
    = 2 / (n_bins - 1)), exceeds `threshold`.

    Returns:
        labels (B, k * A) int64 and replaced (B, k) bool.
    """
    fixed = np.asarray(fixed, dtype=np.int64)
    ground_truth = np.asarray(ground_truth, dtype=np.int64)
    if fixed.shape != ground_truth.shape:
        raise ValueError(f"fixed point {fixed.shape} and ground truth {ground_truth.shape} differ in shape")
    A = tokenizer.action_dim
    B, n = fixed.shape
    centres = tokenizer.bin_centers
    yf = centres[tokenizer.tokens_to_bins(fixed)].reshape(B, n // A, A)
    yg = centres[tokenizer.tokens_to_bins(ground_truth)].reshape(B, n // A, A)
    replaced = np.abs(yf - yg).mean(-1) > threshold
    labels = np.where(np.repeat(replaced, A, axis=1), ground_truth, fixed)
    return labels, replaced
