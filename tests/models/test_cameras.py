"""A policy that reads several cameras: one image per observation key of `VLA.cameras`, each
camera's image tokens after the previous camera's in the prompt, through the same vision tower."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import ee_vla
from ee_vla.models import ModelLoadError, create_random_vla_dir
from ee_vla.models.contract import check_cameras, read_contract
from ee_vla.models.vla import VLA
from ee_vla.policy import ObservationError, VLAPolicy

CAMERAS = ("pixels", "wrist_pixels")


@pytest.fixture(scope="module")
def two_camera_dir(tmp_path_factory):
    return create_random_vla_dir(tmp_path_factory.mktemp("models") / "two", cameras=CAMERAS)


def _obs(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "wrist_pixels": rng.integers(0, 256, (batch, 48, 40, 3), dtype=np.uint8),
        "instruction": ["pick up the red cube", "push the blue block onto the circle", "reach"][:batch],
    }


def test_a_model_without_cameras_reads_pixels_and_the_shipped_policy_is_one():
    assert read_contract(ee_vla.DEFAULT_POLICY).cameras == ("pixels",)
    assert VLA.create("tiny").cameras == ("pixels",)


def test_cameras_are_saved_and_each_adds_its_image_tokens(two_camera_dir):
    vla = VLA.from_pretrained(two_camera_dir)
    assert vla.cameras == CAMERAS and read_contract(two_camera_dir).cameras == CAMERAS
    assert json.loads((two_camera_dir / "ee_vla.json").read_text())["cameras"] == list(CAMERAS)
    one = VLA.create("tiny")
    assert len(vla.prompt_ids("x")) == len(one.prompt_ids("x")) + vla.n_image_tokens
    inp = vla.build_inputs(vla.camera_images(_obs(2)), ["a", "a longer instruction"])
    # one image per camera per row, row b's cameras next to each other: (b0 front, b0 wrist, b1 ...)
    assert inp["pixel_values"].shape == (4, 3, 64, 64)
    assert torch.equal(inp["pixel_values"][1], vla.preprocess_images(_obs(2)["wrist_pixels"])[0])
    assert ((inp["input_ids"] == vla.image_token_id).sum(1) == 2 * vla.n_image_tokens).all()
    with pytest.raises(ValueError, match="1 camera images for a model that reads"):
        vla.build_inputs(_obs(2)["pixels"], ["a", "b"])
    with pytest.raises(KeyError, match="no image of camera 'wrist_pixels'"):
        vla.camera_images({"pixels": _obs(1)["pixels"]})


@pytest.mark.parametrize("decoder", ["jacobi", "ceed"])
@pytest.mark.parametrize("engine", ["eager", "static"])
def test_two_cameras_decode_exactly_and_batched_as_alone(two_camera_dir, decoder, engine):
    """Greedy Jacobi to convergence equals AR with two cameras, in the eager and static engines
    (their image merges differ: Llava's masked_scatter and the engine's gather), batched or not."""
    obs = _obs(3)
    ar = VLAPolicy.from_pretrained(two_camera_dir, decoder="ar", dtype="float64", engine="eager")
    other = VLAPolicy.from_pretrained(two_camera_dir, decoder=decoder, dtype="float64", engine=engine)
    want = ar.predict_action_chunk(obs)
    if decoder == "jacobi":
        assert np.array_equal(other.predict_action_chunk(obs), want)
    for i in range(3):
        alone = {k: v[i] for k, v in obs.items()}
        ar.reset()
        assert np.array_equal(ar.predict_action_chunk(alone), want[i])


def test_the_second_camera_changes_the_actions_and_its_place_matters(two_camera_dir):
    policy = VLAPolicy.from_pretrained(two_camera_dir, decoder="ar", dtype="float64")
    obs = _obs(2)
    logits = []
    for o in (obs, {**obs, "wrist_pixels": np.zeros_like(obs["wrist_pixels"])}):
        with torch.no_grad():
            inp = policy.vla.build_inputs(policy.vla.camera_images(o), o["instruction"])
            logits.append(policy.vla.model(**{k: v.double() if v.is_floating_point() else v for k, v in inp.items()}))
    assert not torch.allclose(logits[0].logits[:, -1], logits[1].logits[:, -1])
    # the same images in the other order are another observation (the prompt's place tells the camera)
    swapped = {**obs, "pixels": obs["wrist_pixels"], "wrist_pixels": obs["pixels"]}
    assert not np.array_equal(policy.predict_action_chunk(obs), policy.predict_action_chunk(swapped))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda o: o.pop("wrist_pixels"), "no 'wrist_pixels'.*reads cameras pixels, wrist_pixels"),
        (lambda o: o.update(wrist_pixels=o["wrist_pixels"].astype(np.float32)), "'wrist_pixels' must be uint8"),
        (lambda o: o.update(wrist_pixels=o["wrist_pixels"][..., 0]), "'wrist_pixels' must be \\(H, W, 3\\)"),
        (lambda o: o.update(wrist_pixels=o["wrist_pixels"][:1]), "different batch sizes: 'pixels' 2, 'wrist_pixels' 1"),
        (lambda o: o.update(wrist_pixels=o["wrist_pixels"][:, :4, :4]), "'wrist_pixels' image 4x4 is too small"),
    ],
)
def test_a_bad_camera_image_is_named(two_camera_dir, change, match):
    policy = VLAPolicy.from_pretrained(two_camera_dir, decoder="ar")
    obs = _obs(2)
    change(obs)
    with pytest.raises(ObservationError, match=match):
        policy.predict_action_chunk(obs)


@pytest.mark.parametrize(
    "cameras, match",
    [
        ("pixels", "must be a list of observation keys"),
        ([], "1 to 8 cameras"),
        (["pixels", "pixels"], "names a camera twice"),
        (["pixels", ""], "non-empty observation key"),
        (["agent_pos"], "not an image"),
        ([3], "non-empty observation key"),
    ],
)
def test_malformed_cameras_are_refused(tmp_path, cameras, match):
    with pytest.raises(ValueError, match=match):
        check_cameras(cameras)
    model = tmp_path / "m"
    shutil.copytree(ee_vla.DEFAULT_POLICY, model)
    extra = json.loads((model / "ee_vla.json").read_text())
    extra["cameras"] = cameras
    (model / "ee_vla.json").write_text(json.dumps(extra))
    with pytest.raises(ModelLoadError, match="corrupt"):
        read_contract(model)
    with pytest.raises(ModelLoadError):
        VLA.from_pretrained(model)


def test_envs_are_made_with_the_cameras_a_policy_reads():
    import sim_envs

    assert sim_envs.camera_kwargs("ee_vla/Push-v0", ["pixels"]) == {}
    assert sim_envs.camera_kwargs("ee_vla/Push-v0", CAMERAS) == {"wrist_camera": True}
    assert sim_envs.camera_kwargs("ee_vla/MetaWorld-reach-v0", CAMERAS) == {"wrist_camera": True}
    with pytest.raises(ValueError, match="test_ee_vla/OneCamera-v0 has no camera 'wrist_pixels'"):
        sim_envs.camera_kwargs("test_ee_vla/OneCamera-v0", CAMERAS)
    with pytest.raises(ValueError, match="has no camera 'top_pixels'.*renders pixels, wrist_pixels"):
        sim_envs.camera_kwargs("ee_vla/Push-v0", ["pixels", "top_pixels"])
