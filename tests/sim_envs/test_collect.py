"""collect -> read round trip, config validation and reader errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ee_vla.action_tokenizer import ActionStats
from sim_envs.collect import CollectConfig, collect
from sim_envs.demo_file import DemoFileError, load_dataset


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


def test_the_reader_returns_the_files_arrays(dataset):
    """Each episode read (images included, or left for `read_pixels`) holds exactly the arrays and
    attributes stored in the file."""
    from sim_envs.demo_file import read_pixels

    _, path = dataset
    ds = load_dataset(path)
    lazy = ds.episodes(pixels=False)
    assert all(e.pixels is None for e in lazy)
    frames = read_pixels(lazy)
    assert len(frames) == sum(map(len, lazy))
    with h5py.File(path, "r") as f:
        keys = sorted(f["data"], key=lambda k: int(k.split("_")[1]))
        assert ds.keys == keys and [e.key for e in lazy] == keys
        for key, ep, lazy_ep in zip(keys, ds, lazy, strict=True):
            g = f["data"][key]
            assert ep.source == lazy_ep.source == f"{path}:{key}"
            for e in (ep, lazy_ep):
                np.testing.assert_array_equal(e.pixels, g["obs/pixels"][()])
                for name, raw in [
                    ("agent_pos", "obs/agent_pos"),
                    ("actions", "actions"),
                    ("task_points", "privileged/task_points"),
                    ("rewards", "rewards"),
                ]:
                    got = getattr(e, name)
                    assert got.dtype == g[raw].dtype
                    np.testing.assert_array_equal(got, g[raw][()])
                assert e.executed_actions is None and e.expert_chunks is None and e.wrist_pixels is None
                assert (e.instruction, e.env_id, e.seed, e.success) == (
                    g.attrs["instruction"],
                    g.attrs["env_id"],
                    int(g.attrs["seed"]),
                    bool(g.attrs["success"]),
                )
                assert e.image_shape == g["obs/pixels"].shape[1:]
                assert e.cameras == ("pixels",) and e.camera_shapes == {"pixels": e.image_shape}
    assert np.shares_memory(lazy[1].pixels, frames) and lazy[1].frame_offset == len(lazy[0])


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


def test_wrist_camera_is_recorded_and_replays(tmp_path):
    """With wrist_camera every demonstration holds obs/wrist_pixels, the gripper camera's images of
    the same steps (replay reproduces them); read lazily (`read_pixels(episodes, "wrist_pixels")`,
    how training loads a camera) they equal the eager read."""
    import gymnasium as gym

    from sim_envs.demo_file import read_pixels

    cfg = CollectConfig(env=("ee_vla/PickCube-v0",), episodes=2, out=tmp_path, seed=4, image_size=32, wrist_camera=True)
    ds = load_dataset(collect(cfg))
    assert json.loads(ds.attrs["env_args"]) == {"ee_vla/PickCube-v0": {"image_size": 32, "wrist_camera": True}}
    lazy = ds.episodes(pixels=False)
    assert all(e.wrist_pixels is None and e.cameras == ("pixels", "wrist_pixels") for e in lazy)
    frames = read_pixels(lazy, "wrist_pixels")
    assert len(frames) == sum(map(len, lazy)) and np.shares_memory(lazy[1].wrist_pixels, frames)
    for ep, lazy_ep in zip(ds, lazy, strict=True):
        assert ep.wrist_pixels.shape == ep.pixels.shape == (len(ep), 32, 32, 3)
        assert not np.array_equal(ep.wrist_pixels, ep.pixels)
        np.testing.assert_array_equal(lazy_ep.wrist_pixels, ep.wrist_pixels)
        np.testing.assert_array_equal(lazy_ep.image("wrist_pixels"), ep.wrist_pixels)
        env = gym.make(ep.env_id, image_size=32, wrist_camera=True)
        try:
            obs, _ = env.reset(seed=ep.seed)
            for t, a in enumerate(ep.actions):
                np.testing.assert_array_equal(obs["wrist_pixels"], ep.wrist_pixels[t])
                obs, *_ = env.step(a)
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
    assert ActionStats.from_dict(load_dataset(path).action_stats) == stats
    assert stats == ActionStats.from_actions(all_actions, mask=[True] * 6 + [False])


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
        ({"explore_steps": -1}, "CollectConfig.explore_steps"),
        ({"explore_steps": 3, "explore_plan": 0}, "CollectConfig.explore_plan"),
        ({"env": ("ee_vla/MetaWorld-reach-v0",), "explore_steps": 3}, "CollectConfig.explore_steps"),
        ({"explore_steps": 3, "explore_lead": -1}, "CollectConfig.explore_lead"),
        ({"explore_lead": 5}, "CollectConfig.explore_lead"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CollectConfig(**kwargs)


def test_wrist_camera_is_refused_for_an_env_without_one(monkeypatch):
    """Every env of sim_envs renders a gripper camera; an ee_vla id whose env has none (the tests'
    one-camera env registered under it) is refused by name before anything is collected."""
    import gymnasium

    spec = gymnasium.registry["test_ee_vla/OneCamera-v0"]  # tests/conftest.py
    monkeypatch.setitem(gymnasium.registry, "ee_vla/OneCamera-v0", spec)
    with pytest.raises(ValueError, match="wrist_camera: ee_vla/OneCamera-v0 has no camera 'wrist_pixels'"):
        CollectConfig(env=("ee_vla/OneCamera-v0",), wrist_camera=True)
    CollectConfig(env=("ee_vla/OneCamera-v0",))  # without the gripper camera it is an env like any other


def test_explored_states_carry_the_experts_labels_and_plans(tmp_path):
    """`explore_steps`: every scene is kept (labels="expert", whatever its success), its random steps
    replay from the seed to the stored images, each state's label is the expert's action there and
    its chunk target the expert's plan from it; training keeps the episodes and learns the plans."""
    import gymnasium as gym

    from ee_vla.training.data import chunk_targets
    from ee_vla.training.dataset_files import scan_dataset
    from sim_envs.collect import EXPLORE_LOW_Z
    from sim_envs.experts import ExpertLabels

    cfg = CollectConfig(
        env="ee_vla/Push-v0", episodes=4, out=tmp_path, seed=500, image_size=32, explore_steps=4, explore_plan=3
    )
    path = collect(cfg)
    episodes = load_dataset(path)
    assert [e.seed for e in episodes] == [500, 501, 502, 503]
    assert all(1 <= len(e) <= 4 for e in episodes) and len({len(e) for e in episodes}) > 1
    with h5py.File(path) as f:
        assert all(f["data"][k].attrs["labels"] == "expert" for k in f["data"])
    assert len(scan_dataset([path])) == 4  # kept by `ee-vla train` though no scene is a success
    env = ExpertLabels(gym.make("ee_vla/Push-v0", image_size=32), horizon=3)
    try:
        for ep in episodes:
            np.testing.assert_array_equal(chunk_targets(ep, 3), ep.expert_chunks)
            np.testing.assert_array_equal(ep.expert_chunks[:, 0], ep.actions)
            obs, info = env.reset(seed=ep.seed)
            for t in range(len(ep)):
                np.testing.assert_array_equal(obs["pixels"], ep.pixels[t])
                np.testing.assert_allclose(info["expert_plan"], ep.expert_chunks[t], atol=1e-6)
                a = ep.executed_actions[t]
                assert abs(a[3]) == abs(a[4]) == 0 and a[6] == ep.actions[t, 6]
                assert a[2] >= 0 or obs["agent_pos"][2] >= EXPLORE_LOW_Z
                obs, _, _, _, info = env.step(a)
    finally:
        env.close()


