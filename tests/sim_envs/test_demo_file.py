"""The demonstration file module: sim_envs stays independent of ee_vla, the writer's statistics are
the action tokenizer's, and the reader round-trips every entry the writer stores."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from sim_envs.demo_file import DemoFileError, DemoWriter, Episode, action_stats, load_dataset

SIM_ENVS = Path(__file__).resolve().parents[2] / "sim_envs"


def ee_vla_imports(source: str) -> list[str]:
    """The `import ee_vla...` / `from ee_vla... import` statements of `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n == "ee_vla" or n.startswith("ee_vla.")]
    return found


def test_the_check_finds_imports_inside_functions():
    src = "import numpy\n\ndef f():\n    from ee_vla.action_tokenizer import ActionStats\n    import ee_vla\n"
    assert ee_vla_imports(src) == ["line 4: ee_vla.action_tokenizer", "line 5: ee_vla"]
    assert ee_vla_imports("from ee_vla_extra import x\nimport sim_envs.common\n") == []


def test_sim_envs_imports_nothing_from_ee_vla():
    """sim_envs is the lower layer: ee_vla imports it, never the other way round."""
    files = sorted(SIM_ENVS.rglob("*.py"))
    assert SIM_ENVS / "collect.py" in files
    offending = {str(f.relative_to(SIM_ENVS)): ee_vla_imports(f.read_text()) for f in files}
    assert {f: found for f, found in offending.items() if found} == {}


def test_action_stats_are_the_tokenizers():
    from ee_vla.action_tokenizer import ActionStats

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (200, 7)).astype(np.float32)
    actions[:, 3] = 0.0  # a dim that never moves
    mask = [True] * 6 + [False]
    assert action_stats(actions, mask) == ActionStats.from_actions(actions, mask).to_dict()
    with pytest.raises(ValueError, match="NaN"):
        action_stats(np.full((3, 7), np.nan), mask)


def _episode(T: int, seed: int, **kw) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
        instruction="put the red cube on the blue plate",
        pixels=rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
        agent_pos=rng.normal(size=(T, 7)).astype(np.float32),
        env_id="ee_vla/Place-v0",
        seed=seed,
        success=False,
        rewards=rng.normal(size=T).astype(np.float32),
        **kw,
    )


def test_writer_and_reader_round_trip_every_entry(tmp_path):
    rng = np.random.default_rng(1)
    full = _episode(
        5,
        3,
        wrist_pixels=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8),
        task_points=rng.normal(size=(5, 6)).astype(np.float32),
        executed_actions=rng.uniform(-1, 1, (5, 7)).astype(np.float32),
        expert_chunks=rng.uniform(-1, 1, (5, 3, 7)).astype(np.float32),
    )
    plain = _episode(4, 4)
    with DemoWriter(tmp_path, ["ee_vla/Place-v0"], {}, {"what": "test"}, level=1) as w:
        w.add(full, labels="expert")
        w.add(plain)
    ds = load_dataset(tmp_path)
    assert ds.path == tmp_path / "demos.hdf5" and len(ds) == 2 and ds.env_ids == ["ee_vla/Place-v0"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert ds.action_stats == stats == action_stats(np.concatenate([full.actions, plain.actions]), [True] * 6 + [False])
    for written, read in zip([full, plain], ds, strict=True):
        for name in ("actions", "pixels", "agent_pos", "rewards", "wrist_pixels", "task_points"):
            np.testing.assert_array_equal(getattr(read, name), getattr(written, name))
        for name in ("executed_actions", "expert_chunks"):
            assert (getattr(read, name) is None) == (getattr(written, name) is None)
            np.testing.assert_array_equal(getattr(read, name), getattr(written, name))
        identity = ("instruction", "env_id", "seed", "success")
        assert [getattr(read, k) for k in identity] == [getattr(written, k) for k in identity]
    assert ds[0].attrs["labels"] == "expert" and "labels" not in ds[1].attrs
    assert ds.attrs["creation_args"] == json.dumps({"what": "test"})


def test_writer_refuses_an_episode_without_its_identity(tmp_path):
    ep = _episode(3, 0)
    ep.seed = None
    with pytest.raises(ValueError, match="Episode.seed"):
        with DemoWriter(tmp_path, ["ee_vla/Place-v0"], {}, {}) as w:
            w.add(ep)
    assert not (tmp_path / "demos.hdf5").exists() and not (tmp_path / "demos.hdf5.partial").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.attrs.__delitem__("instruction"), "demo_0 has no 'instruction'"),
        (lambda g: g["actions"].__setitem__((1, 2), np.nan), "demo_0/actions contains NaN"),
        (lambda g: g.__delitem__("obs/pixels"), "demo_0 has no 'obs/pixels'"),
        (lambda g: (g.__delitem__("obs/agent_pos"), g.create_dataset("obs/agent_pos", data=np.zeros((2, 7)))), "2 obs"),
        (
            lambda g: g.create_dataset("obs/wrist_pixels", data=np.zeros((2, 4, 4, 3), np.uint8)),
            "demo_0 has 2 obs/wrist_pixels images but 3 actions",
        ),
    ],
)
def test_reader_errors_name_the_file_and_the_demo(tmp_path, edit, message):
    with DemoWriter(tmp_path, ["ee_vla/Place-v0"], {}, {}) as w:
        w.add(_episode(3, 0))
    with h5py.File(tmp_path / "demos.hdf5", "r+") as f:
        edit(f["data/demo_0"])
    with pytest.raises(DemoFileError, match=message) as err:
        load_dataset(tmp_path)[0]
    assert str(tmp_path / "demos.hdf5") in str(err.value)


def test_every_image_under_obs_is_a_camera_read_one_at_a_time(tmp_path):
    """`Episode.cameras` are the (T, H, W, 3) uint8 datasets under obs/ (known before any image is
    read); `read_pixels(episodes, camera)` reads one camera of many episodes into one array and
    names an episode without it."""
    from sim_envs.demo_file import read_pixels

    rng = np.random.default_rng(2)
    eps = [_episode(T, T, wrist_pixels=rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8)) for T in (4, 3)]
    assert eps[0].cameras == ("pixels", "wrist_pixels")
    assert eps[0].camera_shapes == {"pixels": (16, 16, 3), "wrist_pixels": (16, 16, 3)}
    with DemoWriter(tmp_path, ["ee_vla/Place-v0"], {}, {}) as w:
        for ep in eps:
            w.add(ep)
    side = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "demos.hdf5", "r+") as f:
        f["data/demo_1/obs"].create_dataset("side_pixels", data=side)
        f["data/demo_1/obs"].create_dataset("depth", data=np.zeros((3, 8, 8), np.float32))  # not a camera
    lazy = load_dataset(tmp_path).episodes(pixels=False)
    assert lazy[0].cameras == ("pixels", "wrist_pixels")
    assert lazy[1].cameras == ("pixels", "side_pixels", "wrist_pixels")
    assert lazy[1].camera_shapes["side_pixels"] == (8, 8, 3) and lazy[1].image("side_pixels") is None
    wrist = read_pixels(lazy, "wrist_pixels")
    assert wrist.shape == (7, 16, 16, 3) and all(e.pixels is None for e in lazy)
    for written, read in zip(eps, lazy, strict=True):
        np.testing.assert_array_equal(read.wrist_pixels, written.wrist_pixels)
        np.testing.assert_array_equal(read.image("wrist_pixels"), written.wrist_pixels)
    with pytest.raises(DemoFileError, match=r"demo_0 has no obs/side_pixels \(1 of 2 episodes\)"):
        read_pixels(lazy, "side_pixels")
    read_pixels(lazy[1:], "side_pixels")
    np.testing.assert_array_equal(lazy[1].image("side_pixels"), side)
    read_pixels(lazy)
    np.testing.assert_array_equal(lazy[0].image("pixels"), eps[0].pixels)
