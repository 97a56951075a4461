"""Behaviour cloning end to end on CPU: the loss falls, checkpoints reload, resume is exact."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ee_vla.training import TrainConfig, train
from ee_vla.training.run_dir import list_checkpoints, load_trainer_state


def _cfg(data, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=tuple(map(str, data)),
        out_dir=str(out),
        preset="tiny",
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        log_every=1,
        eval_every=0,
        augment=False,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[dict]:
    """The metrics.jsonl rows without the throughput (which depends on the machine)."""
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in _rows(out)]


def _assert_same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("k", [1, 3])
def test_bc_overfits_and_reloads(tmp_path, write_demo, k):
    from ee_vla.models.vla import VLA
    from ee_vla.policy import VLAPolicy

    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=8)
    out = tmp_path / "run"
    model_dir = train(_cfg([data], out, chunk_size=k, steps=24, save_every=12, use_proprio=k == 3, eval_every=24))
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 25))
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < first - 1.0, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert "eval/jacobi_iterations" in rows[-1] and (out / "loss.png").stat().st_size > 1000
    assert [p.name for p in list_checkpoints(out)] == ["step_0000012", "step_0000024"]
    assert model_dir == out / "model"
    vla = VLA.from_pretrained(model_dir)
    assert vla.chunk_size == k and vla.action_dim == 7 and vla.proprio_dim == (4 if k == 3 else 0)
    assert vla.meta["training"]["kind"] == "bc"
    policy = VLAPolicy.from_pretrained(model_dir, decoder="jacobi")
    obs = {"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "pick up the red cube"}
    if k == 3:
        obs["agent_pos"] = np.zeros(4, np.float32)
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (k, 7) and np.isfinite(chunk).all()


def test_init_from_with_chunk_size_fine_tunes_to_longer_chunks(tmp_path, write_demo):
    from ee_vla.models.vla import VLA
    from ee_vla.policy import VLAPolicy

    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=8)
    base = train(_cfg([data], tmp_path / "k1", chunk_size=1, steps=2))
    assert train(_cfg([data], tmp_path / "kept", init_from=str(base), steps=2)) and (
        VLA.from_pretrained(tmp_path / "kept" / "model").chunk_size == 1
    )
    out = tmp_path / "k4"
    model_dir = train(_cfg([data], out, init_from=str(base), chunk_size=4, steps=12, eval_every=12))
    rows = _rows(out)
    assert rows[-1]["loss"] < rows[0]["loss"], "the 4-action targets were not learned"
    assert VLA.from_pretrained(model_dir).chunk_size == 4
    policy = VLAPolicy.from_pretrained(model_dir, decoder="jacobi")
    obs = {"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "pick up the red cube"}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (4, 7) and np.isfinite(chunk).all()


def test_resume_continues_exactly(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    full = tmp_path / "full"
    cfg = _cfg([data], full, steps=6, save_every=3, keep_checkpoints=5, augment=True)
    train(cfg)
    # an interrupted run: the same run with everything after step 3 lost
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000006")
    shutil.rmtree(cut / "model")
    with pytest.raises(FileExistsError, match="resume"):
        train(_cfg([data], cut, steps=6, save_every=3, augment=True))
    train(_cfg([data], cut, steps=6, save_every=3, keep_checkpoints=5, augment=True, resume=True))
    assert load_trainer_state(cut / "checkpoints" / "step_0000006")["step"] == 6
    assert [r["step"] for r in _rows(cut)] == [1, 2, 3, 4, 5, 6]
    # on one CPU process the resumed run repeats the uninterrupted one to the bit
    assert _losses(cut) == _losses(full)
    _assert_same_weights(full / "model", cut / "model")
    # resuming a finished run is a no-op that keeps the result
    train(_cfg([data], cut, steps=6, save_every=3, keep_checkpoints=5, augment=True, resume=True))
    assert [r["step"] for r in _rows(cut)] == [1, 2, 3, 4, 5, 6]


def test_the_same_seed_trains_to_the_bit(tmp_path, write_demo):
    """The model's init, the batch order, the augmentation and the evaluation follow `seed`: two
    runs of one config log the same metrics and end with the same weights; another seed differs."""
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=3, steps=6)
    kw = dict(steps=5, log_every=2, save_every=3, eval_every=4, eval_samples=4, augment=True, val_fraction=0.34)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(_cfg([data], tmp_path / name, seed=seed, **kw))
    a, b, c = (_losses(tmp_path / name) for name in "abc")
    assert [r["step"] for r in a] == [2, 4, 5] and "eval/start_action_l1" in a[1]
    assert a == b
    _assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_model_files_get_the_mode_of_new_files(tmp_path, write_demo):
    """Every file of a checkpoint and of the final model, weights included, has the mode the
    umask gives new files (as metrics.jsonl has)."""
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        train(_cfg([data], out, steps=2, save_every=2))
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "metrics.jsonl").stat().st_mode) == 0o640
    files = [p for d in (out / "model", out / "checkpoints" / "step_0000002") for p in d.iterdir()]
    assert any(p.name == "model.safetensors" for p in files)
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == dict.fromkeys(modes, oct(0o640))


def test_new_file_mode_follows_the_umask_with_or_without_proc(monkeypatch):
    from ee_vla.models import vla as vla_module

    old = os.umask(0o027)
    try:
        assert vla_module.new_file_mode() == 0o640
        real = Path.read_text

        def no_proc(self, *a, **kw):
            if str(self).startswith("/proc"):
                raise OSError("no /proc")
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "read_text", no_proc)
        assert vla_module.new_file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(old)


def test_stop_after_ends_early_on_the_long_schedule_and_resumes(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    full = tmp_path / "full"
    train(_cfg([data], full, steps=6, save_every=3, keep_checkpoints=5))
    cut = tmp_path / "cut"
    model = train(_cfg([data], cut, steps=6, save_every=3, keep_checkpoints=5, stop_after=4))
    assert model.is_dir() and [r["step"] for r in _rows(cut)] == [1, 2, 3, 4]
    assert _rows(cut)[-1]["lr"] == pytest.approx(_rows(full)[3]["lr"])  # the 6-step schedule, not a 4-step one
    assert load_trainer_state(cut / "checkpoints" / "step_0000004")["step"] == 4
    train(_cfg([data], cut, steps=6, save_every=3, keep_checkpoints=5, resume=True))
    for a, b in zip(_rows(full), _rows(cut), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="stop_after"):
        _cfg([data], cut, steps=6, stop_after=7)


def test_max_minutes_ends_at_a_logged_step_with_a_model_and_resumes(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    out = tmp_path / "timed"
    model = train(_cfg([data], out, steps=6, log_every=2, save_every=5, keep_checkpoints=5, max_minutes=1e-9))
    assert model.is_dir() and [r["step"] for r in _rows(out)] == [2]  # the first logged step is past the budget
    assert load_trainer_state(out / "checkpoints" / "step_0000002")["step"] == 2
    train(_cfg([data], out, steps=6, log_every=2, save_every=5, keep_checkpoints=5, resume=True))
    assert [r["step"] for r in _rows(out)] == [2, 4, 6]
    untimed = tmp_path / "untimed"
    train(_cfg([data], untimed, steps=6, log_every=2, save_every=5, max_minutes=60))
    assert [r["step"] for r in _rows(untimed)] == [2, 4, 6]
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_minutes must be > 0"):
            _cfg([data], out, max_minutes=bad)


def test_multi_task_directory_and_half_precision_export(tmp_path, write_demo):
    from ee_vla.models.vla import VLA

    d = tmp_path / "tasks"
    d.mkdir()
    write_demo(d / "a.hdf5", n_episodes=1, steps=6, env_id="ee_vla/A-v0")
    write_demo(d / "b.hdf5", n_episodes=2, steps=5, env_id="ee_vla/B-v0", seed=1)
    out = train(_cfg([d], tmp_path / "run", steps=2, save_dtype="bfloat16", augment=True))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    vla = VLA.from_pretrained(out)
    assert vla.tokenizer("pick up the blue cube").input_ids  # instructions of both files in the corpus


def test_input_noise_corrupts_only_the_fed_tokens_at_its_rate():
    from ee_vla.training.bc import bc_objective, corrupt_inputs

    window = torch.full((200, 20), 500)
    g = torch.Generator().manual_seed(0)
    out = corrupt_inputs(window, 0.3, (300, 555), g)
    changed = (out != window).float().mean().item()
    assert 0.25 < changed < 0.32  # a redraw can land on 500 itself (1 in 256)
    assert out.min() >= 300 and out.max() <= 555
    assert torch.equal(corrupt_inputs(window, 0.0, (300, 555), g), window)
    with pytest.raises(ValueError, match="token_range"):
        bc_objective((300, 555), input_noise=0.5)


def test_input_noise_trains_and_is_validated(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=8)
    out = tmp_path / "run"
    train(_cfg([data], out, steps=20, input_noise=0.5, eval_every=20))
    rows = _rows(out)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert 0 <= rows[-1]["eval/first_token_acc"] <= 1 and rows[-1]["eval/first_action_l1"] >= 0
    with pytest.raises(ValueError, match="input_noise"):
        _cfg([data], tmp_path / "bad", input_noise=1.0)


def test_ema_decay_saves_the_average_and_the_last_weights_and_resumes(tmp_path, write_demo):
    """With ema_decay the final model is the exponential average of the weights after each step past
    the warmup (checked against the checkpoint of every step), model_raw the last step's; resuming
    carries the average on to the same result."""
    from safetensors.torch import load_file

    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    d = 0.6
    kw = dict(steps=5, warmup_steps=2, save_every=1, keep_checkpoints=10, ema_decay=d)
    out = tmp_path / "ema"
    train(_cfg([data], out, **kw))
    steps = {int(p.name[5:]): load_file(p / "model.safetensors") for p in list_checkpoints(out)}
    assert sorted(steps) == [1, 2, 3, 4, 5]
    avg, raw = load_file(out / "model" / "model.safetensors"), load_file(out / "model_raw" / "model.safetensors")
    moved = 0
    for key in avg:
        assert torch.equal(raw[key], steps[5][key]), key
        expected = steps[3][key].clone()  # the first step past the warmup is copied
        for s in (4, 5):
            expected = d * expected + (1 - d) * steps[s][key]
        torch.testing.assert_close(avg[key], expected, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(avg[key], raw[key])
    assert moved > 0, "the average equals the last step's weights"
    # an interrupted run resumes with the average it had
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    for s in (4, 5):
        shutil.rmtree(cut / "checkpoints" / f"step_{s:07d}")
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "model_raw")
    train(_cfg([data], cut, resume=True, **kw))
    _assert_same_weights(out / "model", cut / "model")
    _assert_same_weights(out / "model_raw", cut / "model_raw")


def test_ema_decay_ending_within_the_warmup_keeps_the_last_weights(tmp_path, write_demo, caplog):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    out = tmp_path / "short"
    with caplog.at_level("WARNING"):
        train(_cfg([data], out, steps=2, warmup_steps=2, ema_decay=0.9))
    assert "before the average started" in caplog.text
    assert not (out / "model_raw").exists()
    _assert_same_weights(out / "model", list_checkpoints(out)[-1])
    with pytest.raises(ValueError, match="ema_decay"):
        _cfg([data], out, ema_decay=1.0)