def test_explored_states_can_start_where_the_expert_left_off(tmp_path):
    """`explore_lead`: the expert first takes some unrecorded steps from the reset (from the same
    seed: the reset's image is not the first stored one where it moved), then the random steps run
    as without a lead; the stored states replay from the seed through the expert's steps."""
    import gymnasium as gym

    from sim_envs.experts import ExpertLabels

    cfg = CollectConfig(
        env="ee_vla/Push-v0", episodes=6, out=tmp_path, seed=700, image_size=32, explore_steps=3,
        explore_plan=3, explore_lead=12,
    )  # fmt: skip
    episodes = load_dataset(collect(cfg))
    env = ExpertLabels(gym.make("ee_vla/Push-v0", image_size=32), horizon=3)
    leads = []
    try:
        for ep in episodes:
            rng = np.random.default_rng(ep.seed)
            n = int(rng.integers(0, 3))
            lead = int(rng.integers(0, 12))
            obs, info = env.reset(seed=ep.seed)
            for _ in range(lead):
                obs, _, terminated, truncated, info = env.step(info["expert_action"])
                if terminated or truncated:
                    n = 0
                    break
            assert len(ep) == n + 1
            leads.append(lead)
            for t in range(len(ep)):
                np.testing.assert_array_equal(obs["pixels"], ep.pixels[t])
                np.testing.assert_allclose(info["expert_plan"], ep.expert_chunks[t], atol=1e-6)
                obs, _, _, _, info = env.step(ep.executed_actions[t])
    finally:
        env.close()
    assert max(leads) > 0 and len(set(leads)) > 1


