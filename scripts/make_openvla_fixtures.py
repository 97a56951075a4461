#!/usr/bin/env python3
"""Make the OpenVLA conformance fixtures under tests/fixtures/openvla/.

The fixtures are tiny random checkpoints in the exact Hugging Face layout of OpenVLA checkpoints
(``config.json`` with ``model_type: openvla`` and an ``auto_map``, sharded safetensors,
``norm_stats``, a Llama-style tokenizer, ``preprocessor_config.json``), together with what the
public reference implementation (github.com/openvla/openvla, ``prismatic/extern/hf/*.py``)
computes on them: prompt token ids, the 7 greedy action tokens of ``predict_action``, the
unnormalized actions for two dataset keys, a 21-token greedy chunk, the top-5 logits of each
action step, and pixel-value statistics. ee_vla's native OpenVLA loader is tested against them.

The reference code is never copied into this repository. At run time the script reads its three
files from a bare git mirror of openvla/openvla (``--mirror``), writes them into a temporary
directory, imports them from there as a package and only calls them:
``OpenVLAConfig`` / ``OpenVLAForActionPrediction`` / ``PrismaticImageProcessor`` /
``PrismaticProcessor`` build the checkpoints and write them with their own ``save_pretrained``;
the checkpoints are then loaded back with ``from_pretrained`` (float32, CPU, eager attention) and
run the way the reference's README uses them::

    prompt = f"In: What action should the robot take to {instruction.lower()}?\\nOut:"
    inputs = processor(prompt, Image.fromarray(image))
    vla.predict_action(**inputs, unnorm_key=key, do_sample=False)

Isolated interpreter
--------------------
The reference pins transformers 4.40.1, tokenizers 0.19.1 and timm 0.9.10-0.9.16, which cannot
live beside ee_vla's own packages. The script therefore creates a virtual environment outside
the repository (``--venv``, default ``~/.cache/ee_vla/openvla-reference-venv``) from the base
interpreter of the running Python, installs the pins there and re-runs itself inside it:

* ``transformers==4.40.1``, ``tokenizers==0.19.1``, ``numpy<2`` (the numpy of that release
  line), pillow, safetensors, pyyaml, ``huggingface_hub<1.0`` and torch's pure-Python
  requirements (sympy, networkx, jinja2, filelock, fsspec, typing_extensions);
* ``timm==0.9.16`` without dependencies (its requirements list torch and torchvision, which
  pip would otherwise fetch as multi-GB CUDA builds);
* torch is not installed: the venv gets a folder of symbolic links to the ``torch``,
  ``torch-*.dist-info``, ``functorch`` and ``torchgen`` directories of the project's own
  (CPU) torch, named by a ``.pth`` file. ``.pth`` entries are appended to ``sys.path`` after the
  venv's site-packages and only those four names are visible, so the venv's transformers 4.40.1
  is the one imported and nothing else leaks in from the project environment;
* torchvision: PyPI's Linux wheel for the matching release (``0.<torch minor + 15>``, e.g.
  0.28.0 for torch 2.13) is installed without dependencies. It is built for CUDA, so its
  compiled extension does not load against the CPU torch and ``torchvision/__init__`` would
  fail while registering fake kernels for the extension's operators (nms, roi_align, ...). The
  generator process therefore puts an empty module in ``sys.modules`` under
  ``torchvision._meta_registrations`` before importing torchvision. Nothing else is replaced:
  the PIL-based transforms the reference calls (``resize``, ``center_crop``, ``pad``,
  ``to_tensor``, ``normalize`` and the ``Compose``/``Resize``/``CenterCrop``/``ToTensor``/
  ``Normalize`` classes timm's ``create_transform`` builds) are torchvision's own pure-Python code.

Tiny models
-----------
The reference creates its vision towers with ``timm.create_model(<real model id>,
pretrained=False, ...)``. Inside the generator ``timm.create_model`` is wrapped to add small
``embed_dim``/``depth``/``num_heads`` for the two model ids used (``TIMM_TINY``); everything else
(patch 14, image size 224, DINOv2's 4 registers and LayerScale, SigLIP's MAP head and
``mlp_ratio``) stays as timm defines it. These overrides are not recorded in ``config.json``
(real checkpoints name only the timm ids), so ``reference.json`` lists them under
``timm_overrides``. The language model is a 2-layer Llama (hidden 16, 4 heads, 2 key-value heads)
with the real 32000 + 64 vocabulary. Weights are drawn from a seeded generator with unit-scale
fan-in initialisation (the reference's own ``_init_weights`` gives outputs that ignore the image).
The language model's query/key projections are scaled up so that its attention is sharp enough for
the image and the instruction to change the result, the rows of the 256 action-bin tokens
(ids 31744-31999) of ``lm_head`` are scaled up so that every greedy step picks an action token,
and everything is stored in bfloat16.

The tokenizer is built with the ``tokenizers`` library in Llama-2's ``tokenizer.json`` form
(BPE with byte fallback, ``Prepend("▁")`` + ``Replace(" ", "▁")`` normalizer, no
pre-tokenizer): ids 0-2 ``<unk>``/``<s>``/``</s>``, 3-258 the byte tokens ``<0x00>``-``<0xFF>``,
word pieces for the instructions' words, 29871 ``"▁"`` followed by single characters, filler
pieces elsewhere, and ``<PAD>`` added as id 32000 like OpenVLA's conversion does. It is wrapped as
``LlamaTokenizerFast`` (``add_bos_token=True``, ``add_eos_token=False``) and saved by the
processor. No ``tokenizer.model`` (sentencepiece) file is written.

Usage::

    .venv/bin/python scripts/make_openvla_fixtures.py            # writes tests/fixtures/openvla
    .venv/bin/python scripts/make_openvla_fixtures.py --venv /tmp/ovref --out /tmp/fixtures

Only CPU is used; a run takes a few minutes, most of it creating the venv the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "ee_vla" / "openvla-reference-venv"
DEFAULT_MIRROR = Path("/work/.mirror/openvla+openvla/repo")
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "openvla"
REFERENCE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
REFERENCE_DIR = "prismatic/extern/hf"
INSIDE_ENV = "EE_VLA_OPENVLA_REFERENCE_INSIDE"

PINS = [
    "transformers==4.40.1",
    "tokenizers==0.19.1",
    "numpy<2",
    "pillow",
    "safetensors",
    "pyyaml",
    "huggingface_hub<1.0",
    "sympy",
    "networkx",
    "jinja2",
    "filelock",
    "fsspec",
    "typing_extensions",
]
TIMM_PIN = "timm==0.9.16"
TORCH_LINKS = ("torch", "functorch", "torchgen")

# Tiny tower sizes, keyed by the timm model id the reference asks for.
TIMM_TINY = {
    "vit_large_patch14_reg4_dinov2.lvd142m": {"embed_dim": 32, "depth": 3, "num_heads": 2},
    "vit_so400m_patch14_siglip_224": {"embed_dim": 48, "depth": 3, "num_heads": 3},
}
TEXT_CONFIG = {
    "hidden_size": 16,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
CHECKPOINTS = {
    "A": {
        "dir": "openvla-tiny-dinosiglip-224px",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "image_resize_strategy": "resize-naive",
        "max_shard_size": "2MB",
        "seed": 11,  # of seeds 1-16, the one whose greedy steps are least close to ties
    },
    "B": {
        "dir": "openvla-tiny-siglip-224px-letterbox",
        "vision_backbone_id": "siglip-vit-so400m",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+gelu-mlp",
        "image_resize_strategy": "letterbox",
        "max_shard_size": None,
        "seed": 2,
    },
}
INSTRUCTIONS = [
    "Pick up the red block",
    "open the top drawer",
    "Put the cup to the left of the plate",
    "move the sponge into the sink",
    "put the carrot on the plate",
    "close the drawer",
    "Place the spoon in the café bowl",
    "push the blue button",
]
# (image index, instruction index): each image with its own instruction, then two pairs that share
# an image or an instruction with the first cases.
CASES = [(i, i) for i in range(8)] + [(0, 1), (1, 0)]
IMAGE_SIZES = [(40, 56), (56, 40), (48, 48), (36, 64), (30, 80), (72, 44), (50, 50), (24, 33)]  # (h, w)
UNNORM_KEYS = ("bridge_orig", "fractal20220817_data")
N_ACTION_BINS = 256
ACTION_ROW_SCALE = 3.0
QK_GAIN = 3.0  # sharper language-model attention: without it the last position averages the input away
# The reference's default in transformers 4.40.1. "eager" fails on the reference's own usage:
# predict_action appends token 29871 to input_ids but not to attention_mask, and the eager
# path sizes its causal mask from attention_mask (278 vs 277 keys); SDPA drops an all-ones mask.
ATTN = "sdpa"
FULL_PIXEL_CASES = (0, 3)
# Preprocessing of a single SigLIP tower with letterbox padding: a preprocessor_config.json and the
# pixel values it gives (a full checkpoint B costs more than the fixture budget allows).
LETTERBOX_PREPROCESSOR = {
    "dir": "siglip-224px-letterbox-preprocessor",
    "vision_backbone_id": "siglip-vit-so400m",
    "image_resize_strategy": "letterbox",
}  # cases of checkpoint A whose pixel_values are stored whole (float16)


# ---------------------------------------------------------------------------------------------
# Outside: the venv
# ---------------------------------------------------------------------------------------------


def _torchvision_for(torch_version: str) -> str:
    major, minor = (int(x) for x in torch_version.split("+")[0].split(".")[:2])
    if major != 2:
        raise SystemExit(f"no torchvision rule for torch {torch_version}; pass --torchvision")
    return f"0.{minor + 15}.0"


def _project_torch() -> tuple[Path, str]:
    """The site-packages directory holding the running interpreter's torch, and its version."""
    import importlib.metadata

    import torch

    return Path(torch.__file__).resolve().parents[1], importlib.metadata.version("torch")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, base_python: str, torchvision: str | None) -> Path:
    """Create (or reuse) the isolated reference venv; returns its python."""
    site, torch_version = _project_torch()
    torchvision = torchvision or _torchvision_for(torch_version)
    want = {
        "pins": PINS,
        "timm": TIMM_PIN,
        "torchvision": torchvision,
        "torch_site": str(site),
        "torch": torch_version,
    }
    stamp = venv / "ee_vla-reference-stamp.json"
    py = _venv_python(venv)
    if stamp.is_file() and py.exists() and json.loads(stamp.read_text()) == want:
        return py
    print(f"[venv] creating {venv} from {base_python}", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PINS], check=True)
    subprocess.run([*pip, "--no-deps", TIMM_PIN, f"torchvision=={torchvision}"], check=True)
    links = venv / "project-torch"
    links.mkdir()
    names = list(TORCH_LINKS) + [p.name for p in site.glob("torch-*.dist-info")]
    for name in names:
        if (site / name).exists():
            (links / name).symlink_to(site / name)
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A name sorting after the venv's own .pth files; .pth directories go after site-packages.
    (Path(purelib) / "zz_ee_vla_project_torch.pth").write_text(f"{links}\n")
    stamp.write_text(json.dumps(want, indent=1))
    return py


