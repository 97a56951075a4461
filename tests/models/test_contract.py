"""A model directory carries its contract: what the training data fixed (control rate, env ids,
action space) beside what the weights fix (chunk, image size, action and proprio dims, prompt)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ee_vla
from ee_vla.models import ModelLoadError
from ee_vla.models.contract import ModelContract, rate_mismatch, read_contract

TRAINING = Path(__file__).resolve().parents[1] / "training"


def test_the_shipped_policy_records_the_suite_rate_and_its_inputs():
    c = read_contract(ee_vla.DEFAULT_POLICY)
    assert c.control_hz == 10.0  # sim_envs' tabletop suite steps at 10 Hz
    assert set(c.env_ids) == {"ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0", "ee_vla/Place-v0"}
    assert (c.chunk_size, c.action_dim, c.image_size) == (8, 7, 128)
    assert c.action_space["names"][-1] == "gripper"


def test_reading_a_contract_loads_no_torch():
    code = (
        "import sys; from ee_vla.models.contract import read_contract; "
        f"read_contract({str(ee_vla.DEFAULT_POLICY)!r}); print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_a_model_without_a_recorded_rate_has_none_and_a_malformed_one_is_refused(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(ee_vla.DEFAULT_POLICY, model)
    extra = json.loads((model / "ee_vla.json").read_text())
    del extra["contract"]
    (model / "ee_vla.json").write_text(json.dumps(extra))
    assert read_contract(model).control_hz is None
    extra["contract"] = {"control_hz": -5}
    (model / "ee_vla.json").write_text(json.dumps(extra))
    with pytest.raises(ModelLoadError, match="control_hz must be a positive number"):
        read_contract(model)
    (model / "ee_vla.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        read_contract(model)


def test_rate_mismatch_names_both_rates_and_is_silent_when_they_agree_or_unknown():
    c = read_contract(ee_vla.DEFAULT_POLICY)
    msg = rate_mismatch(c, 20.0, "the node")
    assert msg is not None and "20 Hz" in msg and "10 Hz" in msg
    assert rate_mismatch(c, 10.0, "the node") is None
    unknown = ModelContract(chunk_size=3, action_dim=7, image_size=128, proprio_dim=0, prompt_template="{instruction}")
    assert rate_mismatch(unknown, 20.0, "the node") is None


def test_training_records_the_data_contract(tmp_path):
    """BC on demonstrations of a suite env id writes that env's rate into the model it saves, and
    the rate survives a reload and a re-save (distillation starts from the teacher's directory)."""
    sys.path.insert(0, str(TRAINING))
    try:
        from conftest import write_demo_file
    finally:
        sys.path.remove(str(TRAINING))
    from ee_vla.models.vla import VLA
    from ee_vla.training.bc import train
    from ee_vla.training.config import TrainConfig

    data = write_demo_file(tmp_path / "demos.hdf5", n_episodes=2, steps=6, env_id="ee_vla/PickCube-v0")
    cfg = TrainConfig(
        data=(str(data),), out_dir=str(tmp_path / "run"), preset="tiny", batch_size=4, steps=2, log_every=1,
        eval_every=0, augment=False, seed=0,
    )  # fmt: skip
    model_dir = train(cfg)
    c = read_contract(model_dir)
    assert c.control_hz == 10.0 and c.env_ids == ("ee_vla/PickCube-v0",)
    vla = VLA.from_pretrained(model_dir)
    assert vla.model_contract == c
    vla.save_pretrained(tmp_path / "again")
    assert read_contract(tmp_path / "again") == c
