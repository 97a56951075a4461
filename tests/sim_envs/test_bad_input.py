"""Bad actions and arguments give a clear ValueError (or a documented clip), never a NaN simulation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from sim_envs.common import validate_action


@pytest.fixture
def env():
    e = gym.make("ee_vla/PickCube-v0", image_size=32)
    e.reset(seed=0)
    yield e.unwrapped  # the raw env: no PassiveEnvChecker in between
    e.close()


@pytest.mark.parametrize("shape", [(6,), (8,), (1, 7), (), (2, 7)])
def test_wrong_shape(env, shape):
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(env, bad):
    a = np.zeros(7)
    a[2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf in \['dz'\]"):
        env.step(a)


def test_non_numeric(env):
    with pytest.raises(ValueError, match="numeric"):
        env.step(["a"] * 7)


def test_out_of_range_is_clipped(env):
    """|a| > 1 is clipped to the bound: the same state as the saturated action."""
    big = np.array([5.0, -3.0, 2.0, 0, 0, 9.0, 4.0])
    np.testing.assert_array_equal(validate_action(big), np.clip(big, -1, 1))
    obs_big = env.step(big)[0]
    env.reset(seed=0)
    obs_clip = env.step(np.clip(big, -1, 1))[0]
    np.testing.assert_array_equal(obs_big["agent_pos"], obs_clip["agent_pos"])
    assert np.isfinite(obs_big["agent_pos"]).all()


def test_gripper_stays_in_workspace(env):
    for _ in range(30):
        obs, *_ = env.step(np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    assert np.isfinite(obs["agent_pos"]).all()
    assert obs["agent_pos"][2] > 0.005  # never through the table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 4}, "image_size"),
        ({"render_mode": "depth_array"}, "render_mode"),
        ({"camera": "side"}, "camera"),
        ({"wrist_camera": "false"}, "wrist_camera must be a bool, got 'false'"),  # a truthy string
    ],
)
def test_bad_constructor_args(kwargs, match):
    from sim_envs.reach import ReachEnv

    with pytest.raises(ValueError, match=match):
        ReachEnv(**kwargs)


def test_unknown_gym_id():
    with pytest.raises(gym.error.Error):
        gym.make("ee_vla/Nope-v0")
