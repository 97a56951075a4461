"""collect -> load round trip, config validation and reader errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ee_vla.action_tokenizer import ActionStats
from sim_envs.collect import CollectConfig, collect, load_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    cfg = CollectConfig(env=("ee_vla/Reach-v0", "ee_vla/PickCube-v0"), episodes=2, out=out, seed=7, image_size=32)
    return cfg, collect(cfg)


def test_round_trip(dataset):
    cfg, path = dataset
    ds = load_dataset(path)
    assert len(ds) == 4
    assert ds.env_ids == ["ee_vla/Reach-v0", "ee_vla/PickCube-v0"]
    eps = list(ds)
    assert [e.env_id for e in eps] == ["ee_vla/Reach-v0"] * 2 + ["ee_vla/PickCube-v0"] * 2
    for ep in eps:
        t = len(ep)
        assert t > 1 and ep.success
        assert ep.pixels.shape == (t, 32, 32, 3) and ep.pixels.dtype == np.uint8
        assert ep.agent_pos.shape == (t, 7) and ep.agent_pos.dtype == np.float32
        assert ep.actions.shape == (t, 7) and np.abs(ep.actions).max() <= 1
        assert isinstance(ep.instruction, str) and ep.instruction
        assert ep.seed >= cfg.seed


def test_task_points_are_the_privileged_target_and_goal(dataset):
    """privileged/task_points[t] = target xyz + goal xyz at observation t (goal = target for Reach
    and PickCube); replay reproduces them."""
    import gymnasium as gym

    _, path = dataset
    for ep in load_dataset(path):
        assert ep.task_points.shape == (len(ep), 6) and ep.task_points.dtype == np.float32
        env = gym.make(ep.env_id, image_size=32)
        try:
            env.reset(seed=ep.seed)
            for t, a in enumerate(ep.actions):
                np.testing.assert_allclose(ep.task_points[t], env.unwrapped.task_points(), atol=1e-6)
                env.step(a)
        finally:
            env.close()
        np.testing.assert_array_equal(ep.task_points[:, :3], ep.task_points[:, 3:])


@pytest.mark.parametrize(("env_id", "attr"), [("ee_vla/Push-v0", "goal_xy"), ("ee_vla/Place-v0", "plate_xy")])
def test_goal_pos_of_tasks_with_a_destination(env_id, attr):
    import gymnasium as gym

    env = gym.make(env_id, image_size=32)
    try:
        env.reset(seed=3)
        u = env.unwrapped
        pts = u.task_points()
        np.testing.assert_allclose(pts[:3], u.target_pos, atol=1e-6)
        np.testing.assert_allclose(pts[3:5], getattr(u, attr), atol=1e-6)
        assert not np.allclose(pts[:2], pts[3:5])
    finally:
        env.close()


def test_replay_matches_recording(dataset):
    """The stored seed + actions reproduce the stored observations and the success."""
    import gymnasium as gym

    _, path = dataset
    ep = load_dataset(path)[2]
    env = gym.make(ep.env_id, image_size=32)
    try:
        obs, info = env.reset(seed=ep.seed)
        assert info["task_description"] == ep.instruction
        for t, a in enumerate(ep.actions):
            np.testing.assert_array_equal(obs["pixels"], ep.pixels[t])
            obs, _, terminated, _, info = env.step(a)
        assert terminated and info["is_success"]
    finally:
        env.close()


def test_schema_attrs_and_stats(dataset):
    _, path = dataset
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data["demo_0/obs/pixels"].compression == "gzip"
        for key in ("instruction", "env_id", "seed", "success", "num_samples"):
            assert key in data["demo_0"].attrs
        assert json.loads(data.attrs["action_space"])["dim"] == 7
        assert json.loads(data.attrs["creation_args"])["episodes"] == 2
        all_actions = np.concatenate([data[k]["actions"][()] for k in data])
        assert int(data.attrs["total"]) == len(all_actions)
    stats = ActionStats.load(path.parent / "stats.json")
    assert stats.mask == [True] * 6 + [False]
    np.testing.assert_allclose(stats.q01, np.quantile(all_actions.astype(np.float64), 0.01, axis=0))
    assert load_dataset(path).stats == stats


def test_refuses_to_overwrite(dataset):
    cfg, _ = dataset
    with pytest.raises(FileExistsError, match="overwrite"):
        collect(cfg)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"env": ("ee_vla/Nope-v0",)}, "CollectConfig.env"),
        ({"env": ()}, "CollectConfig.env"),
        ({"episodes": 0}, "CollectConfig.episodes"),
        ({"image_size": 8}, "CollectConfig.image_size"),
        ({"num_workers": 0}, "CollectConfig.num_workers"),
        ({"max_attempts_factor": 0.5}, "CollectConfig.max_attempts_factor"),
        ({"env": ("ee_vla/MetaWorld-reach-v0",), "wrist_camera": True}, "CollectConfig.wrist_camera"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CollectConfig(**kwargs)


def test_config_accepts_a_single_id_string():
    assert CollectConfig(env="ee_vla/Push-v0").env == ("ee_vla/Push-v0",)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nothing.hdf5")


def test_load_corrupt(tmp_path):
    p = tmp_path / "demos.hdf5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="HDF5"):
        load_dataset(p)


def test_load_wrong_action_dim(dataset):
    _, path = dataset
    with pytest.raises(ValueError, match=r"expected \(T, 4\)"):
        load_dataset(path, action_dim=4)


def test_load_wrong_schema(tmp_path):
    p = tmp_path / "other.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="'data' group"):
        load_dataset(p)
