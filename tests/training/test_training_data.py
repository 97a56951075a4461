"""Demonstration reading: chunk targets, multi-file sets, and clear errors before any compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer
from ee_vla.training import DistillConfig, TrainConfig, distill, train
from ee_vla.training.data import (
    DatasetError,
    DemoDataset,
    chunk_actions,
    compute_action_stats,
    load_pixels,
    scan_dataset,
)


def test_chunk_actions_repeats_the_last_action():
    a = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    assert chunk_actions(a, 1).shape == (4, 1, 2)
    np.testing.assert_array_equal(chunk_actions(a, 1)[:, 0], a)
    c = chunk_actions(a, 3)
    np.testing.assert_array_equal(c[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(c[2, :, 0], [2, 3, 3])
    np.testing.assert_array_equal(c[3, :, 0], [3, 3, 3])


@pytest.mark.parametrize("k", [1, 3])
def test_dataset_targets_are_tokenised_chunks(demo_file, k):
    eps = scan_dataset([demo_file])
    load_pixels(eps)
    tok = ActionTokenizer.openvla(compute_action_stats(eps), vocab_size=1000)
    ds = DemoDataset(eps, tok, k, use_proprio=True)
    assert len(ds) == 30
    item = ds[13]  # episode 1, step 3
    assert item["episode"] == 1 and item["t"] == 3 and item["pixels"].shape == (64, 64, 3)
    assert item["instruction"] == "pick up the green cube" and item["proprio"].shape == (4,)
    expected = tok.encode_chunk(chunk_actions(eps[1].actions, k)[3])
    np.testing.assert_array_equal(item["target"], expected)
    assert item["target"].shape == (k * 7,)
    last = ds[29]["target"].reshape(k, 7)
    assert (last == last[-1]).all()  # padded by repeating the final action


def test_batches_hold_the_files_arrays(tmp_path, write_demo):
    """A batch of frames from several files is the files' own images, proprio and chunked actions,
    and each episode keeps its file's instruction, attributes and name."""
    import h5py

    files = [write_demo(tmp_path / "a.hdf5", n_episodes=2, steps=6), write_demo(tmp_path / "b.hdf5", seed=4)]
    eps = scan_dataset(files)
    load_pixels(eps)
    raw = []
    for f in files:
        with h5py.File(f, "r") as h5:
            for key in sorted(h5["data"], key=lambda k: int(k.split("_")[1])):
                g = h5["data"][key]
                raw.append((f"{f}:{key}", g["obs/pixels"][()], g["obs/agent_pos"][()], g["actions"][()], dict(g.attrs)))
    assert [e.source for e in eps] == [r[0] for r in raw]
    tok = ActionTokenizer.openvla(compute_action_stats(eps), vocab_size=1000)
    ds = DemoDataset(eps, tok, 3, use_proprio=True)
    idx = list(range(len(ds)))[::-1]
    batch = ds.__getitems__(idx)
    for row, (e, t) in enumerate(zip(batch["episode"], batch["t"], strict=True)):
        _, pixels, agent_pos, actions, attrs = raw[e]
        np.testing.assert_array_equal(batch["pixels"][row], pixels[t])
        np.testing.assert_array_equal(batch["proprio"][row], agent_pos[t])
        np.testing.assert_array_equal(batch["target"][row], tok.encode_chunk(chunk_actions(actions, 3)[t]))
        assert batch["instruction"][row] == attrs["instruction"]
    for e, (_, _, _, _, attrs) in zip(eps, raw, strict=True):
        assert e.attrs["env_id"] == attrs["env_id"] and e.attrs["seed"] == attrs["seed"]


def test_directory_and_multi_file(tmp_path, write_demo):
    d = tmp_path / "set"
    d.mkdir()
    write_demo(d / "a.hdf5", n_episodes=2, steps=5)
    write_demo(d / "b.h5", n_episodes=1, steps=4, seed=3)
    (d / "notes.txt").write_text("ignored")
    eps = scan_dataset([d])
    assert [len(e) for e in eps] == [5, 5, 4]