# ---------------------------------------------------------------------------------------------
# Inside: the generator (runs in the reference venv)
# ---------------------------------------------------------------------------------------------


def _git(mirror: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(mirror), *args], check=True, capture_output=True, text=True).stdout


def import_reference(mirror: Path, commit: str, tmp: Path):
    """Write the reference's hf files into tmp/openvla_reference/ and import them."""
    import importlib
    import types

    # torchvision's CUDA extension cannot load against a CPU torch; its fake-kernel module
    # registers kernels for the extension's operators, so it is skipped (see the docstring).
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision.transforms.functional  # noqa: F401

    pkg = tmp / "openvla_reference"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in REFERENCE_FILES:
        (pkg / name).write_text(_git(mirror, "show", f"{commit}:{REFERENCE_DIR}/{name}"))
    sys.path.insert(0, str(tmp))
    cfg = importlib.import_module("openvla_reference.configuration_prismatic")
    mdl = importlib.import_module("openvla_reference.modeling_prismatic")
    prc = importlib.import_module("openvla_reference.processing_prismatic")
    return cfg, mdl, prc


def patch_timm_tiny():
    import timm

    real = timm.create_model
    if getattr(real, "_ee_vla_tiny", False):
        return

    def create_model(model_name, *args, **kwargs):
        return real(model_name, *args, **{**kwargs, **TIMM_TINY.get(model_name, {})})

    create_model._ee_vla_tiny = True
    timm.create_model = create_model


