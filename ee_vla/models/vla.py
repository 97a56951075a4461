"""The VLA: a Llava-family transformers model + text tokenizer + action tokenizer, saved together.

A model directory holds what `save_pretrained` writes for the transformers model
(`config.json`, `model.safetensors`) and tokenizer, plus `ee_vla.json`: the action tokenizer
(statistics and token layout), chunk size, optional proprio tokenizer, image size/normalisation
and prompt template. Loading needs no `trust_remote_code`: the network is transformers'
`LlavaForConditionalGeneration` (SigLIP-style vision tower, MLP projector, Llama or Qwen2 LM), or,
with a convolutional vision stem, its subclass `ee_vla.models.network.VLANetwork`.

Prompt (OpenVLA's): `<s> <image>*P In: What action should the robot take to {instruction}?\\nOut:`
followed, when the model uses proprio, by the discretised proprio as tokens of the action block.
The model then emits `chunk_size * action_dim` action tokens. A model that reads several cameras
(`cameras` in `ee_vla.json`, e.g. `["pixels", "wrist_pixels"]`) has P placeholders per camera, one
camera after the other in that order; each image goes through the same vision tower and projector,
and the camera it came from is told by its place in the prompt.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer
from ee_vla.models.checks import (  # noqa: F401 (ModelBounds, MODEL_BOUNDS: importable from here)
    MODEL_BOUNDS,
    ModelBounds,
    _check_finite_weights,
    _check_loading_info,
    _check_safetensors,
    check_config_bounds,
    check_image_normalisation,
)
from ee_vla.models.contract import CAMERAS, CONTRACT_KEY, ModelContract, check_cameras
from ee_vla.models.files import EE_VLA_FILE, PROMPT_TEMPLATE, ModelLoadError, check_model_dir

log = logging.getLogger(__name__)

GROUNDING_TEMPLATE = "In: Where are the objects to {instruction}?\nOut:"
"""The question of grounding co-training (`TrainConfig.grounding_fraction`): answered with the
target's and goal's positions as action-block tokens; never asked at run time."""


@dataclass(frozen=True)
class VLASpec:
    """Network sizes of a preset."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    backbone: str = "llama"  # llama | qwen2
    vision_pos_init: str = "sincos"  # sincos | random: how the vision tower's position table starts
    vision_stem: str = "patch"  # patch (SigLIP's patch embedding) | conv (ee_vla.models.network.ConvStem)