def test_unsuccessful_demos_are_skipped(tmp_path, write_demo):
    f = write_demo(tmp_path / "x.hdf5", success=[True, False, True])
    assert len(scan_dataset([f])) == 2
    assert len(scan_dataset([f], success_only=False)) == 3
    g = write_demo(tmp_path / "y.hdf5", success=[False, False, False])
    with pytest.raises(DatasetError, match="no usable demonstrations"):
        scan_dataset([g])


def test_bad_datasets_have_clear_errors(tmp_path, write_demo):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset([tmp_path / "missing.hdf5"])
    empty = write_demo(tmp_path / "empty.hdf5", with_demos=False)
    with pytest.raises(DatasetError, match="holds no demonstrations"):
        scan_dataset([empty])
    (tmp_path / "nodata").mkdir()
    with pytest.raises(DatasetError, match="holds no"):
        scan_dataset([tmp_path / "nodata"])
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        scan_dataset([tmp_path / "junk.hdf5"])
    a = write_demo(tmp_path / "a7.hdf5", action_dim=7)
    b = write_demo(tmp_path / "b6.hdf5", action_dim=6)
    with pytest.raises(DatasetError, match="action dims differ"):
        scan_dataset([a, b])


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if training reaches the point where processes start and models are built."""

    def boom(*args, **kwargs):
        raise AssertionError("compute started before the input was validated")

    monkeypatch.setattr("ee_vla.training.bc.init_runtime", boom)
    monkeypatch.setattr("ee_vla.training.consistency.init_runtime", boom)


def _cfg(tmp_path: Path, data, **kw) -> TrainConfig:
    return TrainConfig(data=tuple(map(str, data)), out_dir=str(tmp_path / "run"), preset="tiny", **kw)


def test_train_fails_before_compute(tmp_path, write_demo, no_compute):
    with pytest.raises(DatasetError, match="does not exist"):
        train(_cfg(tmp_path, [tmp_path / "missing.hdf5"]))
    empty = write_demo(tmp_path / "empty.hdf5", with_demos=False)
    with pytest.raises(DatasetError, match="holds no demonstrations"):
        train(_cfg(tmp_path, [empty]))
    six = write_demo(tmp_path / "six.hdf5", action_dim=6)
    stats = tmp_path / "stats.json"
    ActionStats(q01=[-1.0] * 7, q99=[1.0] * 7, mask=[True] * 7).save(stats)
    with pytest.raises(DatasetError, match="6 dims but action_stats"):
        train(_cfg(tmp_path, [six], action_stats=str(stats)))


def test_mismatched_policy_dims_fail_before_compute(tmp_path, write_demo, no_compute):
    from ee_vla.models import create_random_vla_dir

    model = create_random_vla_dir(tmp_path / "model", chunk_size=1)  # 7-dim actions, no proprio
    six = write_demo(tmp_path / "six.hdf5", action_dim=6)
    with pytest.raises(DatasetError, match="6 dims but the model"):
        train(_cfg(tmp_path, [six], init_from=str(model)))
    with pytest.raises(DatasetError, match="6 dims but the teacher"):
        distill(DistillConfig(data=(str(six),), out_dir=str(tmp_path / "d"), teacher=str(model)))
    with pytest.raises(FileNotFoundError, match="resume"):
        train(_cfg(tmp_path, [write_demo(tmp_path / "ok.hdf5")], resume=True))


def _overwrite_chunk(path, dataset: str) -> None:
    """Overwrite the compressed bytes of the first chunk of `dataset` (its 2-byte zlib header kept)."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\xff" * (info.size - 2))


@pytest.mark.parametrize("dataset", ["obs/pixels", "actions"])
def test_a_corrupt_chunk_names_the_file_and_the_demo(tmp_path, dataset):
    import h5py

    path = tmp_path / "demos.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for i in range(2):
            g = f.create_group(f"data/demo_{i}")
            g.create_dataset("obs/pixels", data=rng.integers(0, 255, (5, 16, 16, 3), np.uint8), compression="gzip")
            g.create_dataset("actions", data=rng.normal(size=(5, 7)).astype(np.float32), compression="gzip")
            g.attrs["instruction"] = "pick up the cube"
    _overwrite_chunk(path, f"data/demo_1/{dataset}")
    with pytest.raises(DatasetError, match=rf"{path}:demo_1(/obs/pixels)? cannot be read \(corrupt or truncated"):
        load_pixels(scan_dataset([path]))