# --- tokenizer --------------------------------------------------------------------------------

SPECIAL = ["<unk>", "<s>", "</s>"]
SPACE_ID = 29871
ALPHABET = list("etaoinsrhldcumfpgywbvkxjqzETAOINSRHLDCUMFPGYWBVKXJQZ0123456789.,:?!'-()/\"")
EXTRA_PIECES = ["er", "ing", "ed", "s", "Out"]


def _tokenizer_words() -> list[str]:
    words = set("In What action should the robot take to Out".split())
    for ins in INSTRUCTIONS:
        words.update(ins.lower().split())
    # Only the first four letters of the long words: they split into several pieces.
    pieces = []
    for w in sorted(words):
        w = "".join(c for c in w if c in ALPHABET)
        if not w:
            continue
        pieces.append("▁" + (w[:4] if len(w) > 6 else w))
    return pieces


def build_tokenizer(save_tmp: Path):
    """A Llama-2-shaped fast tokenizer (32000 pieces + <PAD>), as transformers' LlamaTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizerFast

    vocab: dict[str, int] = {}

    def add(piece: str, idx: int | None = None):
        if piece in vocab:
            return
        vocab[piece] = len(vocab) if idx is None else idx

    for s in SPECIAL:
        add(s)
    for b in range(256):
        add(f"<0x{b:02X}>")
    merges: list[tuple[str, str]] = []
    merged: list[str] = []
    for word in EXTRA_PIECES + _tokenizer_words():
        cur = word[0]
        for ch in word[1:]:
            nxt = cur + ch
            if nxt not in merged:
                merges.append((cur, ch))
                merged.append(nxt)
            cur = nxt
    for p in merged:
        add(p)
    # Filler up to the "▁" id: two CJK characters each (never produced, no merges build them).
    k = 0
    while len(vocab) < SPACE_ID:
        add(chr(0x4E00 + k // 256) + chr(0x4E00 + k % 256))
        k += 1
    add("▁")
    for ch in ALPHABET:
        add(ch)
    k = 0
    while len(vocab) < 32000:  # single rare characters, like the end of Llama-2's vocabulary
        add(chr(0x3400 + k))
        k += 1
    assert len(vocab) == 32000 and vocab["▁"] == SPACE_ID
    assert all(a in vocab and b in vocab for a, b in merges)

    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIAL])
    path = save_tmp / "tokenizer.json"
    tok.save(str(path))
    fast = LlamaTokenizerFast(
        tokenizer_file=str(path),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
        padding_side="right",
    )
    fast.add_special_tokens({"pad_token": "<PAD>"})
    fast.init_kwargs.pop("add_prefix_space", None)
    assert fast.pad_token_id == 32000 and fast.convert_tokens_to_ids("▁") == SPACE_ID
    return fast


# --- norm stats -------------------------------------------------------------------------------


def make_norm_stats(rng) -> dict:
    stats = {}
    for key in UNNORM_KEYS:
        lo = -rng.uniform(0.01, 0.3, 7)
        hi = rng.uniform(0.01, 0.3, 7)
        lo[6], hi[6] = 0.0, 1.0  # gripper
        mean = (lo + hi) / 2 + rng.normal(0, 0.01, 7)
        std = (hi - lo) / 4
        action = {
            "mean": mean,
            "std": std,
            "max": hi * 1.5,
            "min": lo * 1.5,
            "q01": lo,
            "q99": hi,
            "mask": [True] * 6 + [False],
        }
        proprio = {k: [0.0] * 7 for k in ("mean", "std", "max", "min", "q01", "q99")}
        stats[key] = {
            "action": {k: (v if isinstance(v, list) else [float(x) for x in v]) for k, v in action.items()},
            "proprio": proprio,
            "num_transitions": int(rng.integers(100_000, 4_000_000)),
            "num_trajectories": int(rng.integers(1_000, 90_000)),
        }
    return stats


# --- checkpoints ------------------------------------------------------------------------------


def randomize(model, seed: int, action_ids: range) -> None:
    """Seeded unit-scale weights; Llama's q/k projections scaled by QK_GAIN and the action-bin rows
    of lm_head by ACTION_ROW_SCALE."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "scale_factor":  # LayerScale
                v = 0.2 + 0.3 * torch.rand(p.shape, generator=g)
            elif leaf == "bias":
                v = 0.1 * r
            elif p.dim() == 1 and "norm" in name:
                v = 1.0 + 0.1 * r
            elif leaf in ("pos_embed", "cls_token", "reg_token", "latent"):
                v = 0.5 * r
            elif name.endswith("embed_tokens.weight"):
                v = r
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                v = r / fan_in**0.5
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    v *= QK_GAIN
                if name.endswith("lm_head.weight"):
                    v[action_ids.start : action_ids.stop] *= ACTION_ROW_SCALE
            else:
                v = 0.1 * r
            p.copy_(v)


