"""OpenVLA-format checkpoints (openvla/openvla-7b and its fine-tunes), loaded natively.

    vla = OpenVLA.from_pretrained("openvla-7b", unnorm_key="bridge_orig")   # no trust_remote_code
    policy = VLAPolicy.from_pretrained("openvla-7b", unnorm_key="bridge_orig", decoder="ceed")

What is OpenVLA's and how ee_vla reproduces it (`format` reads the files, `network` builds the
model from transformers' classes, `processor` prepares the images):

- prompt: `In: What action should the robot take to {instruction}?\\nOut:` with the instruction
  lower-cased, tokenised with the checkpoint's Llama tokenizer (BOS first), then Llama's "▁" token
  (id 29871) appended as OpenVLA's `predict_action` does; the image's patch features follow BOS;
- actions: the last `n_action_bins - 1` ids of the unpadded vocabulary (`text_config.vocab_size`
  minus `pad_to_multiple_of`) in reverse order are the bins; a bin's centre is un-normalised with
  the chosen dataset's q01/q99 where its mask is true (`ee_vla.action_tokenizer`, OpenVLA layout);
- action chunks: OpenVLA emits one 7-token action per call; a fine-tune trained to emit several
  (`chunk_size` of them, CEED-style) is loaded with that `chunk_size`, and Jacobi/CEED decode the
  whole window.

Saving in this format is not supported: a fine-tune made with ee_vla is saved as an ee_vla model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_vla.models.openvla.format import OpenVLAFormat, is_openvla_dir, read_openvla

if TYPE_CHECKING:
    from ee_vla.models.openvla.model import OpenVLA

__all__ = ["OpenVLA", "OpenVLAFormat", "is_openvla_dir", "read_openvla"]


def __getattr__(name: str):
    if name == "OpenVLA":  # torch and transformers load with it, not with the format checks
        from ee_vla.models.openvla.model import OpenVLA

        return OpenVLA
    raise AttributeError(name)
