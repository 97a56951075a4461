"""Meta-World v3 tasks behind the ee_vla observation interface.

Meta-World (Farama, `metaworld` 3.1.1) is an external benchmark: a Sawyer arm driven by a mocap
weld, 50 manipulation tasks, each with 50 goal/object configurations per benchmark. This adapter
wraps one task so that it looks like the ee_vla suite: a rendered `pixels` image, `agent_pos`
proprio, an instruction string, `info["is_success"]` from Meta-World's own success flag, and the
7-dim action (dx, dy, dz, droll, dpitch, dyaw, gripper), of which Meta-World uses dx, dy, dz and the
gripper (its gripper is fixed pointing down: the rotation dims are accepted and ignored).

Only Meta-World's public API is used: `metaworld.MT1(task, seed)` builds the task's 50 MT-style
configurations (goal observable, exactly as MT10 does for each of its tasks), `env.set_task`,
`env.seed`, and the scripted policies in `metaworld.policies` (see `sim_envs.experts`).
`metaworld` is imported when an env is constructed, never at package import.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim_envs.camera import OffscreenCamera
from sim_envs.common import ACTION_DIM, validate_action

MT10_INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
"""One instruction per MT10 task; other tasks get one derived from their name."""
META_WORLD_CONTROL_HZ = 80
"""Meta-World steps 5 physics frames of 2.5 ms: 80 Hz."""
META_WORLD_HORIZON = 500
"""Meta-World's episode length (`max_path_length`), also the registered ids' max_episode_steps."""
WRIST_CAMERA = "gripperPOV"
"""Meta-World's camera on the hand, the `wrist_pixels` of `wrist_camera=True`."""


def instruction_for(task_name: str) -> str:
    """The instruction string of a Meta-World task name such as `"drawer-open-v3"`."""
    if task_name in MT10_INSTRUCTIONS:
        return MT10_INSTRUCTIONS[task_name]
    return task_name.removesuffix("-v3").replace("-", " ")


MEASURES = ("near_object", "grasp_success", "grasp_reward", "in_place_reward", "obj_to_target")
"""Meta-World's step measurements that `info` passes on after every step (their meanings differ
between tasks: e.g. `obj_to_target` is the hand's distance to the goal in reach); an evaluation keeps
the last step's in each episode's `final_info`."""