def make_image_processor(config, prc_mod):
    """PrismaticImageProcessor from the towers' timm data configs, as OpenVLA's conversion does."""
    import timm
    import timm.data

    input_sizes, interpolations, means, stds = [], [], [], []
    for idx, timm_id in enumerate(config.timm_model_ids):
        tower = timm.create_model(
            timm_id,
            pretrained=False,
            num_classes=0,
            img_size=config.image_sizes[idx],
            act_layer=config.timm_override_act_layers[idx],
        )
        data_cfg = timm.data.resolve_model_data_config(tower)
        input_sizes.append((3, config.image_sizes[idx], config.image_sizes[idx]))
        interpolations.append(data_cfg["interpolation"])
        means.append(data_cfg["mean"])
        stds.append(data_cfg["std"])
    return prc_mod.PrismaticImageProcessor(
        use_fused_vision_backbone=config.use_fused_vision_backbone,
        image_resize_strategy=config.image_resize_strategy,
        input_sizes=input_sizes,
        interpolations=interpolations,
        means=means,
        stds=stds,
    )


def build_checkpoint(spec: dict, out: Path, tokenizer, norm_stats: dict, ref) -> dict:
    import torch

    cfg_mod, mdl_mod, prc_mod = ref
    config = cfg_mod.OpenVLAConfig(
        vision_backbone_id=spec["vision_backbone_id"],
        llm_backbone_id=spec["llm_backbone_id"],
        arch_specifier=spec["arch_specifier"],
        image_resize_strategy=spec["image_resize_strategy"],
        llm_max_length=2048,
        torch_dtype=torch.bfloat16,
        norm_stats=norm_stats,
        text_config=dict(TEXT_CONFIG),
    )
    # As OpenVLA's conversion does: vocabulary padded by pad_to_multiple_of, <PAD> = 32000.
    config.text_config.vocab_size += config.pad_to_multiple_of
    config.text_config.pad_token_id = config.pad_token_id
    config.text_config.torch_dtype = torch.bfloat16

    image_processor = make_image_processor(config, prc_mod)
    processor = prc_mod.PrismaticProcessor(image_processor=image_processor, tokenizer=tokenizer)

    torch.manual_seed(spec["seed"])
    model = mdl_mod.OpenVLAForActionPrediction(config)
    n_vocab = config.text_config.vocab_size - config.pad_to_multiple_of
    randomize(model, spec["seed"], range(n_vocab - N_ACTION_BINS, n_vocab))
    model.to(torch.bfloat16)

    cfg_mod.OpenVLAConfig.register_for_auto_class()
    prc_mod.PrismaticImageProcessor.register_for_auto_class("AutoImageProcessor")
    prc_mod.PrismaticProcessor.register_for_auto_class("AutoProcessor")
    mdl_mod.OpenVLAForActionPrediction.register_for_auto_class("AutoModelForVision2Seq")

    if out.exists():
        shutil.rmtree(out)
    kw = {"max_shard_size": spec["max_shard_size"]} if spec["max_shard_size"] else {}
    model.save_pretrained(out, **kw)
    image_processor.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "dataset_statistics.json").write_text(json.dumps(norm_stats, indent=2) + "\n")
    for py in out.glob("*.py"):  # the auto_map's module copies: not part of the fixtures
        py.unlink()
    return {"timm_overrides": {t: TIMM_TINY[t] for t in config.timm_model_ids}}


