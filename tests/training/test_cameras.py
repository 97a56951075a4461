"""Training a policy that reads several cameras (`TrainConfig.cameras`, `--cameras pixels
wrist_pixels`): the data path loads every camera the model reads, the model keeps them, a camera the
data lacks fails before compute, and DAgger, fresh grounding scenes and distillation supply them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ee_vla.training import DistillConfig, TrainConfig, distill, train
from ee_vla.training.data import DatasetError, DemoDataset, collate, load_pixels, scan_dataset

TWO = ("pixels", "wrist_pixels")


def _cfg(data, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=tuple(map(str, data)),
        out_dir=str(out),
        preset="tiny",
        batch_size=8,
        steps=2,
        lr=3e-3,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        augment=False,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def wrist_demos(tmp_path_factory) -> Path:
    """Scripted-expert demonstrations of Reach and PickCube recorded with the gripper camera."""
    from sim_envs.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("wrist_demos")
    cfg = CollectConfig(
        env=("ee_vla/Reach-v0", "ee_vla/PickCube-v0"), episodes=2, out=out, seed=3, image_size=32, wrist_camera=True
    )
    return collect(cfg)


@pytest.fixture(scope="module")
def two_camera_run(wrist_demos, tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, run dir) of a tiny two-camera policy trained a few steps on `wrist_demos`, with
    grounding questions on demonstration frames, a held-out episode and the periodic evaluation."""
    out = tmp_path_factory.mktemp("two_cameras") / "run"
    cfg = _cfg(
        [wrist_demos],
        out,
        cameras=TWO,
        steps=4,
        eval_every=4,
        eval_samples=8,
        save_every=4,
        val_fraction=0.25,
        grounding_fraction=0.25,
        augment=True,
    )
    return train(cfg), out


def _logits(vla, batch: dict) -> torch.Tensor:
    inputs = vla.build_inputs(vla.camera_images(batch), batch["instruction"], batch["proprio"])
    with torch.no_grad():
        return vla.model(**inputs).logits[:, -1].float()


def test_a_two_camera_policy_trains_saves_reloads_and_reads_the_wrist_images(two_camera_run, wrist_demos):
    from ee_vla.models.contract import read_contract
    from ee_vla.models.vla import VLA
    from ee_vla.policy import ObservationError, VLAPolicy
    from ee_vla.training.run_dir import list_checkpoints

    model_dir, out = two_camera_run
    assert json.loads((model_dir / "ee_vla.json").read_text())["cameras"] == list(TWO)
    assert read_contract(model_dir).cameras == TWO and read_contract(model_dir).uses_wrist_camera
    ckpt = list_checkpoints(out)[-1]
    assert json.loads((ckpt / "ee_vla.json").read_text())["cameras"] == list(TWO)
    assert json.loads((out / "config.json").read_text())["cameras"] == list(TWO)
    last = _rows(out)[-1]
    assert np.isfinite(last["loss"]) and "grounding_acc" in last
    assert "eval/token_acc" in last and "eval/start_action_l1" in last  # the evaluations read both cameras

    vla = VLA.from_pretrained(model_dir)
    assert vla.cameras == TWO
    eps = scan_dataset([wrist_demos])
    load_pixels(eps, vla.cameras)
    ds = DemoDataset(eps, vla.action_tokenizer, vla.chunk_size, use_proprio=False, cameras=vla.cameras)
    batch = collate([ds[i] for i in range(0, len(ds), 3)])
    assert batch["wrist_pixels"].shape == batch["pixels"].shape and batch["wrist_pixels"].dtype == np.uint8
    for i, (e, t) in enumerate(zip(batch["episode"], batch["t"], strict=True)):
        with h5py.File(eps[e].path, "r") as f:
            np.testing.assert_array_equal(batch["wrist_pixels"][i], f[f"data/{eps[e].key}/obs/wrist_pixels"][t])
    base = _logits(vla, batch)
    torch.testing.assert_close(_logits(vla, batch), base)  # deterministic
    other_wrist = {**batch, "wrist_pixels": 255 - batch["wrist_pixels"]}
    assert not torch.allclose(_logits(vla, other_wrist), base, atol=1e-5), "the wrist images do not reach the model"

    policy = VLAPolicy.from_pretrained(model_dir, decoder="jacobi")
    obs = {"pixels": eps[0].pixels[0], "wrist_pixels": eps[0].wrist_pixels[0], "instruction": eps[0].instruction}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (vla.chunk_size, 7) and np.isfinite(chunk).all()
    with pytest.raises(ObservationError, match="wrist_pixels"):
        policy.predict_action_chunk({"pixels": obs["pixels"], "instruction": obs["instruction"]})


