"""Fixtures for the evaluation tests: a tiny random policy and a tiny fake Gymnasium env.

`FakeReachEnv` has the observation interface of `sim_envs` (`pixels`, `agent_pos`, the instruction in
`task_description` and `info`, `info["is_success"]` every step) but no physics and no rendering, so
that evaluation tests run in seconds. Its episodes end at seed-dependent times, which exercises the
bookkeeping of vector envs whose copies finish at different steps.
"""

from __future__ import annotations

import os

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

FAKE_ENV = "test_ee_vla/FakeReach-v0"
FAKE_ENV_4D = "test_ee_vla/FakeReach4D-v0"
FAKE_ENV_LONG = "test_ee_vla/FakeReachLong-v0"  # a much longer instruction: another prompt bucket
LONG_INSTRUCTION = "reach the {color} target slowly and carefully, keeping well away from the edges of the table"
COLORS = ("red", "green", "blue")


class FakeReachEnv(gymnasium.Env):
    """Move a point towards a goal; the image is a colour field that depends on the point.

    | obs         | shape       | dtype   |
    |-------------|-------------|---------|
    | `pixels`    | (S, S, 3)   | uint8   |
    | `agent_pos` | (3,)        | float32 |

    Reward: minus the distance to the goal. Success: distance < 0.4 (terminates). `info` also has
    `distance`, `point` (the position) and `outcome`: "success", "close" (< 1.5) or "far". The episode also
    terminates, unsuccessfully, after `3 + seed % 4` steps when reset with a seed. `crash_at_step`
    makes `step` raise (an env that crashes).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        image_size: int = 32,
        action_dim: int = 7,
        crash_at_step: int | None = None,
        render_mode: str | None = None,
        instruction: str = "reach the {color} target",
    ):
        self.image_size = image_size
        self.instruction = instruction
        self.crash_at_step = crash_at_step
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "agent_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.task_description = ""
        self._pos = np.zeros(3)
        self._goal = np.zeros(3)
        self._t = 0
        self._horizon = 5

    def _obs(self) -> dict:
        s = self.image_size
        ramp = np.linspace(0, 1, s)[None, :, None]
        base = np.clip(0.5 + 0.5 * np.concatenate([self._pos, self._goal])[None, None, :3] + 0.3 * ramp, 0, 1)
        px = (np.broadcast_to(base, (s, s, 3)) * 255).astype(np.uint8)
        return {"pixels": np.ascontiguousarray(px), "agent_pos": self._pos.astype(np.float32)}

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self._pos - self._goal))
        return {
            "is_success": bool(distance < 0.4),
            "task_description": self.task_description,
            "outcome": "success" if distance < 0.4 else "close" if distance < 1.5 else "far",
            "distance": distance,
            "point": self._pos.copy(),  # not a scalar: not one of an episode's final_info numbers
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1, 1, 3)
        self._goal = self.np_random.uniform(-1, 1, 3)
        self._t = 0
        self._horizon = 3 + (seed % 4 if seed is not None else 2)
        self.task_description = self.instruction.format(color=COLORS[int(self.np_random.integers(3))])
        return self._obs(), self._info()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        self._pos = self._pos + 0.3 * a[:3]
        self._t += 1
        if self.crash_at_step is not None and self._t >= self.crash_at_step:
            raise RuntimeError("FakeReachEnv crashed on purpose")
        info = self._info()
        reward = -float(np.linalg.norm(self._pos - self._goal))
        terminated = info["is_success"] or self._t >= self._horizon
        return self._obs(), reward, terminated, False, info

    def render(self):
        return self._obs()["pixels"]


if FAKE_ENV not in gymnasium.registry:
    gymnasium.register(FAKE_ENV, entry_point=FakeReachEnv, max_episode_steps=8)
    gymnasium.register(FAKE_ENV_4D, entry_point=FakeReachEnv, max_episode_steps=8, kwargs={"action_dim": 4})
    gymnasium.register(
        FAKE_ENV_LONG, entry_point=FakeReachEnv, max_episode_steps=8, kwargs={"instruction": LONG_INSTRUCTION}
    )


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> str:
    """A tiny random VLA (7-dim actions, chunk of 3, no proprio) saved once per session."""
    from ee_vla.models import create_random_vla_dir

    return str(create_random_vla_dir(tmp_path_factory.mktemp("policy") / "m", preset="tiny"))


@pytest.fixture(scope="session")
def two_camera_policy_dir(tmp_path_factory) -> str:
    """A tiny random VLA that reads two cameras, `pixels` then `wrist_pixels` (the suite's gripper
    camera), saved once per session."""
    from ee_vla.models import create_random_vla_dir

    path = tmp_path_factory.mktemp("policy") / "two_cameras"
    return str(create_random_vla_dir(path, preset="tiny", cameras=("pixels", "wrist_pixels")))


@pytest.fixture(scope="session")
def sim_env_id() -> str:
    """`ee_vla/PickCube-v0`, registered by importing sim_envs (a hard requirement of these tests)."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo reads it at import (Mesa EGL on a CPU)
    import sim_envs  # noqa: F401

    assert "ee_vla/PickCube-v0" in gymnasium.registry
    return "ee_vla/PickCube-v0"