def test_config_accepts_a_single_id_string():
    assert CollectConfig(env="ee_vla/Push-v0").env == ("ee_vla/Push-v0",)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nothing.hdf5")


def test_load_corrupt(tmp_path):
    p = tmp_path / "demos.hdf5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DemoFileError, match="not a readable HDF5 file"):
        load_dataset(p)


def test_load_wrong_schema(tmp_path):
    p = tmp_path / "other.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DemoFileError, match="holds no demonstrations"):
        load_dataset(p)


# ---- a killed collection keeps its episodes and continues --------------------------------------
FAILING_SEED = 8
"""Reach's attempt with this seed is recorded as a failure (the expert succeeds on every seed of
these tests; a failure must be kept across a resume too)."""
WRAPPER = f"""
import sim_envs.collect as _c

_real_rollout = _c._rollout
seeds = []


def _rollout(env_id, kwargs, seed):
    seeds.append((env_id, seed))
    if len(seeds) == KILL_AT:
        import os, signal

        os.kill(os.getpid(), signal.SIGKILL)
    ep = _real_rollout(env_id, kwargs, seed)
    if env_id == "ee_vla/Reach-v0" and seed == {FAILING_SEED}:
        ep.success = False
    return ep


_c._rollout = _rollout
"""
"""Patches `sim_envs.collect._rollout`: records the seeds, fails FAILING_SEED, SIGKILLs the process
at attempt KILL_AT."""


def _small(out, **kw) -> CollectConfig:
    return CollectConfig(
        **{
            "env": ("ee_vla/Reach-v0", "ee_vla/PickCube-v0"),
            "episodes": 2,
            "out": out,
            "seed": 7,
            "image_size": 32,
            **kw,
        }
    )


def _collect_patched(cfg: CollectConfig) -> list[tuple[str, int]]:
    """`collect(cfg)` in this process under WRAPPER (no kill); returns the attempted seeds."""
    import sim_envs.collect as c

    scope: dict = {"KILL_AT": -1}
    real = c._rollout
    try:
        exec(WRAPPER, scope)
        collect(cfg)
    finally:
        c._rollout = real
    return scope["seeds"]


def _contents(path) -> tuple[dict, list]:
    """The file's attributes (without its creation time and output path) and every demo's
    attributes and arrays."""
    with h5py.File(path, "r") as f:
        data = f["data"]
        attrs = {k: v for k, v in data.attrs.items() if k != "created"}
        creation = json.loads(attrs.pop("creation_args"))
        creation.pop("out")
        attrs["creation_args"] = creation
        demos = []
        for key in sorted(data, key=lambda k: int(k.split("_")[1])):
            names: list[str] = []
            data[key].visit(names.append)
            arrays = {n: data[key][n][()] for n in names if isinstance(data[key][n], h5py.Dataset)}
            demos.append((key, dict(data[key].attrs), arrays))
    return attrs, demos


