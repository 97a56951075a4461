"""OpenVLA-format checkpoints against the reference implementation (openvla/openvla's
prismatic/extern/hf), whose outputs on tiny random checkpoints are the fixtures in
tests/fixtures/openvla (scripts/make_openvla_fixtures.py made them; the reference is not here).

The fixture's towers are smaller than their timm models, so their attention heads are given as
`timm_model_args` in a copy of its config.json (`openvla_dir`, tests/conftest.py), as such a
checkpoint has to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ee_vla.models import ModelLoadError, check_model_dir, load_vla
from ee_vla.models.openvla import OpenVLA, is_openvla_dir, read_openvla
from ee_vla.policy import PolicyConfig, VLAPolicy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openvla"
REF = json.loads((FIXTURES / "reference.json").read_text())
CKPT = REF["checkpoints"]["A"]
CASES = CKPT["cases"]
KEYS = REF["unnorm_keys"]


@pytest.fixture(scope="module")
def arrays():
    return np.load(FIXTURES / REF["arrays"])


@pytest.fixture(scope="module")
def ckpt(openvla_dir) -> Path:
    return openvla_dir


@pytest.fixture(scope="module")
def vlas(ckpt) -> dict[str, OpenVLA]:
    return {key: OpenVLA.from_pretrained(ckpt, unnorm_key=key) for key in KEYS}


def _policy(vla, decoder="ar", engine="eager") -> VLAPolicy:
    return VLAPolicy(vla, PolicyConfig(decoder=decoder, device="cpu", engine=engine))


def _tokens(policy: VLAPolicy, obs: dict) -> np.ndarray:
    policy.reset()
    actions = policy.predict_action_chunk(obs)
    return policy.warm_start_tokens.cpu().numpy(), actions


def test_the_format_is_recognised_and_read_without_torch(ckpt):
    assert is_openvla_dir(ckpt) and check_model_dir(ckpt) == ckpt
    fmt = read_openvla(ckpt)
    assert [t.kind for t in fmt.towers] == ["dinov2", "siglip"] and fmt.projector_layers == 3
    assert fmt.n_image_tokens == 256 and fmt.vocab_size == 32000 and len(fmt.weight_files) == 2  # sharded
    assert sorted(fmt.norm_stats) == sorted(KEYS)
    from ee_vla.models import read_contract  # what the sim bridge and the node take their defaults from

    c = read_contract(ckpt)
    assert (c.chunk_size, c.action_dim, c.image_size, c.proprio_dim, c.control_hz) == (1, 7, 224, 0, None)


def test_prompt_ids_and_pixels_are_the_reference_processors(vlas, arrays):
    vla = vlas[KEYS[0]]
    for c in CASES:
        ids = vla.prompt_ids(c["instruction"])
        n = vla.n_image_tokens
        assert ids[1 : 1 + n] == [vla.image_token_id] * n  # the image follows BOS
        assert [ids[0], *ids[1 + n :]] == c["input_ids"], c["case"]  # with predict_action's 29871
        px = vla.preprocess_images(arrays[c["image"]][None])[0].double()
        np.testing.assert_allclose(px.sum((1, 2)).numpy(), c["pixel_values"]["channel_sum"], rtol=1e-9, atol=1e-6)
        full = f"pixel_values/{CKPT['path']}/{c['case']}"
        if full in arrays:  # stored as float16
            np.testing.assert_allclose(px.numpy(), arrays[full].astype(np.float64), atol=2e-3)


@pytest.mark.parametrize("key", KEYS)
def test_action_tokens_and_actions_are_the_references(vlas, arrays, key):
    """predict_action's 7 tokens exactly, its actions to float precision, for each dataset's statistics."""
    policy = _policy(vlas[key])
    for c in CASES:
        tokens, actions = _tokens(policy, {"pixels": arrays[c["image"]], "instruction": c["instruction"]})
        assert tokens[0].tolist() == c["action_token_ids"], c["case"]
        np.testing.assert_allclose(actions.reshape(-1), c["actions"][key], rtol=1e-6, atol=1e-7)


def _decoders(vla):
    """AR, Jacobi run to convergence and CEED with tau 0 (exact): each must give AR's tokens."""
    ceed = _policy(vla, "ceed")
    ceed.decoder = ceed.decoder.with_(tau=0)
    return {"ar": _policy(vla), "jacobi": _policy(vla, "jacobi"), "ceed": ceed}


def test_a_chunk_of_three_decodes_the_references_greedy_21_tokens_with_every_decoder(ckpt, arrays):
    """chunk_size 3: AR gives the reference's generate(max_new_tokens=21) tokens, and so do Jacobi
    and CEED over the whole 21-token window; batched (left-padded prompts) as one at a time."""
    vla = OpenVLA.from_pretrained(ckpt, unnorm_key=KEYS[0], chunk_size=3)
    decoders = _decoders(vla)
    for c in CASES:
        obs = {"pixels": arrays[c["image"]], "instruction": c["instruction"]}
        for name, policy in decoders.items():
            assert _tokens(policy, obs)[0][0].tolist() == c["chunk_token_ids"], (name, c["case"])
    image = arrays[CASES[2]["image"]]  # one image, every instruction: prompts of 20 to 27 tokens
    batch = {"pixels": np.stack([image] * len(CASES)), "instruction": [c["instruction"] for c in CASES]}
    one_by_one = [_tokens(decoders["ar"], {"pixels": image, "instruction": c["instruction"]})[0][0] for c in CASES]
    for name, policy in decoders.items():
        assert _tokens(policy, batch)[0].tolist() == np.stack(one_by_one).tolist(), name


