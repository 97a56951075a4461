"""The sim bridge's logic: run an `ee_vla/*` Gymnasium env as if it were a robot.

Each control period the bridge applies the newest command (or a zero action when none is fresh),
steps the env, and hands back what a robot would publish: the camera image (and, with
`wrist_camera` or a policy that reads `wrist_pixels`, the gripper camera's), the instruction,
`agent_pos` as joint positions, and whether the episode succeeded. Episodes reset on
termination/truncation. `sim_bridge_node` (rclpy) and `sim_serve` (Cyclone DDS) are the transports.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ee_vla.models.contract import rate_mismatch
from ros_nodes.messages import command_to_actions
from ros_nodes.params import COMMAND_TYPES, DEFAULT_COMMAND_TOPICS, validate_param
from ros_nodes.safety import CauseLog

log = logging.getLogger(__name__)


@dataclass
class SimBridgeParams:
    """Everything the sim bridge (rclpy or DDS) is configured with."""

    env_id: str = "ee_vla/PickCube-v0"
    """Gymnasium id of the env to run (`import sim_envs` registers the ee_vla/* ids)."""
    model_path: str = ""
    """The policy that drives the env (sim.launch.py passes the policy node's): its contract gives
    the camera size when `image_size` is 0, and a control rate other than the env's is warned about."""
    image_size: int = 0
    """Side of the env's square camera image, in pixels (0: the policy's, from `model_path`; without
    one, the env's default)."""
    wrist_camera: bool = False
    """Also render the env's gripper camera (the `wrist_pixels` observation, ee_vla suite envs) and
    publish it on `wrist_image_topic`; on whatever is set when `model_path`'s policy reads
    `wrist_pixels` (its ee_vla.json `cameras`)."""
    seed: int = 0
    """Seed of the first episode (episode i uses seed + i)."""
    control_hz: float = 0.0
    """Env steps per second (0: the env's metadata render_fps, i.e. its control rate)."""
    command_type: str = "array"
    """Command message to apply: twist | array | trajectory (as the policy node's `command_type`)."""
    command_topic: str = ""
    """Where commands arrive (empty: the default topic of `command_type`)."""
    image_topic: str = "camera/image_raw"
    """Where the env's camera image is published."""
    wrist_image_topic: str = "wrist_camera/image_raw"
    """Where the gripper camera's image is published (with `wrist_camera`; header frame
    `wrist_camera`)."""
    instruction_topic: str = "instruction"
    """Where the task description is published (latched, and again every second and on reset)."""
    joint_state_topic: str = "joint_states"
    """Where `agent_pos` is published as JointState positions (names agent_pos_0..)."""
    success_topic: str = "success"
    """std_msgs/Bool: whether the current episode has succeeded."""
    command_timeout_s: float = 0.5
    """A command older than this is not applied any more (the env gets a zero action)."""
    linear_scale: float = 0.1
    """twist: the policy node's linear_scale, to turn m/s back into action units."""
    angular_scale: float = 0.5
    """twist: the policy node's angular_scale, to turn rad/s back into action units."""
    gripper_dim: int = 6
    """Action dim a twist cannot carry; it keeps its last value from an array/trajectory command."""
    max_episodes: int = 0
    """Stop after this many episodes (0: run forever)."""
    wait_for_command: bool = True
    """Hold the first frame (publishing it again each period) until the first valid command arrives, so
    episodes start when the policy is up rather than while it loads."""
    frame_id: str = "camera"
    """Header frame of the published image."""

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or "/" not in self.env_id and "-v" not in self.env_id:
            raise ValueError(f"SimBridgeParams.env_id: {self.env_id!r} is not a Gymnasium env id")
        if self.command_type not in COMMAND_TYPES:
            raise ValueError(
                f"SimBridgeParams.command_type: must be one of {'|'.join(COMMAND_TYPES)}, got {self.command_type!r}"
            )
        if not (self.control_hz >= 0 and np.isfinite(self.control_hz)):
            raise ValueError(f"SimBridgeParams.control_hz: must be >= 0 (0: the env's rate), got {self.control_hz}")
        for name in ("image_topic", "wrist_image_topic", "instruction_topic", "joint_state_topic", "success_topic"):
            reason = validate_param("image_topic", getattr(self, name))
            if reason:
                raise ValueError(f"SimBridgeParams.{name}: {reason}")
        if self.command_topic:
            reason = validate_param("command_topic", self.command_topic)
            if reason:
                raise ValueError(f"SimBridgeParams.command_topic: {reason}")
        if not self.command_timeout_s > 0:
            raise ValueError(f"SimBridgeParams.command_timeout_s: must be > 0, got {self.command_timeout_s}")
        if self.max_episodes < 0:
            raise ValueError(f"SimBridgeParams.max_episodes: must be >= 0, got {self.max_episodes}")
        if not isinstance(self.image_size, int) or not (self.image_size == 0 or 16 <= self.image_size <= 1024):
            raise ValueError(f"SimBridgeParams.image_size: must be 0 or an int in [16, 1024], got {self.image_size!r}")

    def contract(self):
        """The contract of `model_path` (None without one); ValueError naming it when unreadable."""
        if not self.model_path:
            return None
        from ee_vla.models import ModelLoadError, read_contract

        try:
            return read_contract(self.model_path)
        except ModelLoadError as e:
            raise ValueError(f"SimBridgeParams.model_path: {e}") from None

    @property
    def resolved_command_topic(self) -> str:
        return self.command_topic or DEFAULT_COMMAND_TOPICS[self.command_type]


WRIST_FRAME_ID = "wrist_camera"
"""Header frame of the gripper camera's images."""


def sim_param_names() -> list[str]:
    return [f.name for f in fields(SimBridgeParams)]


def make_env(env_id: str, image_size: int = 0, cameras: tuple[str, ...] = ("pixels",)) -> Any:
    """`gymnasium.make(env_id, render_mode="rgb_array")`, importing `sim_envs` first to register
    ee_vla/*; `image_size` > 0 is passed on when the env takes that argument, and the env renders
    every camera of `cameras` (`sim_envs.camera_kwargs`: ValueError naming one it cannot render)."""
    import gymnasium as gym

    import sim_envs

    kwargs: dict[str, Any] = {"render_mode": "rgb_array", **sim_envs.camera_kwargs(env_id, cameras)}
    if image_size and sim_envs.takes_argument(env_id, "image_size"):
        kwargs["image_size"] = image_size
    elif image_size:
        log.info("%s takes no image_size: it renders at its own size and the policy resizes", env_id)
    return gym.make(env_id, **kwargs)


@dataclass
class SimFrame:
    """What the bridge publishes after a step (or a reset)."""

    pixels: np.ndarray
    agent_pos: np.ndarray | None
    instruction: str
    success: bool
    episode: int
    step: int
    reset: bool
    """True when this frame starts a new episode."""
    wrist_pixels: np.ndarray | None = None
    """The gripper camera's image (with `SimBridgeParams.wrist_camera`, else None)."""


class SimBridge:
    """Steps an env with the newest command. Not thread-safe by itself: transports call `on_command_msg`
    and `step` from one thread (the rclpy node uses a mutually exclusive callback group)."""

    def __init__(
        self,
        params: SimBridgeParams,
        env: Any | None = None,
        clock: Callable[[], float] = time.perf_counter,
        logger: logging.Logger | None = None,
    ):
        self.params = params
        self.clock = clock
        self.log = logger or log
        contract = params.contract()
        size = params.image_size or (contract.image_size if contract is not None else 0)
        cameras = contract.cameras if contract is not None else ("pixels",)
        self.wrist_camera = params.wrist_camera or "wrist_pixels" in cameras
        """Whether the gripper camera is rendered and published (`wrist_camera`, or a policy that reads it)."""
        if self.wrist_camera and not params.wrist_camera:
            self.log.info("wrist_camera: on, the policy reads wrist_pixels (published on %r)", params.wrist_image_topic)
        if self.wrist_camera and "wrist_pixels" not in cameras:
            cameras = (*cameras, "wrist_pixels")
        self.env = env if env is not None else make_env(params.env_id, size, cameras)
        space = getattr(self.env, "observation_space", None)
        if self.wrist_camera and hasattr(space, "spaces") and "wrist_pixels" not in space.spaces:
            raise ValueError(f"SimBridgeParams.wrist_camera: {params.env_id} observes no wrist_pixels")
        self.causes = CauseLog(self.log, clock=clock)
        space = self.env.action_space
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.action_dim = int(self.low.size)
        fps = (getattr(self.env, "metadata", None) or {}).get("render_fps") or 10
        self.control_hz = float(params.control_hz or fps)
        warning = rate_mismatch(contract, self.control_hz, f"the sim bridge ({params.env_id})") if contract else None
        if warning:
            self.log.warning(warning)
        self._plan: list[tuple[float, np.ndarray]] = []
        self._gripper = 0.0
        self.episode = -1
        self.step_index = 0
        self.successes = 0
        self.episodes_done = 0
        self.commands_applied = 0
        self.commands_received = 0
        self.last_action = np.zeros(self.action_dim)
        self._success = False
        self._commands_valid = 0
        self._last_frame: SimFrame | None = None

    @property
    def instruction(self) -> str:
        return str(getattr(self.env.unwrapped, "task_description", "") or "")

    @property
    def done(self) -> bool:
        return self.params.max_episodes > 0 and self.episodes_done >= self.params.max_episodes

    def reset(self) -> SimFrame:
        self.episode += 1
        obs, info = self.env.reset(seed=self.params.seed + self.episode)
        self.step_index = 0
        self._plan = []
        self._success = bool(info.get("is_success", False))
        self.log.info("episode %d: %s", self.episode, self.instruction)
        return self._frame(obs, reset=True)

    def _frame(self, obs: dict[str, Any], reset: bool) -> SimFrame:
        pos = obs.get("agent_pos")
        return SimFrame(
            wrist_pixels=np.asarray(obs["wrist_pixels"], dtype=np.uint8) if self.wrist_camera else None,
            pixels=np.asarray(obs["pixels"], dtype=np.uint8),
            agent_pos=None if pos is None else np.asarray(pos, dtype=np.float64),
            instruction=self.instruction,
            success=self._success,
            episode=self.episode,
            step=self.step_index,
            reset=reset,
        )

    def on_command_msg(self, msg: Any, now: float | None = None) -> bool:
        """A command message of `command_type`; invalid ones are logged once per cause and dropped."""
        now = self.clock() if now is None else now
        self.commands_received += 1
        try:
            plan = command_to_actions(
                self.params.command_type, msg, self.params.linear_scale, self.params.angular_scale
            )
        except (AttributeError, TypeError, ValueError) as e:
            self.causes.log("command:malformed", f"dropping malformed {self.params.command_type} command: {e}")
            return False
        if not plan:
            self.causes.log("command:empty", "dropping command without actions/points")
            return False
        want = 6 if self.params.command_type == "twist" else self.action_dim
        out = []
        for dt, a in plan:
            if a.shape != (want,) or not np.isfinite(a).all():
                self.causes.log(
                    f"command:shape:{a.shape}",
                    f"dropping command with {a.size} values (NaN-free {want} expected for this env)",
                )
                return False
            if self.params.command_type == "twist":
                full = np.zeros(self.action_dim)
                full[:6] = a
                if self.params.gripper_dim < self.action_dim:
                    full[self.params.gripper_dim] = self._gripper
                a = full
            elif self.params.gripper_dim < self.action_dim:
                self._gripper = float(a[self.params.gripper_dim])
            out.append((now + dt, a))
        self._plan = out
        self._commands_valid += 1
        return True

    def current_action(self, now: float) -> tuple[np.ndarray, bool]:
        """(action to apply now, whether it came from a fresh command)."""
        timeout = self.params.command_timeout_s
        due = [(t, a) for t, a in self._plan if t <= now + 1e-9]
        t, a = due[-1] if due else (self._plan[0] if self._plan else (None, None))
        if a is None or now - t > timeout:
            zero = np.zeros(self.action_dim)
            if self.params.gripper_dim < self.action_dim:
                zero[self.params.gripper_dim] = self._gripper
            return zero, False
        return np.clip(a, self.low, self.high), True

    def step(self, now: float | None = None) -> SimFrame:
        """Apply the current action for one env step; resets (returning the new episode's first frame) when done."""
        now = self.clock() if now is None else now
        if self.episode < 0:
            self._last_frame = self.reset()
            return self._last_frame
        if self.params.wait_for_command and self._commands_valid == 0 and self._last_frame is not None:
            return dataclasses.replace(self._last_frame, reset=False)  # the policy is not up yet
        action, fresh = self.current_action(now)
        self.commands_applied += int(fresh)
        self.last_action = action
        obs, _reward, terminated, truncated, info = self.env.step(action.astype(self.low.dtype))
        self.step_index += 1
        self._success = self._success or bool(info.get("is_success", False))
        if terminated or truncated:
            self.episodes_done += 1
            self.successes += int(self._success)
            self.log.info(
                "episode %d ended after %d steps: %s (%d/%d successful)",
                self.episode,
                self.step_index,
                "success" if self._success else "failure",
                self.successes,
                self.episodes_done,
            )
            if self.done:
                return self._frame(obs, reset=False)
            return self.reset()
        self._last_frame = self._frame(obs, reset=False)
        return self._last_frame

    def close(self) -> None:
        self.env.close()