def _assert_same_contents(a, b) -> None:
    (attrs_a, demos_a), (attrs_b, demos_b) = _contents(a), _contents(b)
    assert attrs_a == attrs_b
    assert [(k, attrs) for k, attrs, _ in demos_a] == [(k, attrs) for k, attrs, _ in demos_b]
    for (_, _, arrays_a), (_, _, arrays_b) in zip(demos_a, demos_b, strict=True):
        assert arrays_a.keys() == arrays_b.keys()
        for name in arrays_a:
            np.testing.assert_array_equal(arrays_a[name], arrays_b[name])


def test_a_killed_collection_continues_to_the_uninterrupted_file(tmp_path):
    import subprocess
    import sys

    full = tmp_path / "full"
    seeds = _collect_patched(_small(full))
    assert seeds[:3] == [("ee_vla/Reach-v0", 7), ("ee_vla/Reach-v0", 8), ("ee_vla/Reach-v0", 9)]
    assert json.loads(h5py.File(full / "demos.hdf5", "r")["data"].attrs["failed_attempts"])["ee_vla/Reach-v0"] == 1
    assert not (full / "demos.hdf5.parts").exists()  # removed once the file is complete

    # the same command, killed (SIGKILL) during its third attempt
    cut = tmp_path / "cut"
    script = (
        f"KILL_AT = 3\n{WRAPPER}\nfrom pathlib import Path\n"
        f"_c.collect(_c.CollectConfig(env=('ee_vla/Reach-v0', 'ee_vla/PickCube-v0'), episodes=2, "
        f"out=Path({str(cut)!r}), seed=7, image_size=32))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    assert not (cut / "demos.hdf5").exists()
    parts = cut / "demos.hdf5.parts" / "ee_vla__Reach-v0"
    assert sorted(p.name for p in parts.iterdir()) == ["7.hdf5", "8.failed"]

    # rerunning it continues from the third attempt and writes what the uninterrupted run wrote
    resumed = _collect_patched(_small(cut))
    assert resumed == seeds[2:]
    _assert_same_contents(full / "demos.hdf5", cut / "demos.hdf5")
    assert not (cut / "demos.hdf5.parts").exists()
    assert json.loads((cut / "stats.json").read_text()) == json.loads((full / "stats.json").read_text())


def test_attempts_of_a_collection_with_other_settings_are_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    parts = out / "demos.hdf5.parts"
    (parts / "ee_vla__Reach-v0").mkdir(parents=True)
    (parts / "settings.json").write_text(json.dumps({"env_kwargs": {"image_size": 64}, "compression_level": 4}))
    (parts / "ee_vla__Reach-v0" / "7.failed").write_text("12")
    cfg = _small(out, env=("ee_vla/Reach-v0",), episodes=1)
    with pytest.raises(FileExistsError, match=r"unfinished collection with other settings .*--overwrite"):
        collect(cfg)
    assert (parts / "ee_vla__Reach-v0" / "7.failed").is_file()
    path = collect(_small(out, env=("ee_vla/Reach-v0",), episodes=1, overwrite=True))
    ds = load_dataset(path)
    assert len(ds) == 1 and ds[0].seed == 7 and ds[0].pixels.shape[1] == 32  # the old attempt was discarded


# ---- a corrupt file: the error names the file and the demonstration -------------------------------
def corrupt_chunk(path, dataset: str, chunk: int = 0) -> None:
    """Overwrite the compressed bytes of one chunk of `dataset` (its 2-byte zlib header kept)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\xff" * (info.size - 2))


def test_a_corrupt_chunk_names_the_file_and_the_demo(dataset, tmp_path):
    import shutil

    _, path = dataset
    bad = tmp_path / "demos.hdf5"
    shutil.copy(path, bad)
    corrupt_chunk(bad, "data/demo_1/obs/pixels")
    ds = load_dataset(bad)
    assert ds[0].pixels.shape[1:] == (32, 32, 3)  # the other demos still read
    with pytest.raises(DemoFileError, match=rf"{bad}:demo_1 cannot be read \(corrupt or truncated file\?\)"):
        ds[1]