def test_training_feeds_the_wrist_images_and_one_camera_training_ignores_them(write_demo, tmp_path):
    """Two data files that differ only in their wrist images: a two-camera run's first loss differs
    between them, a one-camera run's does not."""
    a = write_demo(tmp_path / "a.hdf5", n_episodes=2, steps=8, wrist=True)
    b = tmp_path / "b.hdf5"
    shutil.copy(a, b)
    with h5py.File(b, "r+") as f:
        for key in f["data"]:
            w = f[f"data/{key}/obs/wrist_pixels"]
            w[...] = 255 - w[()]
    first = {}
    for cameras in [("pixels",), TWO]:
        for name, data in (("a", a), ("b", b)):
            out = tmp_path / f"{name}_{len(cameras)}"
            train(_cfg([data], out, cameras=cameras, steps=1))
            first[name, cameras] = _rows(out)[0]["loss"]
    assert first["a", ("pixels",)] == first["b", ("pixels",)]
    assert first["a", TWO] != first["b", TWO]


def test_a_camera_the_data_lacks_fails_before_compute(write_demo, tmp_path):
    from ee_vla.models import create_random_vla_dir

    data = write_demo(tmp_path / "plain.hdf5", n_episodes=2, steps=5)
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train(_cfg([data], out, cameras=TWO))
    msg = str(err.value)
    assert "'wrist_pixels'" in msg and str(data) in msg and "obs/wrist_pixels" in msg
    assert "ee-vla collect --wrist-camera" in msg
    assert not out.exists() or not any(out.iterdir())  # nothing was built or written
    eps = scan_dataset([data])
    with pytest.raises(DatasetError, match="plain.hdf5 has no obs/wrist_pixels"):
        load_pixels(eps, TWO)
    load_pixels(eps)
    with pytest.raises(ValueError, match="wrist_pixels images of every episode"):
        DemoDataset(eps, None, 1, False, cameras=TWO)
    teacher = create_random_vla_dir(tmp_path / "teacher", cameras=TWO)
    with pytest.raises(DatasetError, match=r"the teacher .* reads camera 'wrist_pixels'.*--wrist-camera"):
        distill(DistillConfig(data=(str(data),), out_dir=str(tmp_path / "ceed"), teacher=str(teacher)))


@pytest.mark.parametrize(
    ("cameras", "message"),
    [
        (("pixels", "pixels"), "names a camera twice"),
        ((), "must name 1 to"),
        (("pixels", "instruction"), "'instruction' is an observation key that is not an image"),
        (("pixels", " wrist_pixels"), "without spaces"),
        ("pixels", "must be a list of observation keys"),
    ],
)
def test_cameras_validation_names_the_field(cameras, message):
    with pytest.raises(ValueError, match=r"TrainConfig\.cameras") as err:
        TrainConfig(data=("a.hdf5",), out_dir="out", cameras=cameras)
    assert message in str(err.value)