def build_preprocessor(spec: dict, out: Path, ref) -> None:
    """A preprocessor_config.json alone (no weights), written by the reference's save_pretrained."""
    cfg_mod, _, prc_mod = ref
    config = cfg_mod.OpenVLAConfig(
        vision_backbone_id=spec["vision_backbone_id"], image_resize_strategy=spec["image_resize_strategy"]
    )
    prc_mod.PrismaticImageProcessor.register_for_auto_class("AutoImageProcessor")
    prc_mod.PrismaticProcessor.register_for_auto_class("AutoProcessor")
    if out.exists():
        shutil.rmtree(out)
    make_image_processor(config, prc_mod).save_pretrained(out)
    for py in out.glob("*.py"):
        py.unlink()


def run_preprocessor(pre_dir: Path, ref, images, save_pixels: tuple[int, ...]):
    import numpy as np
    from PIL import Image

    _, _, prc_mod = ref
    image_processor = prc_mod.PrismaticImageProcessor.from_pretrained(pre_dir)
    cases, pixels = [], {}
    for i, img in enumerate(images):
        pv = image_processor(Image.fromarray(img), return_tensors="pt")["pixel_values"]
        case = {"case": i, "image": f"image_{i}", "image_shape": list(img.shape), "pixel_values": _pixel_stats(pv)}
        if i in save_pixels:
            case["pixel_values"]["npz_key"] = f"pixel_values/{pre_dir.name}/{i}"
            pixels[case["pixel_values"]["npz_key"]] = pv.numpy()[0].astype(np.float16)
        cases.append(case)
    return cases, pixels