def test_the_static_engine_with_the_vision_towers_in_its_prefill_gives_the_same_tokens(vlas, arrays):
    policy = _policy(vlas[KEYS[0]], "jacobi", engine="static")
    for c in CASES[:3]:
        tokens, _ = _tokens(policy, {"pixels": arrays[c["image"]], "instruction": c["instruction"]})
        assert tokens[0].tolist() == c["action_token_ids"]


def test_a_single_file_checkpoint_loads_the_same_weights(ckpt, tmp_path, vlas):
    from safetensors.torch import load_file, save_file

    single = tmp_path / "single"
    shutil.copytree(ckpt, single)
    merged: dict[str, torch.Tensor] = {}
    for f in read_openvla(ckpt).weight_files:
        merged |= load_file(f)
        (single / f.name).unlink()
    (single / "model.safetensors.index.json").unlink()
    save_file(merged, single / "model.safetensors")
    vla = load_vla(single, unnorm_key=KEYS[0])
    ref = vlas[KEYS[0]].model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in vla.model.state_dict().items())


def test_unnorm_key_is_required_when_there_are_several_and_must_exist(ckpt):
    with pytest.raises(ModelLoadError, match="unnorm_key") as e:
        load_vla(ckpt)
    assert all(k in str(e.value) for k in KEYS)
    with pytest.raises(ModelLoadError, match="not in"):
        load_vla(ckpt, unnorm_key="no_such_dataset")


def test_broken_checkpoints_are_named(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    shard = read_openvla(bad).weight_files[-1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        check_model_dir(bad)
    shutil.copy(ckpt / shard.name, shard)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["timm_model_ids"][1] = "vit_large_patch14_clip_224.openai"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="not supported"):
        check_model_dir(bad)
    del cfg["timm_model_args"]
    cfg["timm_model_ids"][1] = "vit_so400m_patch14_siglip_224"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="num_heads"):
        check_model_dir(bad)


def test_the_letterbox_processor_of_a_single_tower_gives_the_references_pixels(arrays):
    """SigLIP alone with `letterbox`: the border's colour, the odd pixel of an odd padding (24x33
    -> 32x33), the resize of the shorter side and the centre crop, against the reference's sums."""
    from ee_vla.models.openvla.format import read_image_processor
    from ee_vla.models.openvla.processor import preprocess

    spec = REF["preprocessors"]["letterbox"]
    strategy, transforms, fill = read_image_processor(FIXTURES / spec["path"], 1)
    assert strategy == "letterbox" and fill == (127, 127, 127)
    for c in spec["cases"]:
        px = preprocess(arrays[c["image"]][None], transforms, strategy, fill)[0].double()
        np.testing.assert_allclose(px.sum((1, 2)).numpy(), c["pixel_values"]["channel_sum"], rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(px.abs().sum((1, 2)).numpy(), c["pixel_values"]["channel_abs_sum"], rtol=1e-9)
        key = c["pixel_values"].get("npz_key")
        if key:  # stored as float16
            np.testing.assert_allclose(px.numpy(), arrays[key].reshape(px.shape).astype(np.float64), atol=2e-3)


def test_save_pretrained_writes_the_openvla_layout_back(ckpt, tmp_path, arrays):
    """A changed network saved and loaded again: every weight round-trips through timm's names
    (q, k and v back into qkv), the checkpoint's other tensors and files are kept, and the chunk
    size is recorded in config.json."""
    from safetensors import safe_open

    vla = OpenVLA.from_pretrained(ckpt, unnorm_key=KEYS[0], chunk_size=3)
    with torch.no_grad():
        for name, p in vla.model.named_parameters():
            if not name.endswith("mask_token"):  # pre-training only: not in the checkpoint
                p.add_(0.01 * torch.randn_like(p))
            if name.endswith("embeddings.position_embeddings"):
                p[:, 0] = 0  # DINOv2's class token has no position in timm's layout
    out = vla.save_pretrained(tmp_path / "student")
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        saved = set(fh.keys())
    source = set()
    for f in read_openvla(ckpt).weight_files:
        with safe_open(str(f), framework="pt") as fh:
            source |= set(fh.keys())
    assert saved == source and (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["ee_vla_chunk_size"] == 3
    again = load_vla(out, unnorm_key=KEYS[0])
    assert again.chunk_size == 3
    mine = vla.model.state_dict()
    differ = [k for k, v in again.model.state_dict().items() if not torch.equal(v, mine[k])]
    assert differ == []
    obs = {"pixels": arrays[CASES[0]["image"]], "instruction": CASES[0]["instruction"]}
    assert _tokens(_policy(again), obs)[0].tolist() == _tokens(_policy(vla), obs)[0].tolist()
    again.save_pretrained(out)  # over its own source: it holds what it writes
    assert load_vla(out, unnorm_key=KEYS[0]).chunk_size == 3
