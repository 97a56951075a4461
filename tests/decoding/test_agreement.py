"""`ee_vla.decoding.agreement`: distances from AR's tokens, on the tiny random VLA."""

import numpy as np
import pytest
import torch

from ee_vla.decoding.agreement import AgreementConfig, Frame, agreement
from ee_vla.policy import VLAPolicy


def _frames(policy, n: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    frames, warm = [], None
    for i in range(n):
        obs = {"pixels": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "instruction": f"pick up cube {i}"}
        policy.warm_start_tokens = warm
        policy.predict_action_chunk(obs)
        frames.append(Frame(obs, warm, policy.warm_start_tokens.clone()))
        warm = frames[-1].ar_tokens
    return frames


def test_exact_decoders_are_at_distance_zero_and_distances_are_in_bins(tiny_vla_dir):
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar")
    frames = _frames(policy, 3)
    variant = "jacobi:init=warm:guess_in_prefill=true"  # a preset's variant, by its spec
    r = agreement(policy, frames, ["ar", "jacobi", "ceed_cap", variant])
    for name in ("ar", "jacobi", variant):
        assert r[name]["max_bins"] == 0 and r[name]["tokens_exact"] == 1.0 and r[name]["chunks_exact"] == 1.0
    assert r["ar"]["forward_passes"] == 21 and r["ceed_cap"]["forward_passes"] <= 3
    assert r["ar"]["tokens"] == 3 * 21
    # AR's reference moved by two bins on every token of one frame: 21 of 63 tokens at distance 2
    lo, _ = policy.vla.action_range
    shifted = frames[0].ar_tokens.clone()
    shifted = torch.where(shifted - 2 >= lo, shifted - 2, shifted + 2)
    moved = [Frame(frames[0].obs, frames[0].warm, shifted), *frames[1:]]
    r = agreement(policy, moved, ["jacobi"])["jacobi"]
    assert r["max_bins"] == 2 and r["mean_bins"] == pytest.approx(2 / 3) and r["chunks_exact"] == pytest.approx(2 / 3)
    assert policy.decoder.method == "ar"  # restored


def test_config_names_unknown_decoders():
    with pytest.raises(ValueError, match="unknown decoder 'fast'"):
        AgreementConfig(policy="x", decoders=["fast"])
    with pytest.raises(ValueError, match="decoder 'jacobi:tau=1': "):
        AgreementConfig(policy="x", decoders=["jacobi:tau=1"])
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        AgreementConfig(policy="x", episodes=0)


def test_progress_counts_final_and_correct_tokens_per_snapshot(tiny_vla_dir):
    """AR finalises one token per forward pass, each equal to AR's; Jacobi ends with all 21 final
    and equal, and never has fewer final tokens than at the snapshot before."""
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar")
    frames = _frames(policy, 3)
    r = agreement(policy, frames, ["ar", "jacobi"])
    ar, jac = r["ar"]["progress"], r["jacobi"]["progress"]
    assert ar["final"] == [float(k + 1) for k in range(21)]  # the prefill's token, then one per pass
    assert all(c >= f for c, f in zip(ar["equal_to_ar"], ar["final"], strict=True))
    assert ar["equal_to_ar"][-1] == 21.0
    assert jac["final"][-1] == jac["equal_to_ar"][-1] == 21.0
    assert jac["final"] == sorted(jac["final"]) and jac["final"][0] == 1.0
    assert len(jac["final"]) == len(jac["equal_to_ar"]) <= 21
    assert r["ar"]["forward_passes"] == len(ar["final"])  # one snapshot per forward pass


def test_distances_are_given_per_action_and_per_env(tiny_vla_dir):
    """AR's reference moved by two bins on the last action of env b's one frame: env a stays
    exact, env b's distance is in its last action only, and the overall figures pool both."""
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar")
    frames = _frames(policy, 3)
    D = policy.action_dim
    lo, _ = policy.vla.action_range
    ref = frames[2].ar_tokens.clone()
    last = ref[:, -D:]
    ref[:, -D:] = torch.where(last - 2 >= lo, last - 2, last + 2)
    tagged = [Frame(f.obs, f.warm, f.ar_tokens, "a") for f in frames[:2]] + [
        Frame(frames[2].obs, frames[2].warm, ref, "b")
    ]
    r = agreement(policy, tagged, ["jacobi"])["jacobi"]
    assert set(r["per_env"]) == {"a", "b"}
    a, b = r["per_env"]["a"], r["per_env"]["b"]
    assert a["frames"] == 2 and a["tokens_exact"] == 1.0 and a["action_mean_bins"] == [0.0, 0.0, 0.0]
    assert b["frames"] == 1 and b["chunks_exact"] == 0.0 and b["action_mean_bins"] == [0.0, 0.0, 2.0]
    assert b["first_action_max_bins"] == 0.0 and b["max_bins"] == 2.0
    assert r["action_mean_bins"] == pytest.approx([0.0, 0.0, 2 / 3]) and r["chunks_exact"] == pytest.approx(2 / 3)
    assert "per_env" not in agreement(policy, frames, ["jacobi"])["jacobi"]  # one env: no breakdown


def test_frames_of_a_two_camera_policy_hold_each_camera(tmp_path, monkeypatch):
    """`collect_frames` makes the env render the gripper camera for a policy that reads it, each
    frame holds both images, and the JSON of `main` names the cameras; Meta-World, without a
    gripper camera, is refused before an env is made."""
    import json

    from ee_vla.decoding import agreement as module
    from ee_vla.models import create_random_vla_dir

    monkeypatch.setenv("MUJOCO_GL", "egl")
    model = create_random_vla_dir(tmp_path / "m", cameras=("pixels", "wrist_pixels"))
    policy = VLAPolicy.from_pretrained(model, decoder="ar")
    frames = module.collect_frames(policy, "ee_vla/Reach-v0", [0], max_frames_per_episode=2)
    assert len(frames) == 2
    for f in frames:
        assert f.obs["wrist_pixels"].shape == f.obs["pixels"].shape == (128, 128, 3)
        assert not np.array_equal(f.obs["wrist_pixels"], f.obs["pixels"])
    assert agreement(policy, frames, ["jacobi"])["jacobi"]["chunks_exact"] == 1.0
    with pytest.raises(ValueError, match="OneCamera-v0 has no camera 'wrist_pixels'"):
        module.collect_frames(policy, "test_ee_vla/OneCamera-v0", [0])
    cfg = AgreementConfig(
        policy=model,
        env=["ee_vla/Reach-v0"],
        decoders=["jacobi"],
        episodes=1,
        max_frames_per_episode=1,
        output=tmp_path / "agreement.json",
    )
    module.main(cfg)
    assert json.loads((tmp_path / "agreement.json").read_text())["cameras"] == ["pixels", "wrist_pixels"]