def _pixel_stats(pv) -> dict:
    import numpy as np

    x = pv.numpy().astype(np.float64)[0]
    return {
        "shape": list(pv.shape),
        "dtype": str(pv.dtype).replace("torch.", ""),
        "channel_sum": x.sum(axis=(1, 2)).tolist(),
        "channel_abs_sum": np.abs(x).sum(axis=(1, 2)).tolist(),
    }


# --- running the reference --------------------------------------------------------------------


def make_images(seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = []
    for h, w in IMAGE_SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [
                255 * xx / max(w - 1, 1),
                255 * yy / max(h - 1, 1),
                127 + 100 * np.sin((xx + yy) / rng.uniform(2, 6)),
            ],
            axis=-1,
        )
        noise = rng.normal(0, rng.uniform(10, 60), (h, w, 3))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)  # a solid block
        images.append(img)
    return images


def run_reference(ckpt_dir: Path, ref, images, save_pixels: tuple[int, ...]):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import LlamaTokenizerFast

    _, mdl_mod, prc_mod = ref
    vla = mdl_mod.OpenVLAForActionPrediction.from_pretrained(
        ckpt_dir, torch_dtype=torch.float32, attn_implementation=ATTN
    ).eval()
    processor = prc_mod.PrismaticProcessor(
        image_processor=prc_mod.PrismaticImageProcessor.from_pretrained(ckpt_dir),
        tokenizer=LlamaTokenizerFast.from_pretrained(ckpt_dir),
    )
    seen = []
    real_generate = vla.generate

    def recording_generate(input_ids, *args, **kwargs):
        generated = real_generate(input_ids, *args, **kwargs)
        seen.append((input_ids.clone(), generated[0, input_ids.shape[1] :].tolist()))
        return generated

    vla.generate = recording_generate
    cases, pixels = [], {}
    for i, (image_idx, instruction_idx) in enumerate(CASES):
        img, instruction = images[image_idx], INSTRUCTIONS[instruction_idx]
        prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
        inputs = processor(prompt, Image.fromarray(img))
        pv = inputs["pixel_values"]
        actions, tokens = {}, None
        with torch.no_grad():
            for key in UNNORM_KEYS:
                seen.clear()
                a = vla.predict_action(**inputs, unnorm_key=key, do_sample=False)
                ((model_ids, t),) = seen
                assert tokens is None or t == tokens, "action tokens depend on unnorm_key"
                tokens = t
                actions[key] = [float(x) for x in np.asarray(a, dtype=np.float64)]
        chunk = real_generate(
            model_ids,
            attention_mask=inputs["attention_mask"],
            pixel_values=pv,
            max_new_tokens=21,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        chunk_ids = chunk.sequences[0, model_ids.shape[1] :].tolist()
        assert chunk_ids[:7] == tokens, (chunk_ids, tokens)
        top5 = []
        for s in chunk.scores:
            v, ix = torch.topk(s[0].float(), 5)
            top5.append({"ids": ix.tolist(), "logits": [round(float(x), 6) for x in v]})
        n_vocab = vla.vocab_size
        bins = np.clip(n_vocab - np.asarray(tokens) - 1, 0, vla.bin_centers.shape[0] - 1)
        case = {
            "case": i,
            "image": f"image_{image_idx}",
            "image_shape": list(img.shape),
            "instruction": instruction,
            "prompt": prompt,
            "processor_input_ids": inputs["input_ids"][0].tolist(),
            "attention_mask_len": int(inputs["attention_mask"].shape[1]),
            "input_ids": model_ids[0].tolist(),
            "action_token_ids": tokens,
            "action_bin_indices": bins.tolist(),
            "normalized_actions": [float(x) for x in vla.bin_centers[bins]],
            "actions": actions,
            "chunk_token_ids": chunk_ids,
            "chunk_top5": top5,
            "pixel_values": _pixel_stats(pv),
        }
        if i in save_pixels:
            case["pixel_values"]["npz_key"] = f"pixel_values/{ckpt_dir.name}/{i}"
            pixels[case["pixel_values"]["npz_key"]] = pv.numpy()[0].astype(np.float16)
        cases.append(case)
        print(f"[ref] {ckpt_dir.name} case {i}: tokens {tokens}", flush=True)
    return cases, pixels


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def generate(args) -> None:
    import importlib.metadata

    import numpy as np

    mirror = Path(args.mirror)
    commit = _git(mirror, "rev-parse", args.commit).strip()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = int(args.budget_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="openvla-reference-") as tmp:
        tmp = Path(tmp)
        ref = import_reference(mirror, commit, tmp)
        patch_timm_tiny()
        tokenizer = build_tokenizer(tmp)
        norm_stats = make_norm_stats(np.random.default_rng(args.seed))
        images = make_images(args.seed)
        arrays = {f"image_{i}": img for i, img in enumerate(images)}
        report = {
            "generator": "scripts/make_openvla_fixtures.py",
            "reference": {
                "repository": "https://github.com/openvla/openvla",
                "commit": commit,
                "files": [f"{REFERENCE_DIR}/{n}" for n in REFERENCE_FILES],
            },
            "versions": {
                name: importlib.metadata.version(name)
                for name in ("transformers", "tokenizers", "timm", "torch", "torchvision", "numpy", "pillow")
            },
            "prompt_template": "In: What action should the robot take to {instruction.lower()}?\nOut:",
            "unnorm_keys": list(UNNORM_KEYS),
            "arrays": "reference_arrays.npz",
            "checkpoints": {},
        }
        wanted = [c for c in args.checkpoints.split(",") if c]
        for name, spec in CHECKPOINTS.items():
            if name not in wanted and (out / spec["dir"]).exists():
                shutil.rmtree(out / spec["dir"])
        for name in wanted:
            spec = dict(CHECKPOINTS[name])
            if args.weight_seed is not None:
                spec["seed"] = args.weight_seed
            ckpt = out / spec["dir"]
            info = build_checkpoint(spec, ckpt, tokenizer, norm_stats, ref)
            cases, pixels = run_reference(ckpt, ref, images, FULL_PIXEL_CASES if name == "A" else ())
            arrays.update(pixels)
            distinct = len({tuple(c["action_token_ids"]) for c in cases})
            margins = [t["logits"][0] - t["logits"][1] for c in cases for t in c["chunk_top5"]]
            report["checkpoints"][name] = {
                "path": spec["dir"],
                **{k: spec[k] for k in ("vision_backbone_id", "llm_backbone_id", "arch_specifier")},
                "image_resize_strategy": spec["image_resize_strategy"],
                **info,
                "weight_seed": spec["seed"],
                "weights_dtype": "bfloat16",
                "run_dtype": "float32",
                "attn_implementation": ATTN,
                "distinct_action_token_sequences": distinct,
                "min_top1_top2_logit_margin": round(min(margins), 6),
                "cases": cases,
            }
            print(
                f"[ref] {name}: {distinct} distinct action-token sequences over {len(cases)} cases, "
                f"smallest top-1/top-2 logit margin {min(margins):.4f}",
                flush=True,
            )
            if distinct < len(cases) // 2:
                raise SystemExit(f"checkpoint {name}: action tokens barely depend on the input ({distinct})")
        pre = out / LETTERBOX_PREPROCESSOR["dir"]
        build_preprocessor(LETTERBOX_PREPROCESSOR, pre, ref)
        cases, pixels = run_preprocessor(pre, ref, images, FULL_PIXEL_CASES[:1])
        arrays.update(pixels)
        report["preprocessors"] = {
            "letterbox": {"path": LETTERBOX_PREPROCESSOR["dir"], **LETTERBOX_PREPROCESSOR, "cases": cases}
        }
        del report["preprocessors"]["letterbox"]["dir"]
        np.savez_compressed(out / "reference_arrays.npz", **arrays)
        (out / "reference.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        size = du_bytes(out)
        print(f"[size] {out}: {size / 2**20:.2f} MiB in total", flush=True)
        if size > budget:
            raise SystemExit(f"fixtures exceed the {args.budget_mb} MiB budget")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="isolated reference venv (created if missing)")
    p.add_argument("--python", default=None, help="base interpreter for the venv (default: this one's base)")
    p.add_argument("--torchvision", default=None, help="torchvision version (default: the one matching torch)")
    p.add_argument("--mirror", default=str(DEFAULT_MIRROR), help="bare git mirror of openvla/openvla")
    p.add_argument("--commit", default="HEAD", help="revision of the mirror to run")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="fixture directory")
    p.add_argument(
        "--checkpoints",
        default="A",
        help="checkpoints to build: A (DINOv2+SigLIP, resize-naive, the fixtures), B (SigLIP, letterbox; "
        "about 2.3 MiB more, over the default budget)",
    )
    p.add_argument("--weight-seed", type=int, default=None, help="seed of the weights (default: per checkpoint)")
    p.add_argument("--budget-mb", type=float, default=5.0, help="size limit of the fixture directory (MiB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and the norm stats")
    args = p.parse_args(argv)

    if os.environ.get(INSIDE_ENV) == "1":
        generate(args)
        return 0
    base = args.python or getattr(sys, "_base_executable", None) or sys.executable
    py = ensure_venv(Path(args.venv).expanduser(), base, args.torchvision)
    env = {**os.environ, INSIDE_ENV: "1", "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    cmd = [str(py), str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])]
    return subprocess.run(cmd, env=env, cwd=tempfile.gettempdir()).returncode


if __name__ == "__main__":
    sys.exit(main())