def test_cameras_flag(tmp_path, write_demo, capsys):
    import tyro

    from ee_vla.cli import main

    default = TrainConfig(data=("a.hdf5",), out_dir="o")
    assert default.cameras is None and default.model_cameras(None) == ("pixels",)
    cfg = tyro.cli(TrainConfig, args=["--data", "a.hdf5", "--out-dir", "o", "--cameras", "pixels", "wrist_pixels"])
    assert cfg.cameras == TWO and cfg.to_dict()["cameras"] == TWO
    data = write_demo(tmp_path / "plain.hdf5", n_episodes=2, steps=5)
    base = ["train", "--data", str(data), "--out-dir", str(tmp_path / "run"), "--preset", "tiny"]
    assert main([*base, "--cameras", "pixels", "pixels"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TrainConfig.cameras names a camera twice" in err[0]
    assert main([*base, "--cameras", "pixels", "wrist_pixels"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "ee-vla train: error:" in err[-1] and "--wrist-camera" in err[-1] and str(data) in err[-1]


def test_a_model_to_start_from_keeps_its_cameras_or_learns_new_ones(write_demo, tmp_path, tiny_vla_dir):
    """`cameras` left out: the model's own; given: the model is fine-tuned to read those (as
    `chunk_size`); a resumed run cannot change them."""
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.vla import VLA
    from ee_vla.training.run_dir import ResumeConfigError

    two = create_random_vla_dir(tmp_path / "two", cameras=TWO)
    data = write_demo(tmp_path / "wrist.hdf5", n_episodes=2, steps=6, wrist=True)
    out = tmp_path / "fine_tune"
    model_dir = train(_cfg([data], out, init_from=str(two), steps=1, save_every=1))
    assert VLA.from_pretrained(model_dir).cameras == TWO
    # a one-camera model fine-tuned to read the wrist camera too: the same weights, a longer prompt
    added = train(_cfg([data], tmp_path / "added", init_from=str(tiny_vla_dir), steps=1, cameras=TWO))
    vla = VLA.from_pretrained(added)
    one_camera = len(VLA.from_pretrained(tiny_vla_dir).prompt_ids("x"))
    assert vla.cameras == TWO and len(vla.prompt_ids("x")) == one_camera + 16
    assert VLA.from_pretrained(tiny_vla_dir).cameras == ("pixels",)  # the source is left as it was
    wrist_only = train(_cfg([data], tmp_path / "wrist", init_from=str(two), steps=1, cameras=("wrist_pixels",)))
    assert VLA.from_pretrained(wrist_only).cameras == ("wrist_pixels",)
    # resuming: the checkpoint's model fixes them
    with pytest.raises(ResumeConfigError, match="cameras"):
        train(_cfg([data], out, init_from=str(two), steps=2, resume=True, cameras=("wrist_pixels",)))
    train(_cfg([data], out, init_from=str(two), steps=2, resume=True))
    assert [r["step"] for r in _rows(out)] == [1, 2]
    # a camera the data lacks is refused before compute, also when added to a model
    plain = write_demo(tmp_path / "plain.hdf5", n_episodes=2, steps=6)
    with pytest.raises(DatasetError, match="wrist_pixels"):
        train(_cfg([plain], tmp_path / "no_wrist", init_from=str(tiny_vla_dir), steps=1, cameras=TWO))


def test_distilling_a_two_camera_teacher(two_camera_run, wrist_demos, tmp_path):
    from ee_vla.models.vla import VLA

    teacher, _ = two_camera_run
    cfg = DistillConfig(
        data=(str(wrist_demos),),
        out_dir=str(tmp_path / "ceed"),
        teacher=str(teacher),
        steps=2,
        batch_size=8,
        warmup_steps=1,
        log_every=1,
        eval_every=2,
        eval_samples=8,
        inits=("warm",),
    )
    student = distill(cfg)
    assert VLA.from_pretrained(student).cameras == TWO
    assert np.isfinite(_rows(tmp_path / "ceed")[-1]["loss"])


def test_dagger_with_a_two_camera_policy_records_the_wrist_camera(tmp_path):
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.vla import VLA
    from ee_vla.runtime import RuntimeConfig
    from ee_vla.training.dagger import DaggerConfig, DaggerConfigError, _camera_kwargs, collect_on_policy
    from sim_envs.demo_file import load_dataset

    policy = create_random_vla_dir(tmp_path / "policy", cameras=TWO)
    cfg = DaggerConfig(
        policy=policy,
        out=tmp_path / "dagger",
        env=["ee_vla/Reach-v0"],
        episodes=2,
        num_envs=2,
        vector="sync",
        image_size=32,
        runtime=RuntimeConfig(device="cpu", decoder="jacobi"),
        max_episode_steps=6,
        progress=False,
        seed=11,
    )
    path = collect_on_policy(cfg)
    ds = load_dataset(path)
    assert json.loads(ds.attrs["env_args"])["ee_vla/Reach-v0"]["wrist_camera"] is True
    for ep in ds:
        assert ep.wrist_pixels is not None and ep.wrist_pixels.shape == (len(ep), 32, 32, 3)
        env = gym.make("ee_vla/Reach-v0", image_size=32, wrist_camera=True)
        try:
            obs, _ = env.reset(seed=ep.seed)
            for t in range(len(ep)):  # the stored wrist images are the ones the policy saw
                np.testing.assert_array_equal(ep.wrist_pixels[t], obs["wrist_pixels"])
                np.testing.assert_array_equal(ep.pixels[t], obs["pixels"])
                obs, *_ = env.step(ep.executed_actions[t])
        finally:
            env.close()
    # the on-policy data trains the policy further, both cameras included
    model_dir = train(_cfg([path], tmp_path / "round", init_from=str(policy), steps=1, batch_size=4))
    assert VLA.from_pretrained(model_dir).cameras == TWO
    with pytest.raises(DaggerConfigError, match=r"OneCamera-v0.*'wrist_pixels'"):
        _camera_kwargs(policy, ["test_ee_vla/OneCamera-v0"])


def test_dagger_records_the_wrist_camera_for_a_policy_that_does_not_read_it(tiny_vla_dir, tmp_path):
    """`--wrist-camera`: a one-camera policy acts, its on-policy data holds the gripper camera too,
    and that data teaches the policy to read it (`--init-from P --cameras pixels wrist_pixels`)."""
    from ee_vla.models.vla import VLA
    from ee_vla.runtime import RuntimeConfig
    from ee_vla.training.dagger import DaggerConfig, DaggerConfigError, collect_on_policy
    from sim_envs.demo_file import load_dataset

    kw = dict(
        policy=tiny_vla_dir,
        env=["ee_vla/Push-v0"],
        episodes=2,
        num_envs=2,
        vector="sync",
        image_size=32,
        runtime=RuntimeConfig(device="cpu", decoder="jacobi"),
        max_episode_steps=5,
        progress=False,
        seed=12,
    )
    plain = load_dataset(collect_on_policy(DaggerConfig(out=tmp_path / "plain", **kw)))
    path = collect_on_policy(DaggerConfig(out=tmp_path / "wrist", wrist_camera=True, **kw))
    ds = load_dataset(path)
    for ep, same in zip(ds, plain, strict=True):
        assert ep.cameras == TWO and ep.wrist_pixels.shape == (len(ep), 32, 32, 3)
        # rendering the gripper camera changes nothing the policy saw or did
        np.testing.assert_array_equal(ep.pixels, same.pixels)
        np.testing.assert_array_equal(ep.executed_actions, same.executed_actions)
    model_dir = train(_cfg([path], tmp_path / "add", init_from=str(tiny_vla_dir), steps=1, batch_size=4, cameras=TWO))
    assert VLA.from_pretrained(model_dir).cameras == TWO
    with pytest.raises(DaggerConfigError, match="wrist_camera: test_ee_vla/OneCamera-v0 has no camera .wrist_pixels."):
        DaggerConfig(out=tmp_path / "one", wrist_camera=True, **{**kw, "env": ["test_ee_vla/OneCamera-v0"]})


def test_fresh_grounding_scenes_show_every_camera(write_demo, tmp_path):
    from ee_vla.action_tokenizer import ActionTokenizer
    from ee_vla.models.vla import VLA
    from ee_vla.training.data import SceneGroundingDataset, compute_point_stats, scene_sources
    from sim_envs.scenes import SCENE_SEED_BASE, SceneRenderer

    path = write_demo(
        tmp_path / "reach.hdf5",
        n_episodes=4,
        size=32,
        proprio_dim=7,
        task_points=True,
        env_id="ee_vla/Reach-v0",
        wrist=True,
    )
    eps = scan_dataset([path])
    assert scene_sources(eps) == (["ee_vla/Reach-v0"], {"image_size": 32})  # one camera: as before
    ids, kwargs = scene_sources(eps, TWO)
    assert kwargs == {"image_size": 32, "wrist_camera": True}
    with pytest.raises(DatasetError, match="cannot render every camera.*'side_pixels'"):
        scene_sources(eps, ("pixels", "side_pixels"))
    load_pixels(eps, TWO)
    vla = VLA.create("tiny", cameras=TWO)
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    ds = SceneGroundingDataset(ids, kwargs, points, 14, True, n_items=20, cameras=TWO)
    batch = ds.__getitems__([0, 5])
    assert batch["wrist_pixels"].shape == batch["pixels"].shape == (2, 32, 32, 3)
    renderer = SceneRenderer(ids, kwargs)
    try:
        truth = renderer.render([SCENE_SEED_BASE + 5])
    finally:
        renderer.close()
    np.testing.assert_array_equal(batch["wrist_pixels"][1], truth["wrist_pixels"][0])
    assert not np.array_equal(batch["wrist_pixels"][1], batch["pixels"][1])
    blind = SceneGroundingDataset(ids, {"image_size": 32}, points, 14, True, n_items=20, cameras=TWO)
    with pytest.raises(DatasetError, match="gave no 'wrist_pixels' images"):
        blind.__getitems__([0])
    # a two-camera run co-trained on fresh scenes
    out = tmp_path / "run"
    cfg = _cfg([path], out, cameras=TWO, steps=2, grounding_fraction=0.5, grounding_source="scenes", chunk_size=1)
    model_dir = train(cfg)
    assert VLA.from_pretrained(model_dir).cameras == TWO and "grounding_acc" in _rows(out)[-1]
