import json

import numpy as np
import pytest
import torch

from ee_vla.action_tokenizer import ActionStats
from ee_vla.models.vla import VLA, ModelLoadError


def test_the_shipped_checkpoint_loads_every_weight():
    """Every tensor of the shipped safetensors lands in the model: transformers renames a saved
    Llava's `language_model.lm_head.weight`, and a wrong class silently re-initialises it."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(__file__).resolve().parents[2] / "ee_vla" / "checkpoints" / "default"
    saved = load_file(path / "model.safetensors")
    model = VLA.from_pretrained(path).model
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert torch.equal(model.lm_head.weight, saved["language_model.lm_head.weight"].float())
    params = dict(model.named_parameters())
    assert torch.equal(
        params["model.language_model.embed_tokens.weight"], saved["language_model.model.embed_tokens.weight"].float()
    )


def test_save_load_round_trip_gives_identical_outputs(tiny_vla_dir, tmp_path):
    a = VLA.from_pretrained(tiny_vla_dir)
    px = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    inputs = a.build_inputs(px, ["pick up the red cube", "push it"])
    a.save_pretrained(tmp_path / "copy")
    b = VLA.from_pretrained(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(a.model(**inputs).logits, b.model(**inputs).logits)
    assert b.action_tokenizer.to_dict() == a.action_tokenizer.to_dict() and b.chunk_size == 3


def test_action_tokens_are_the_last_ids_of_the_vocabulary(tiny_vla_dir):
    vla = VLA.from_pretrained(tiny_vla_dir)
    lo, hi = vla.action_range
    assert hi == len(vla.tokenizer) - 1 == vla.model.config.text_config.vocab_size - 1 and hi - lo == 255
    assert vla.n_action_tokens == 21


def test_inputs_are_left_padded_with_image_tokens(tiny_vla_dir):
    vla = VLA.from_pretrained(tiny_vla_dir)
    px = np.zeros((2, 100, 80, 3), dtype=np.uint8)  # any size is resized to the model's
    inp = vla.build_inputs(px, ["a", "a much longer instruction than the first"])
    assert inp["pixel_values"].shape == (2, 3, 64, 64)
    assert inp["attention_mask"][0, 0] == 0 and inp["attention_mask"][1].all()
    assert (inp["input_ids"][1] == vla.image_token_id).sum() == vla.n_image_tokens == 16


def test_proprio_is_tokenised_into_the_prompt(tmp_path):
    stats = ActionStats(q01=[-1.0] * 4, q99=[1.0] * 4, mask=[True] * 4)
    vla = VLA.create("tiny", proprio_stats=stats)
    base = len(vla.prompt_ids("x", np.zeros(4)))
    assert vla.proprio_dim == 4 and base == len(VLA.create("tiny").prompt_ids("x")) + 4
    vla.save_pretrained(tmp_path / "p")
    assert VLA.from_pretrained(tmp_path / "p").proprio_dim == 4


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        VLA.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="missing config.json, model.safetensors"):
        VLA.from_pretrained(tmp_path / "empty")


def test_corrupt_safetensors_and_metadata(tiny_vla_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_vla_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated|not a valid safetensors"):
        VLA.from_pretrained(bad)
    weights.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        VLA.from_pretrained(bad)
    shutil.copy(tiny_vla_dir / "model.safetensors", weights)
    (bad / "ee_vla.json").write_text(json.dumps({"chunk_size": 3}))
    with pytest.raises(ModelLoadError, match="ee_vla.json is corrupt"):
        VLA.from_pretrained(bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        VLA.create("huge")


def test_sincos_position_table_encodes_row_and_column_linearly():
    from ee_vla.models.vla import sincos_2d

    grid, dim = 8, 32
    table = sincos_2d(grid, dim)
    assert table.shape == (grid * grid, dim) and table.abs().max() <= 1.0
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    # the first half of the channels depends on the row only, the second half on the column only
    assert torch.equal(table[0, : dim // 2], table[grid - 1, : dim // 2])
    assert torch.equal(table[0, dim // 2 :], table[grid * (grid - 1), dim // 2 :])
    # and a least-squares read-out recovers both exactly ("which patch" is linear from step 0)
    X = np.c_[table.numpy(), np.ones(grid * grid)]
    for coord in (rows, cols):
        w, *_ = np.linalg.lstsq(X, coord, rcond=None)
        assert np.abs(X @ w - coord).max() < 0.05
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 30)


def test_new_models_start_from_the_sincos_table_unless_asked_otherwise():
    from ee_vla.models.vla import sincos_2d

    def table(vla):
        return vla.model.model.vision_tower.embeddings.position_embedding.weight.detach()

    grid = 64 // 16
    sincos = VLA.create("tiny", seed=0)
    assert torch.equal(table(sincos), sincos_2d(grid, 32))
    assert sincos.meta["spec"]["vision_pos_init"] == "sincos"
    rand = VLA.create("tiny", seed=0, vision_pos_init="random")
    assert not torch.equal(table(rand), sincos_2d(grid, 32)) and rand.meta["spec"]["vision_pos_init"] == "random"
    with pytest.raises(ValueError, match="vision_pos_init"):
        VLA.create("tiny", vision_pos_init="learned")


def test_conv_stem_gives_the_patch_grid_and_survives_save_and_load(tmp_path):
    """`vision_stem="conv"`: the patch embedding becomes a ConvStem with the same output grid; the
    model saves and loads (through VLANetwork) to identical outputs, through the policy's static
    engine too. A patch-stem model stays a stock Llava."""
    from transformers import LlavaForConditionalGeneration

    from ee_vla.models.network import ConvStem
    from ee_vla.policy import VLAPolicy

    a = VLA.create("tiny", seed=0, vision_stem="conv")
    stem = a.model.model.vision_tower.embeddings.patch_embedding
    assert isinstance(stem, ConvStem) and len(stem.stages) == 2 * 4  # 16 px patches: 4 stride-2 stages
    assert stem(torch.zeros(2, 3, 64, 64)).shape == (2, 32, 4, 4) and a.meta["spec"]["vision_stem"] == "conv"
    px = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    inputs = a.build_inputs(px, ["pick up the red cube", "push it"])
    a.save_pretrained(tmp_path / "conv")
    assert json.loads((tmp_path / "conv" / "config.json").read_text())["vision_config"]["ee_vla_stem"] == "conv"
    b = VLA.from_pretrained(tmp_path / "conv")
    with torch.no_grad():
        assert torch.equal(a.model(**inputs).logits, b.model(**inputs).logits)
    obs = {"pixels": px, "instruction": ["pick up the red cube", "push it"]}
    eager = VLAPolicy.from_pretrained(tmp_path / "conv", "jacobi").predict_action_chunk(obs)
    static = VLAPolicy.from_pretrained(tmp_path / "conv", "jacobi", engine="static").predict_action_chunk(obs)
    assert np.array_equal(eager, static)

    VLA.create("tiny", seed=0).save_pretrained(tmp_path / "patch")
    assert "ee_vla_stem" not in json.loads((tmp_path / "patch" / "config.json").read_text())["vision_config"]
    LlavaForConditionalGeneration.from_pretrained(tmp_path / "patch")  # no ee_vla needed to load it
    with pytest.raises(ValueError, match="vision_stem"):
        VLA.create("tiny", vision_stem="resnet")
    with pytest.raises(ValueError, match="power of two"):
        ConvStem(3, 32, 12)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_weights(path, edit):
    from safetensors.torch import load_file, save_file

    sd = load_file(path / "model.safetensors")
    edit(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


def _edit_json(path, name, edit):
    d = json.loads((path / name).read_text())
    edit(d)
    (path / name).write_text(json.dumps(d))


MLP_KEY = "language_model.model.layers.1.mlp.down_proj.weight"


def test_missing_unexpected_and_mismatched_weights_are_named(tiny_vla_dir, tmp_path):
    """transformers fills a missing tensor with random values and loads 'OK'; ee_vla refuses."""
    missing = _copy(tiny_vla_dir, tmp_path / "missing")
    _edit_weights(missing, lambda sd: sd.pop(MLP_KEY))
    with pytest.raises(ModelLoadError, match=r"1 missing keys \(model\.language_model\.layers\.1\.mlp\.down_proj"):
        VLA.from_pretrained(missing)
    extra = _copy(tiny_vla_dir, tmp_path / "extra")
    _edit_weights(extra, lambda sd: sd.update({"stray.weight": torch.zeros(3)}))
    with pytest.raises(ModelLoadError, match=r"1 unexpected keys \(stray\.weight\)"):
        VLA.from_pretrained(extra)
    shape = _copy(tiny_vla_dir, tmp_path / "shape")
    _edit_weights(shape, lambda sd: sd.update({MLP_KEY: torch.zeros(5, 5)}))
    with pytest.raises(ModelLoadError, match=r"1 mismatched keys \(.*layers\.1\.mlp\.down_proj"):
        VLA.from_pretrained(shape)


def test_more_layers_in_the_config_than_in_the_weights(tiny_vla_dir, tmp_path):
    deeper = _copy(tiny_vla_dir, tmp_path / "deeper")
    _edit_json(deeper, "config.json", lambda d: d["text_config"].update(num_hidden_layers=3))
    with pytest.raises(ModelLoadError, match=r"9 missing keys \(.*layers\.2\."):
        VLA.from_pretrained(deeper)


@pytest.mark.parametrize(
    "file, edit, match",
    [
        (
            "config.json",
            lambda d: d["text_config"].update(num_hidden_layers=1_000_000),
            "text_config.num_hidden_layers",
        ),
        ("config.json", lambda d: d["text_config"].update(hidden_size=1 << 20), "text_config.hidden_size"),
        ("config.json", lambda d: d["text_config"].update(vocab_size=1 << 30), "text_config.vocab_size"),
        ("config.json", lambda d: d["vision_config"].update(num_hidden_layers=10_000), "vision_config.num_hidden"),
        ("config.json", lambda d: d["vision_config"].update(image_size=100_000), "vision_config.image_size"),
        ("config.json", lambda d: d["text_config"].update(num_hidden_layers=0), r"outside 1\.\.256"),
        ("ee_vla.json", lambda d: d.update(chunk_size=100_000), "chunk_size = 100000 is outside 1..64"),
        ("ee_vla.json", lambda d: d.update(image_size=50_000), "ee_vla.json: image_size"),
    ],
)
def test_config_sizes_are_bounded_before_allocation(tiny_vla_dir, tmp_path, file, edit, match):
    """A hostile size fails at once (before transformers allocates 1e6 layers for minutes)."""
    bad = _copy(tiny_vla_dir, tmp_path / "bad")
    _edit_json(bad, file, edit)
    with pytest.raises(ModelLoadError, match=match):
        VLA.from_pretrained(bad)


def test_non_finite_weights_are_refused(tiny_vla_dir, tmp_path):
    bad = _copy(tiny_vla_dir, tmp_path / "nan")

    def poison(sd):
        sd[MLP_KEY][0, 0] = float("nan")
        sd["language_model.lm_head.weight"][3, 1] = float("inf")

    _edit_weights(bad, poison)
    with pytest.raises(ModelLoadError, match=r"2 tensors hold NaN or inf \(.*layers\.1\.mlp.*, lm_head.weight\)"):
        VLA.from_pretrained(bad)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("image_std", [0.5, 0.0, 0.5], "image_std must be > 0"),
        ("image_std", [0.5, float("nan"), 0.5], "image_std must be 3 finite numbers"),
        ("image_mean", [0.5, 0.5], "image_mean must be 3 finite numbers"),
        ("image_mean", [0.5, "x", 0.5], "image_mean must be 3"),
    ],
)
def test_image_normalisation_must_be_finite_and_positive(tiny_vla_dir, tmp_path, field, value, match):
    bad = _copy(tiny_vla_dir, tmp_path / "norm")
    _edit_json(bad, "ee_vla.json", lambda d: d.update({field: value}))
    with pytest.raises(ModelLoadError, match=f"ee_vla.json: {match}"):
        VLA.from_pretrained(bad)


def test_non_finite_action_statistics_are_refused(tiny_vla_dir, tmp_path):
    """The action tokenizer's q01/q99 map tokens to actions: NaN there is a corrupt model."""
    bad = _copy(tiny_vla_dir, tmp_path / "stats")
    _edit_json(bad, "ee_vla.json", lambda d: d["action_tokenizer"]["stats"]["q99"].__setitem__(2, float("nan")))
    with pytest.raises(ModelLoadError, match="ee_vla.json is corrupt: ActionStats.q01/q99 contain NaN or inf"):
        VLA.from_pretrained(bad)