def new_file_mode() -> int:
    """The permission bits `open()` gives a new file: 0o666 less the process umask."""
    try:  # Linux: read without changing the umask (other threads may create files meanwhile)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(grid*grid, dim) fixed 2D sine-cosine position table (MAE's, row-major patches): half the
    channels encode the patch's row, half its column, so "which patch" is linearly readable from
    step 0. SigLIP's default random table is ~10x weaker than a patch's content and a from-scratch
    tower can take thousands of steps to learn it."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    parts = []
    for coord in (yy.flatten(), xx.flatten()):
        angle = coord[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


PRESETS: dict[str, VLASpec] = {
    # a few hundred thousand parameters: trains on a CPU in seconds (tests)
    "tiny": VLASpec(64, 16, 32, 1, 2, 64, 2, 4, 2),
    # ~10M parameters: trains on one GPU in minutes (the shipped default policy)
    "small": VLASpec(128, 16, 192, 4, 4, 256, 6, 8, 4),
}


def prompt_text(instruction: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt's text part: the instruction normalised (stripped, lower case, no final
    punctuation) and placed in the template. Training and inference both go through here."""
    return template.format(instruction=instruction.strip().lower().rstrip(".?!"))


def _transformers_quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def build_network(spec: VLASpec, vocab_size: int, image_token_id: int, pad_token_id: int):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    from ee_vla.models.network import STEMS, VLANetwork

    if spec.vision_stem not in STEMS:
        raise ValueError(f"VLASpec.vision_stem must be {'|'.join(STEMS)}, got {spec.vision_stem!r}")
    stem = {"ee_vla_stem": "conv"} if spec.vision_stem == "conv" else {}  # a patch stem stays stock Llava
    vision = SiglipVisionConfig(
        **stem,
        hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(spec.backbone)
    if text_cls is None:
        raise ValueError(f"VLASpec.backbone must be llama|qwen2, got {spec.backbone!r}")
    text = text_cls(
        vocab_size=vocab_size,
        hidden_size=spec.text_hidden,
        intermediate_size=int(8 * spec.text_hidden / 3) // 16 * 16,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=1024,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
    )
    # a patch stem is stock Llava (loadable without ee_vla); VLANetwork only where it differs
    net = VLANetwork(cfg) if spec.vision_stem == "conv" else LlavaForConditionalGeneration(cfg)
    if spec.vision_pos_init == "sincos":
        table = net.model.vision_tower.embeddings.position_embedding.weight
        with torch.no_grad():
            table.copy_(sincos_2d(spec.image_size // spec.patch_size, spec.vision_hidden))
    elif spec.vision_pos_init != "random":
        raise ValueError(f"VLASpec.vision_pos_init must be sincos|random, got {spec.vision_pos_init!r}")
    return net


class VLA:
    """A loaded VLA: turns observations into model inputs and action tokens into actions."""

    def __init__(
        self,
        model,
        tokenizer,
        action_tokenizer: ActionTokenizer,
        chunk_size: int,
        image_size: int,
        proprio_tokenizer: ActionTokenizer | None = None,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        prompt_template: str = PROMPT_TEMPLATE,
        meta: dict | None = None,
        contract: dict | None = None,
        image_token_id: int | None = None,
        cameras: Sequence[str] = CAMERAS,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.proprio_tokenizer = proprio_tokenizer
        self.chunk_size = chunk_size
        self.image_size = image_size
        self.image_mean, self.image_std = check_image_normalisation(image_mean, image_std)
        self.prompt_template = prompt_template
        self._prompt_cache: dict[tuple[str, str | None], list[int]] = {}
        self.cameras = cameras
        self.meta = dict(meta or {})
        self.contract = dict(contract or {})
        """What the training data fixed (`ee_vla.models.contract.recorded_contract`: control rate,
        env ids, action space), saved as the `contract` section of `ee_vla.json`."""
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>") if image_token_id is None else image_token_id
        self.n_image_tokens = model.config.image_seq_length
        """Image placeholders per camera (the vision tower's patches)."""
        at = action_tokenizer
        if at.last_token_id >= len(tokenizer) or at.first_token_id < 0:
            raise ValueError(
                f"action tokens {at.first_token_id}..{at.last_token_id} outside vocabulary of {len(tokenizer)}"
            )

    # ---- construction / persistence --------------------------------------------------------
    @classmethod
    def create(
        cls,
        preset: str | VLASpec = "tiny",
        action_stats: ActionStats | None = None,
        chunk_size: int = 3,
        proprio_stats: ActionStats | None = None,
        corpus: Sequence[str] | None = None,
        seed: int = 0,
        image_size: int | None = None,
        patch_size: int | None = None,
        vision_pos_init: str | None = None,
        vision_stem: str | None = None,
        cameras: Sequence[str] = CAMERAS,
    ) -> VLA:
        """A randomly initialised VLA reading the images of `cameras` (observation keys). Without
        `action_stats`, actions are assumed in [-1, 1]."""
        from ee_vla.models.text_tokenizer import build_text_tokenizer

        if isinstance(preset, str) and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
        spec = PRESETS[preset] if isinstance(preset, str) else preset
        if image_size is not None:
            spec = VLASpec(**{**asdict(spec), "image_size": image_size})
        if patch_size is not None:
            spec = VLASpec(**{**asdict(spec), "patch_size": patch_size})
        if vision_pos_init is not None:
            spec = VLASpec(**{**asdict(spec), "vision_pos_init": vision_pos_init})
        if vision_stem is not None:
            spec = VLASpec(**{**asdict(spec), "vision_stem": vision_stem})
        if spec.image_size % spec.patch_size:
            raise ValueError(f"image_size {spec.image_size} is not a multiple of patch_size {spec.patch_size}")
        stats = action_stats or ActionStats(q01=[-1.0] * 7, q99=[1.0] * 7, mask=[True] * 6 + [False])
        torch.manual_seed(seed)
        tok = build_text_tokenizer(corpus)
        net = build_network(spec, len(tok), tok.convert_tokens_to_ids("<image>"), tok.pad_token_id)
        at = ActionTokenizer.openvla(stats, vocab_size=len(tok))
        pt = ActionTokenizer.openvla(proprio_stats, vocab_size=len(tok)) if proprio_stats else None
        meta = {"preset": preset if isinstance(preset, str) else "custom", "spec": asdict(spec)}
        return cls(net, tok, at, chunk_size, spec.image_size, proprio_tokenizer=pt, meta=meta, cameras=cameras)

    def ee_vla_json(self) -> dict:
        """The content of the model directory's `ee_vla.json`."""
        extra = {
            "format_version": 1,
            "chunk_size": self.chunk_size,
            "image_size": self.image_size,
            "cameras": list(self.cameras),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "prompt_template": self.prompt_template,
            "action_tokenizer": self.action_tokenizer.to_dict(),
            "proprio_tokenizer": self.proprio_tokenizer.to_dict() if self.proprio_tokenizer else None,
            "meta": self.meta,
        }
        if self.contract:
            extra[CONTRACT_KEY] = self.contract
        return extra

    @property
    def model_contract(self) -> ModelContract:
        """What this policy expects of the robot or sim that runs it (`ee_vla.models.contract`)."""
        return ModelContract.from_extra(self.ee_vla_json())

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the model (safetensors), tokenizer and `ee_vla.json` to a directory."""
        _transformers_quiet()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # cast a copy: saving in bf16 must not change the live model's dtype
        model = self.model if dtype is None else copy.deepcopy(self.model).to(dtype)
        model.save_pretrained(path, safe_serialization=True)
        # safetensors writes through a temporary file created with mode 0600 and renames it
        # (safetensors/safetensors#782): give the weights the mode of the directory's other files
        mode = new_file_mode()
        for weights in path.glob("*.safetensors"):
            weights.chmod(mode)
        self.tokenizer.save_pretrained(path)
        extra = self.ee_vla_json()
        (path / EE_VLA_FILE).write_text(json.dumps(extra, indent=2))
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> VLA:
        """Load a directory written by `save_pretrained`; clear errors for anything missing/corrupt."""
        from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

        from ee_vla.models.network import VLANetwork

        _transformers_quiet()
        path = check_model_dir(path)
        try:
            extra = json.loads((path / EE_VLA_FILE).read_text())
            at = ActionTokenizer.from_dict(extra["action_tokenizer"])
            pt = ActionTokenizer.from_dict(extra["proprio_tokenizer"]) if extra.get("proprio_tokenizer") else None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{path / EE_VLA_FILE} is corrupt: {e}") from e
        _check_safetensors(path / "model.safetensors")
        try:
            # VLANetwork for a conv stem only: a stock Llava checkpoint keeps Llava's key mapping
            # (its saved `language_model.lm_head` is renamed for that class, not for a subclass)
            config = LlavaConfig.from_pretrained(path)
        except Exception as e:  # transformers raises many types for broken files
            raise ModelLoadError(f"could not read {path / 'config.json'}: {e}") from e
        try:
            check_config_bounds(config, extra, path)
        except (KeyError, TypeError) as e:
            raise ModelLoadError(f"{path / EE_VLA_FILE} is corrupt: {e!r}") from e
        ModelContract.from_extra(extra, where=str(path / EE_VLA_FILE))  # a malformed contract fails here
        try:
            conv = getattr(config.vision_config, "ee_vla_stem", "patch") == "conv"
            cls_ = VLANetwork if conv else LlavaForConditionalGeneration
            model, info = cls_.from_pretrained(
                path,
                config=config,
                dtype=dtype or torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported by name below instead of a generic error
            )
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises many types for broken files
            raise ModelLoadError(f"could not load the model in {path}: {e}") from e
        _check_loading_info(info, path)
        _check_finite_weights(model, path)
        try:
            return cls(
                model.to(device),
                tok,
                at,
                chunk_size=extra["chunk_size"],
                image_size=extra["image_size"],
                proprio_tokenizer=pt,
                image_mean=extra.get("image_mean", (0.5, 0.5, 0.5)),
                image_std=extra.get("image_std", (0.5, 0.5, 0.5)),
                prompt_template=extra.get("prompt_template", PROMPT_TEMPLATE),
                meta=extra.get("meta"),
                contract=extra.get(CONTRACT_KEY),
                cameras=extra.get("cameras", list(CAMERAS)),
            )
        except ValueError as e:
            raise ModelLoadError(f"{path / EE_VLA_FILE}: {e}") from e

    # ---- properties ---------------------------------------------------------------------
    @property
    def cameras(self) -> tuple[str, ...]:
        """The observation keys of the images the model reads, in the prompt's order. Settable (a
        fine-tune that adds a camera): the network's weights serve any number of cameras."""
        return self._cameras

    @cameras.setter
    def cameras(self, cameras: Sequence[str]) -> None:
        self._cameras = check_cameras(cameras)
        self._prompt_cache.clear()  # cached prompts hold one set of placeholders per camera

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def action_dim(self) -> int:
        return self.action_tokenizer.action_dim

    @property
    def proprio_dim(self) -> int:
        return self.proprio_tokenizer.action_dim if self.proprio_tokenizer else 0

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def non_text_ids(self) -> tuple[int, ...]:
        """Prompt ids that are not instruction text (image placeholders, padding, BOS): never drawn
        into a `prompt` initial guess."""
        return (self.image_token_id, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id)

    @property
    def action_range(self) -> tuple[int, int]:
        return (self.action_tokenizer.first_token_id, self.action_tokenizer.last_token_id)

    # ---- inputs -------------------------------------------------------------------------
    def camera_images(self, obs) -> list[np.ndarray]:
        """The images of the model's cameras, in order, from a mapping keyed by observation key (an
        observation, a training batch); KeyError naming a missing camera."""
        missing = [c for c in self.cameras if c not in obs]
        if missing:
            raise KeyError(f"no image of camera {missing[0]!r}: this model reads {list(self.cameras)}")
        return [obs[c] for c in self.cameras]

    def pixel_values(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(B * n_cameras, 3, S, S) model inputs: `images` is one (B, H, W, 3) uint8 array per camera
        of `cameras` (or the array itself for a one-camera model); row b * n_cameras + c is camera
        c of observation b, the order in which Llava's placeholders take their features."""
        per_camera = [images] if isinstance(images, np.ndarray) else list(images)
        if len(per_camera) != len(self.cameras):
            raise ValueError(f"{len(per_camera)} camera images for a model that reads {list(self.cameras)}")
        if len(per_camera) == 1:
            return self.preprocess_images(per_camera[0])
        sizes = {len(p) for p in per_camera}
        if len(sizes) != 1:
            raise ValueError(f"the cameras' images have different batch sizes: {[len(p) for p in per_camera]}")
        return torch.stack([self.preprocess_images(p) for p in per_camera], 1).flatten(0, 1)

    def preprocess_images(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, S, S) normalised float tensor on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        mean, std = self._normalisation(x.device)
        return ((x - mean) / std).to(self.model.dtype)

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) image mean and std on `device`, made once per device (building them
        per call is a host-to-device copy, which waits for the GPU's queue)."""
        key = (device, self.image_mean, self.image_std)
        if getattr(self, "_norm_key", None) != key:
            mean = torch.tensor(self.image_mean, device=device).view(1, 3, 1, 1)
            self._norm = (mean, torch.tensor(self.image_std, device=device).view(1, 3, 1, 1))
            self._norm_key = key
        return self._norm

    def _head_ids(self, instruction: str, template: str | None) -> list[int]:
        """BOS, the image placeholders and the templated instruction (cached: a training batch
        repeats a few dozen instructions)."""
        key = (instruction, template)
        ids = self._prompt_cache.get(key)
        if ids is None:
            text = prompt_text(instruction, template or self.prompt_template)
            ids = [self.tokenizer.bos_token_id] + [self.image_token_id] * (self.n_image_tokens * len(self.cameras))
            ids += self.tokenizer(text, add_special_tokens=False).input_ids
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids
        return ids

    def prompt_ids(self, instruction: str, proprio: np.ndarray | None = None, template: str | None = None) -> list[int]:
        """BOS, the image placeholders, the templated instruction (`template` or the model's
        prompt template) and the proprio tokens."""
        ids = list(self._head_ids(instruction, template))
        if self.proprio_tokenizer is not None:
            ids += self.proprio_tokenizer.encode(proprio).tolist()
        return ids

    def build_inputs(
        self,
        pixels: np.ndarray | Sequence[np.ndarray],
        instructions: Sequence[str],
        proprio: np.ndarray | None = None,
        templates: Sequence[str | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for a batch of validated observations: `pixels` is one (B, H, W,
        3) uint8 array per camera (`camera_images`), or the array itself for a one-camera model;
        `templates` a prompt template per row, None = the model's own (training uses it for
        grounding questions)."""
        B = len(instructions)
        tpl = templates if templates is not None else [None] * B
        heads = [self._head_ids(s, tpl[i]) for i, s in enumerate(instructions)]
        tail = None
        if self.proprio_tokenizer is not None:
            tail = self.proprio_tokenizer.encode(np.asarray(proprio).reshape(B, -1))
        n_tail = 0 if tail is None else tail.shape[1]
        lens = np.array([len(h) for h in heads]) + n_tail
        P = int(lens.max())
        ids = np.full((B, P), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = (np.arange(P)[None, :] >= (P - lens)[:, None]).astype(np.int64)
        for i, h in enumerate(heads):
            ids[i, P - lens[i] : P - n_tail] = h
        if tail is not None:
            ids[:, P - n_tail :] = tail
        ids_mask = torch.from_numpy(np.stack([ids, mask])).to(self.device)  # one copy to the device, not two
        return {"input_ids": ids_mask[0], "attention_mask": ids_mask[1], "pixel_values": self.pixel_values(pixels)}

    def tokens_to_actions(self, tokens: np.ndarray) -> np.ndarray:
        """(..., chunk_size * action_dim) -> (..., chunk_size, action_dim)."""
        return self.action_tokenizer.decode_chunk(tokens)
