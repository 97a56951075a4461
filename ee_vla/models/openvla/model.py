"""`OpenVLA`: a `VLA` over an OpenVLA checkpoint (see the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer
from ee_vla.models.files import ModelLoadError
from ee_vla.models.openvla.format import CHUNK_KEY, EMPTY_TOKEN_ID, INDEX_FILE, OpenVLAFormat, read_openvla
from ee_vla.models.vla import PROMPT_TEMPLATE, VLA


def action_stats(fmt: OpenVLAFormat, unnorm_key: str | None) -> ActionStats:
    """The chosen dataset's action statistics as ee_vla's `ActionStats` (mask: all True if absent)."""
    a = fmt.action_stats(unnorm_key)
    n = len(a["q01"])
    extra = {k: list(a[k]) for k in ("mean", "std", "min", "max") if isinstance(a.get(k), list) and len(a[k]) == n}
    return ActionStats(
        q01=[float(x) for x in a["q01"]],
        q99=[float(x) for x in a["q99"]],
        mask=[bool(x) for x in a.get("mask", [True] * n)],
        **extra,
    )


class OpenVLA(VLA):
    """A `VLA` over an OpenVLA checkpoint: OpenVLA's prompt, image processing and action bins."""

    def __init__(self, model, tokenizer, fmt: OpenVLAFormat, unnorm_key: str | None = None, chunk_size: int = 1):
        from ee_vla.models.openvla.network import image_token_id

        self.format = fmt
        self.unnorm_key = fmt.unnorm_key(unnorm_key)
        self._kept_tensors: dict[str, torch.Tensor] = {}
        self._files: dict[str, bytes] = {}
        at = ActionTokenizer.openvla(action_stats(fmt, self.unnorm_key), fmt.vocab_size, n_bins=fmt.n_action_bins)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = fmt.pad_token_id
        super().__init__(
            model,
            tokenizer,
            at,
            chunk_size,
            image_size=fmt.transforms[0].size,
            prompt_template=PROMPT_TEMPLATE,
            meta={"format": "openvla", "path": str(fmt.path), "unnorm_key": self.unnorm_key},
            image_token_id=image_token_id(fmt),
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        unnorm_key: str | None = None,
        chunk_size: int | None = None,
    ) -> OpenVLA:
        """Load an OpenVLA checkpoint directory (single or sharded safetensors) onto `device`;
        `chunk_size` None: the checkpoint's (`ee_vla_chunk_size` in config.json, else 1)."""
        from transformers import PreTrainedTokenizerFast

        from ee_vla.models.openvla.network import build_network, load_weights
        from ee_vla.models.vla import _transformers_quiet

        _transformers_quiet()
        fmt = read_openvla(path)
        try:
            fmt.unnorm_key(unnorm_key)
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        try:
            # tokenizer.json as it is (AutoTokenizer would read config.json's auto_map and ask
            # to run the checkpoint's own code)
            tok = PreTrainedTokenizerFast.from_pretrained(fmt.path)
        except Exception as e:  # transformers raises many types for broken files
            raise ModelLoadError(f"could not load the tokenizer in {fmt.path}: {e}") from e
        net = build_network(fmt)
        kept = load_weights(net, fmt, device=device, dtype=dtype or torch.float32)
        vla = cls(net.eval(), tok, fmt, unnorm_key=unnorm_key, chunk_size=chunk_size or fmt.chunk_size)
        vla._kept_tensors = kept
        vla._files = {
            f.name: f.read_bytes()
            for f in fmt.path.iterdir()
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != INDEX_FILE
        }
        return vla

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write this model as an OpenVLA checkpoint: the files it was loaded with (config,
        tokenizer, processor), one model.safetensors of this network's weights under OpenVLA's
        names plus the loaded tensors the network does not hold, and `ee_vla_chunk_size` in
        config.json when it emits chunks of several actions. Needs nothing from the source
        directory any more (a run may have deleted it)."""
        from safetensors.torch import save_file

        from ee_vla.models.openvla.network import checkpoint_state
        from ee_vla.models.vla import new_file_mode

        if not self._files:
            raise ValueError("save_pretrained: this OpenVLA was not loaded from a checkpoint (nothing to write)")
        dst = Path(path)
        dst.mkdir(parents=True, exist_ok=True)
        for name, data in self._files.items():
            (dst / name).write_bytes(data)
        tensors = dict(self._kept_tensors)
        for k, v in checkpoint_state(self.model, self.format).items():
            tensors[k] = v.detach().to(dtype or v.dtype)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, dst / "model.safetensors")
        cfg = json.loads((dst / "config.json").read_text())
        cfg.pop(CHUNK_KEY, None)
        if self.chunk_size > 1:
            cfg[CHUNK_KEY] = self.chunk_size
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
        for f in dst.iterdir():
            f.chmod(new_file_mode())
        return dst

    # ---- inputs -------------------------------------------------------------------------
    def preprocess_images(self, pixels: np.ndarray) -> torch.Tensor:
        from ee_vla.models.openvla.processor import preprocess

        fmt = self.format
        x = preprocess(np.asarray(pixels), fmt.transforms, fmt.resize_strategy, fmt.letterbox_fill)
        return x.to(device=self.device, dtype=self.model.dtype)

    def prompt_text(self, instruction: str, template: str | None = None) -> str:
        """OpenVLA's prompt: the instruction lower-cased (and stripped) in the template."""
        return (template or self.prompt_template).format(instruction=instruction.strip().lower())

    def _head_ids(self, instruction: str, template: str | None) -> list[int]:
        key = (instruction, template)
        ids = self._prompt_cache.get(key)
        if ids is None:
            text_ids = self.tokenizer(self.prompt_text(instruction, template)).input_ids
            bos = self.tokenizer.bos_token_id
            if text_ids and text_ids[0] == bos:
                text_ids = text_ids[1:]
            if not text_ids or text_ids[-1] != EMPTY_TOKEN_ID:
                text_ids = [*text_ids, EMPTY_TOKEN_ID]
            ids = [bos] + [self.image_token_id] * self.n_image_tokens + text_ids
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids
        return ids
