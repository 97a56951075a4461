import numpy as np
import pytest
from ros_fakes import TinyEnv

pytest.importorskip("cyclonedds")

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.messages import build_command  # noqa: E402
from ros_nodes.params import PolicyParams  # noqa: E402
from ros_nodes.runner import Emit  # noqa: E402
from ros_nodes.sim_bridge import SimBridge, SimBridgeParams  # noqa: E402


def cmd(kind, action, **kw):
    p = PolicyParams(command_type=kind, **kw)
    return build_command(
        msgs, Emit("trajectory" if kind == "trajectory" else "action", action, "chunk", dt=0.1), p, (0, 0)
    )


def test_applies_fresh_commands_and_zero_otherwise(clock):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="array", command_timeout_s=0.5), env=env, clock=clock)
    f = b.step()
    assert f.reset and f.instruction == "move right" and f.pixels.shape == (16, 16, 3)
    a = np.array([1.0, 0, 0, 0, 0, 0, 0.7])
    assert b.on_command_msg(cmd("array", a))
    b.step()
    assert np.allclose(env.actions[-1], a)
    clock.advance(1.0)  # command too old: zero action, gripper kept
    b.step()
    assert np.allclose(env.actions[-1], [0, 0, 0, 0, 0, 0, 0.7])
    assert b.commands_applied == 1


def test_twist_commands_keep_the_gripper(clock):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="twist"), env=env, clock=clock)
    b.step()
    b._gripper = -1.0
    assert b.on_command_msg(cmd("twist", np.array([0.5, 0, 0, 0, 0, 0.2, 1.0])))
    b.step()
    assert np.allclose(env.actions[-1], [0.5, 0, 0, 0, 0, 0.2, -1.0])


def test_trajectory_points_play_in_time(clock):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="trajectory"), env=env, clock=clock)
    b.step()
    pts = np.stack([np.full(7, v) for v in (0.1, 0.2, 0.3)])
    assert b.on_command_msg(cmd("trajectory", pts, joint_names=tuple("abcdefg")))
    for _ in range(3):
        clock.advance(0.1)
        b.step()
    assert [round(float(a[0]), 2) for a in env.actions] == [0.1, 0.2, 0.3]


def test_success_and_episode_reset(clock):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="array", max_episodes=2), env=env, clock=clock)
    b.step()
    frames = []
    while not b.done:
        b.on_command_msg(cmd("array", np.array([1.0, 0, 0, 0, 0, 0, 0])))
        frames.append(b.step())
    assert b.episodes_done == 2 and b.successes == 2
    assert sum(f.reset for f in frames) == 1 and frames[-1].success


def test_bad_commands_are_dropped(clock, caplog):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="array", wait_for_command=False), env=env, clock=clock)
    b.step()
    for _ in range(3):
        assert not b.on_command_msg(msgs.Float64MultiArray(data=[float("nan")] * 7))
        assert not b.on_command_msg(msgs.Float64MultiArray(data=[0.0] * 3))
        assert not b.on_command_msg(msgs.String(data="x"))
    assert len(caplog.records) == 3
    b.step()
    assert np.allclose(env.actions[-1], 0)


def test_params_validation():
    with pytest.raises(ValueError, match="command_type"):
        SimBridgeParams(command_type="joy")
    with pytest.raises(ValueError, match="success_topic"):
        SimBridgeParams(success_topic="")


def test_waits_for_the_first_command(clock):
    env = TinyEnv()
    b = SimBridge(SimBridgeParams(command_type="array"), env=env, clock=clock)
    first = b.step()
    held = [b.step() for _ in range(3)]
    assert env.actions == [] and all(f.step == 0 and not f.reset for f in held)
    assert np.array_equal(held[0].pixels, first.pixels)
    b.on_command_msg(cmd("array", np.zeros(7)))
    assert b.step().step == 1 and len(env.actions) == 1


def test_the_bridge_renders_the_policys_camera_size_and_names_a_rate_mismatch(
    tiny_vla_dir, openvla_dir, tmp_path, caplog
):
    """With `model_path` the env renders the policy's image size (64 for the tiny model, not the
    env's 128); `image_size` overrides it; a policy trained at another rate than the env's is named."""
    import json
    import logging
    import shutil

    def pixels(**kw):
        b = SimBridge(SimBridgeParams(env_id="ee_vla/Reach-v0", command_type="array", **kw))
        try:
            return b.step().pixels.shape
        finally:
            b.env.close()

    assert pixels(model_path=str(tiny_vla_dir)) == (64, 64, 3)
    assert pixels(model_path=str(openvla_dir)) == (224, 224, 3)  # an OpenVLA checkpoint's processor size
    assert pixels(model_path=str(tiny_vla_dir), image_size=32) == (32, 32, 3)
    fast = tmp_path / "fast"
    shutil.copytree(tiny_vla_dir, fast)
    extra = json.loads((fast / "ee_vla.json").read_text())
    extra["contract"] = {"control_hz": 80.0, "env_ids": [], "action_space": {}}
    (fast / "ee_vla.json").write_text(json.dumps(extra))
    with caplog.at_level(logging.WARNING, logger="ros_nodes.sim_bridge"):
        pixels(model_path=str(fast))
    assert any("80 Hz" in m and "10 Hz" in m for m in caplog.messages), caplog.messages
    with pytest.raises(ValueError, match="model_path"):
        SimBridgeParams(model_path=str(tmp_path / "missing")).contract()
    with pytest.raises(ValueError, match="image_size"):
        SimBridgeParams(image_size=8)
