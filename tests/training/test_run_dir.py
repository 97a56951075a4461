"""The run directory: a fresh run refuses a directory that is not a run's, and `--resume` refuses a
config that differs from its checkpoint's (unless allowed, then the new values take effect)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ee_vla.training import TrainConfig, train
from ee_vla.training.run_dir import ResumeConfigError, check_out_dir


def _cfg(data, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=tuple(map(str, data)),
        out_dir=str(out),
        preset="tiny",
        batch_size=4,
        lr=3e-3,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        augment=False,
        steps=4,
        save_every=2,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_model_directory_is_refused_and_left_intact(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    model = tmp_path / "model_dir"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match=rf"{model} is not empty and holds no training run .*config\.json"):
        train(_cfg([data], model))
    assert (model / "config.json").read_text() == '{"model_type": "llava"}'
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(FileExistsError, match="is a file"):
        train(_cfg([data], data))


def test_run_files_without_a_checkpoint_and_empty_dirs_are_accepted(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_out_dir(empty)
    check_out_dir(tmp_path / "absent")
    # a run ended before its first checkpoint, and distillation's trajectories collected alone
    killed = tmp_path / "killed"
    (killed / "trajectories").mkdir(parents=True)
    (killed / "config.json").write_text(json.dumps({"kind": "bc", "steps": 3}))
    (killed / "metrics.jsonl").write_text("")
    check_out_dir(killed)
    (killed / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        check_out_dir(killed)
    # a run (a checkpoint or a model) may hold more, e.g. an evaluation's output
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "eval").mkdir()
    check_out_dir(run)


@pytest.fixture
def cut_run(tmp_path, write_demo):
    """A 4-step run ended after step 2 (a checkpoint at step 2), and its data file."""
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=6)
    out = tmp_path / "run"
    train(_cfg([data], out, stop_after=2))
    return data, out


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": 1e-3}, "lr"),
        ({"batch_size": 2}, "batch_size"),
        ({"seed": 1}, "seed"),
        ({"weight_decay": 0.1}, "weight_decay"),
    ],
)
def test_resume_refuses_a_different_config(cut_run, change, field):
    data, out = cut_run
    before = (out / "config.json").read_text()
    with pytest.raises(ResumeConfigError, match=rf"config differs .*{field}: .*--allow-config-change"):
        train(_cfg([data], out, resume=True, **change))
    assert (out / "config.json").read_text() == before  # refused before anything is written


def test_resume_refuses_other_data_and_model_fields_even_when_allowed(cut_run, write_demo):
    data, out = cut_run
    other = write_demo(data.parent / "other.hdf5", n_episodes=2, steps=6, seed=3)
    with pytest.raises(ResumeConfigError, match="data: "):
        train(_cfg([other], out, resume=True))
    for change in ({"preset": "small"}, {"chunk_size": 2}, {"use_proprio": True}):
        with pytest.raises(ResumeConfigError, match=f"different {next(iter(change))} .*cannot change"):
            train(_cfg([data], out, resume=True, allow_config_change=True, **change))


def test_resume_accepts_the_same_run_named_differently_and_operational_changes(cut_run, monkeypatch):
    data, out = cut_run
    monkeypatch.chdir(data.parent)  # the same file given by a relative path
    train(_cfg([Path(data.name)], out, resume=True, log_every=2, save_every=4, num_workers=0, steps=4))
    assert [r["step"] for r in _rows(out)] == [1, 2, 4]


def test_allowed_lr_change_takes_effect_with_a_warning(cut_run, caplog):
    data, out = cut_run
    first = _rows(out)
    with caplog.at_level(logging.WARNING, logger="ee_vla.training.run_dir"):
        train(_cfg([data], out, resume=True, lr=1e-3, allow_config_change=True))
    assert "lr: 0.003 -> 0.001" in caplog.text
    rows = _rows(out)
    assert rows[:2] == first
    # cosine from 1 warmup step over 4 steps: the lr after step s is lr * 0.5 * (1 + cos(pi * (s - 1) / 3))
    assert rows[2]["lr"] == pytest.approx(1e-3 * 0.25) and rows[3]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