class MetaWorldEnv(gym.Env[dict, np.ndarray]):
    """One Meta-World v3 task with the ee_vla observation/action interface.

    ## Action space
    `Box(-1, 1, (7,), float32)`: (dx, dy, dz, droll, dpitch, dyaw, gripper). dx, dy, dz move
    Meta-World's hand mocap by up to 1 cm per step; droll/dpitch/dyaw are ignored (Meta-World's
    gripper orientation is fixed); gripper is Meta-World's grab effort, -1 open / +1 closed.
    Out-of-range values are clipped; a wrong shape or NaN raises `ValueError`.

    ## Observation space
    | key            | shape                       | dtype   | content                                   |
    |----------------|-----------------------------|---------|-------------------------------------------|
    | `pixels`       | (image_size, image_size, 3) | uint8   | camera `camera_name` ("corner4", upright) |
    | `agent_pos`    | (4,); (7,) with             | float32 | hand x, y, z (m), normalised jaw opening; |
    |                | `observe_goal`              |         | then the goal's x, y, z (m)               |
    | `wrist_pixels` | (image_size, image_size, 3) | uint8   | camera `gripperPOV` (on the hand), only   |
    |                |                             |         | with `wrist_camera=True`                  |

    ## Rewards
    Meta-World's v2 reward function (0..10), unchanged.

    ## Success and episode end
    | condition                               | effect |
    |-----------------------------------------|--------|
    | Meta-World's `info["success"]` is 1     | `info["is_success"] = True`, terminated |
    | `max_path_length` steps (default 500, Meta-World's horizon) | truncated |

    The registered ids pass `max_path_length=None`: their only step limit is the `TimeLimit` of
    `gymnasium.make` (the registered `max_episode_steps=500`, or the `max_episode_steps` given to
    `make`, e.g. by `ee-vla eval --max-episode-steps`), so a longer limit is honoured instead of
    being cut at Meta-World's own 500. Meta-World's internal limit (which ends an episode at 500
    and raises on the next step) is always switched off; this class counts the steps itself.

    ## Starting state
    `reset(seed=s)` picks one of the task's 50 Meta-World configurations (object and goal
    positions from `metaworld.MT1(task_name, seed=benchmark_seed)`) with the env's seeded RNG, so
    the same seed gives the same configuration and observation.

    Args:
        task_name: a Meta-World v3 task, e.g. "pick-place-v3".
        render_mode: None or "rgb_array".
        image_size: side of the square `pixels` image.
        camera_name: a Meta-World camera ("corner", "corner2", "corner3", "corner4", "topview", ...).
        wrist_camera: also observe Meta-World's camera on the hand (`gripperPOV`: the fingers and
            what lies below and ahead of them) under `wrist_pixels`, as the ee_vla suite's
            `wrist_camera` does.
        observe_goal: append the task's goal position (m) to `agent_pos`, the goal that
            Meta-World's MT10 puts in its state observation (`obs[36:39]`). Off, the goal is seen
            only where the camera shows it (a small marker for reach, push and pick-place).
        benchmark_seed: seed of Meta-World's task (goal) generation.
        max_path_length: steps after which an episode is truncated (Meta-World's 500 by default);
            None = no limit of its own (the registered ids: `gymnasium.make`'s TimeLimit rules).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": META_WORLD_CONTROL_HZ}

    def __init__(
        self,
        task_name: str = "reach-v3",
        render_mode: str | None = None,
        image_size: int = 128,
        camera_name: str = "corner4",
        wrist_camera: bool = False,
        observe_goal: bool = False,
        benchmark_seed: int = 0,
        max_path_length: int | None = META_WORLD_HORIZON,
    ):
        try:
            import metaworld
        except ImportError as e:
            raise ImportError("the Meta-World adapter needs `pip install metaworld==3.1.1`") from e
        if task_name not in metaworld.ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"task_name {task_name!r} is not a Meta-World v3 task; known: {sorted(metaworld.ALL_V3_ENVIRONMENTS)}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if not isinstance(image_size, int) or not 16 <= image_size <= 1024:
            raise ValueError(f"image_size must be an int in [16, 1024], got {image_size!r}")
        if not isinstance(wrist_camera, bool | np.bool_):
            raise ValueError(f"wrist_camera must be a bool, got {wrist_camera!r}")
        if not isinstance(observe_goal, bool | np.bool_):
            raise ValueError(f"observe_goal must be a bool, got {observe_goal!r}")
        if max_path_length is not None and (not isinstance(max_path_length, int) or max_path_length < 1):
            raise ValueError(f"max_path_length must be an int >= 1 or None, got {max_path_length!r}")
        self.max_path_length = max_path_length
        self.task_name = task_name
        self.render_mode = render_mode
        self.image_size = image_size
        self.task_description = instruction_for(task_name)

        benchmark = metaworld.MT1(task_name, seed=benchmark_seed)
        self._tasks = list(benchmark.train_tasks)
        self._env = benchmark.train_classes[task_name]()
        self._env.set_task(self._tasks[0])
        # Meta-World truncates at its own max_path_length and raises on the step after it; the
        # step limit is this class's (or gymnasium's TimeLimit's), so switch Meta-World's off.
        self._env.max_path_length = np.iinfo(np.int64).max
        self._steps = 0
        # Meta-World's corner cameras look at the table upside down; rotate them upright.
        self._camera = OffscreenCamera(self._env.model, camera_name, image_size, flip=camera_name.startswith("corner"))
        self.wrist_camera = bool(wrist_camera)
        self._wrist = OffscreenCamera(self._env.model, WRIST_CAMERA, image_size) if wrist_camera else None
        self.observe_goal = bool(observe_goal)
        # indices of `agent_pos` in Meta-World's state observation: the hand and the jaw, then the goal
        self._proprio = np.r_[0:4, 36:39] if self.observe_goal else np.r_[0:4]
        self._raw_obs = np.zeros(39)
        self.task_index = 0

        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        obs_spaces = {
            "pixels": spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8),
            # Meta-World clips its observation to these bounds (hand box, gripper in [-1, 1], goal box).
            "agent_pos": spaces.Box(
                self._env.sawyer_observation_space.low[self._proprio].astype(np.float32),
                self._env.sawyer_observation_space.high[self._proprio].astype(np.float32),
                dtype=np.float32,
            ),
        }
        if wrist_camera:
            obs_spaces["wrist_pixels"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    def privileged_state(self) -> np.ndarray:
        """Meta-World's 39-dim state observation (what its scripted policies read)."""
        return self._raw_obs.copy()

    def task_points(self) -> np.ndarray:
        """(6,) float32: the task's first object then its goal, from Meta-World's state observation
        (`obs[4:7]`: the puck, handle, peg, button or window handle; `obs[36:39]`: the goal, which
        MT10's tasks observe). Simulator ground truth, never an observation: `sim_envs.collect`
        records it as `privileged/task_points`, the grounding questions of training
        (`--grounding-source demos`), as for the ee_vla suite. For Reach the object is a puck that
        does not matter; its goal does."""
        return np.concatenate([self._raw_obs[4:7], self._raw_obs[36:39]]).astype(np.float32)

    def _get_obs(self) -> dict[str, np.ndarray]:
        obs = {
            "pixels": self._camera.render(self._env.data),
            "agent_pos": self._raw_obs[self._proprio].astype(np.float32),
        }
        if self._wrist is not None:
            obs["wrist_pixels"] = self._wrist.render(self._env.data)
        return obs

    def _info(self, success: bool, measures: dict | None = None) -> dict:
        """Ours, plus Meta-World's own measurements of the step (`MEASURES`, as floats)."""
        extra = {k: float(measures[k]) for k in MEASURES if k in measures} if measures else {}
        return {
            "is_success": bool(success),
            "task_description": self.task_description,
            "task_index": self.task_index,
            **extra,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.task_index = int(self.np_random.integers(len(self._tasks)))
        self._env.set_task(self._tasks[self.task_index])
        self._env.seed(int(self.np_random.integers(2**31 - 1)))
        raw, _ = self._env.reset()
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._steps = 0
        # Meta-World evaluates success only inside step() (its sites are stale right after a
        # reset), and no configuration starts solved: is_success is False on reset.
        return self._get_obs(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = validate_action(action)
        raw, reward, _, _, mw_info = self._env.step(np.array([a[0], a[1], a[2], a[6]]))
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._steps += 1
        success = bool(mw_info["success"])
        truncated = self.max_path_length is not None and self._steps >= self.max_path_length
        return self._get_obs(), float(reward), success, truncated, self._info(success, mw_info)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._camera.render(self._env.data)

    def close(self) -> None:
        self._camera.close()
        if self._wrist is not None:
            self._wrist.close()
        self._env.close()
