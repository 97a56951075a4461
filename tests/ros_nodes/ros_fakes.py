"""Test doubles for the ROS layer: a fake policy with controllable timing, a fake clock, a tiny env.

Also imported by the DDS subprocess scripts (they put this directory on sys.path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from ee_vla.streaming import StreamedAction


class FakeClock:
    """A manually advanced clock."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


def action_value(chunk: int, index: int, dim: int = 7) -> np.ndarray:
    """The fake policy's action `index` of its `chunk`-th call (1-based): recognisable and in [-1, 1]."""
    a = np.full(dim, 0.01 * chunk + 0.1 * index)
    a[-1] = 0.5
    return a


class FakePolicy:
    """Streams `chunk_size` actions per call.

    Args:
        delay_s: real sleep before each action (streaming with latency).
        gate: if given, each action waits for a release (`gate.release()`) - deterministic tests.
        fail: exception raised on every call (a broken model), or on calls where fail_when(call) is true.
        clock: timestamps of the StreamedActions.
        values: action generator (call, index) -> (action_dim,) array.
    """

    def __init__(
        self,
        chunk_size: int = 4,
        action_dim: int = 7,
        delay_s: float = 0.0,
        gate: threading.Semaphore | None = None,
        fail: BaseException | None = None,
        fail_when: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        values: Callable[[int, int], np.ndarray] | None = None,
    ):
        self.chunk_size = chunk_size
        self.action_dim = action_dim
        self.delay_s = delay_s
        self.gate = gate
        self.fail = fail
        self.fail_when = fail_when
        self.clock = clock
        self.values = values or (lambda c, i: action_value(c, i, action_dim))
        self.calls: list[dict[str, Any]] = []
        self.deadlines: list[Callable[[int], float | None] | None] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def stream_action_chunk(self, obs: dict[str, Any], action_deadline=None) -> Iterator[StreamedAction]:
        self.calls.append(obs)
        self.deadlines.append(action_deadline)
        call = len(self.calls)
        if self.fail is not None and (self.fail_when is None or self.fail_when(call)):
            raise self.fail
        for i in range(self.chunk_size):
            if self.gate is not None:
                if not self.gate.acquire(timeout=10):
                    raise TimeoutError("fake policy gate never released")
            if self.delay_s:
                time.sleep(self.delay_s)
            a = np.asarray(self.values(call, i), dtype=np.float64)
            yield StreamedAction(i, a, np.zeros(self.action_dim, np.int64), self.clock(), True, i + 1)


class TinyEnv(gym.Env):
    """A 7-dof point 'robot' with a 16x16 camera: success when agent_pos[0] > 0.5 (episodes of 20 steps)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, render_mode: str | None = "rgb_array", max_steps: int = 20):
        self.render_mode = render_mode
        self.max_steps = max_steps
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
            }
        )
        self.task_description = "move right"
        self.pos = np.zeros(3)
        self.t = 0
        self.actions: list[np.ndarray] = []

    def _obs(self) -> dict[str, Any]:
        px = np.zeros((16, 16, 3), np.uint8)
        px[..., 0] = min(255, self.t * 10)
        return {"pixels": px, "agent_pos": self.pos.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(3)
        self.t = 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        self.actions.append(action)
        self.pos = self.pos + 0.1 * action[:3]
        self.t += 1
        success = bool(self.pos[0] > 0.5)
        return self._obs(), float(success), success, self.t >= self.max_steps, {"is_success": success}
