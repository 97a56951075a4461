"""The shared tabletop scene and base env of the ee_vla suite.

A flat table, coloured objects (cubes and cylinders), optionally plates and a goal marker, and a
floating parallel-jaw gripper driven through a MuJoCo mocap weld. The gripper is a rigid body whose
pose follows a mocap target: the 7-dim action moves the target by end-effector deltas; two coupled
position-controlled fingers grasp by friction. Task envs (one per file) subclass `TabletopEnv` and
implement `_sample_task` (layout + instruction) and `_evaluate` (reward + success).

Why a floating gripper and not an articulated arm: it has no IK singularities, joint limits or
self-collisions to fail on, so scripted experts reach >95% success and a data set never contains an
arm stuck in a bad configuration. The VLA-facing interface (end-effector delta actions) is the same.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim_envs.camera import OffscreenCamera
from sim_envs.common import ACTION_DIM, validate_action
from sim_envs.gl import mujoco  # MuJoCo, or a GLBackendError naming MUJOCO_GL when its backend cannot load
from sim_envs.instructions import INSTRUCTION_SETS, choose_template
from sim_envs.scene_xml import FINGER_TRAVEL, OBJECT_HALF, PHYSICS_DT, build_scene_xml
from sim_envs.scene_xml import GOAL_RADIUS as GOAL_RADIUS  # sizes of the scene, also importable from here
from sim_envs.scene_xml import PLATE_HALF_HEIGHT as PLATE_HALF_HEIGHT
from sim_envs.scene_xml import PLATE_RADIUS as PLATE_RADIUS

CONTROL_HZ = 10
"""Control rate: one env step = 0.1 s of simulation."""
N_SUBSTEPS = round(1.0 / (CONTROL_HZ * PHYSICS_DT))
N_RAMP = 10
"""The commanded pose is interpolated in this many increments over one control step."""
MAX_TRANSLATION = 0.04
"""Metres the gripper target moves per step at |action| = 1 (0.4 m/s)."""
MAX_ROTATION = 0.25
"""Radians the gripper target rotates per step at |action| = 1."""
ROLL_PITCH_LIMIT = 0.5
"""Commanded roll and pitch are clamped to +/- this many radians."""
YAW_LIMIT = 0.75 * math.pi
"""Commanded yaw is clamped to +/- 135 degrees: every grasp direction (a parallel-jaw gripper is
symmetric under a half turn) is reachable from any yaw without crossing the limit, and the measured
yaw never wraps around at +/- pi."""
WORKSPACE_LOW = np.array([-0.25, -0.22, 0.014])
WORKSPACE_HIGH = np.array([0.25, 0.22, 0.30])
"""Bounds of the commanded tool-centre point (TCP); z is height above the table top."""
LOST_Z = -0.05
"""An object whose centre is this far below the table top has fallen off the table (or been flung
off it): an episode whose target does so ends, failed (`info["target_lost"]`)."""
MAX_LAG = 0.06
"""The commanded target never leads the real TCP by more than this (keeps the weld force bounded
when the gripper pushes against an object)."""
ON_TOP_NORMAL_Z = 0.5
"""A finger or the palm rests on top of an object or plate when their contact normal's vertical
component exceeds this (about 60 degrees from the horizontal or steeper). While it does, the gripper
cannot be driven lower (`TabletopEnv.simulate`)."""
MOVED = 0.01
"""An object whose centre has moved this far (m, in the table plane) since the episode's start has
been moved (`info["outcome"]`)."""
DISTURBED = 0.02
"""Another object than the target that has moved this far (m, in the table plane) was disturbed:
unless the episode succeeded or lost its target, its outcome is "moved another object, not the
target" (the target has not moved by `MOVED`) or "moved another object too"."""

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.12, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "orange": (1.0, 0.5, 0.05),
}
"""Object colours, named as they appear in instructions."""
SHAPES = ("cube", "cylinder")
PLATE_COLORS: dict[str, tuple[float, float, float]] = {
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "pink": (1.0, 0.55, 0.75),
    "cyan": (0.2, 0.85, 0.9),
}
HIDDEN_GROUP = 5


def _gripper_option(options: dict | None) -> np.ndarray | None:
    """The validated ``gripper_pos`` reset option (None when absent)."""
    if not options:
        return None
    unknown = set(options) - {"gripper_pos"}
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; known: ['gripper_pos']")
    if options.get("gripper_pos") is None:
        return None
    pos = np.asarray(options["gripper_pos"], dtype=np.float64)
    if pos.shape != (3,) or not np.isfinite(pos).all():
        raise ValueError(f"reset option gripper_pos must be 3 finite numbers (x, y, z), got {options['gripper_pos']!r}")
    if np.any(pos < WORKSPACE_LOW) or np.any(pos > WORKSPACE_HIGH):
        raise ValueError(
            f"reset option gripper_pos {pos.tolist()} is outside the workspace "
            f"{WORKSPACE_LOW.tolist()}..{WORKSPACE_HIGH.tolist()}"
        )
    return pos


@dataclass
class SceneObject:
    """One graspable object of the current episode (what the instruction can name)."""

    color: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def euler_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """MuJoCo (w, x, y, z) quaternion of the extrinsic x-y-z rotation R = Rz(yaw) Ry(pitch) Rx(roll)."""
    q = np.zeros(4)
    mujoco.mju_euler2Quat(q, np.array([roll, pitch, yaw]), "XYZ")
    return q


def quat_to_euler(quat: np.ndarray) -> np.ndarray:
    """Inverse of `euler_to_quat`: (roll, pitch, yaw) of a (w, x, y, z) quaternion."""
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(quat, dtype=np.float64))
    r = m.reshape(3, 3)
    pitch = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = math.atan2(r[2, 1], r[2, 2])
    yaw = math.atan2(r[1, 0], r[0, 0])
    return np.array([roll, pitch, yaw])


def wrap_half_turn(angle: float) -> float:
    """Angle modulo pi, in [-pi/2, pi/2): the gripper's yaw symmetry."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


class TabletopEnv(gym.Env[dict, np.ndarray]):
    """Base class of the ee_vla tabletop tasks (see the task classes for their tables).

    Subclasses set `n_objects`, `n_plates`, `goal_marker` and implement `_sample_task(rng)` (which
    names the target through `_describe`), `_evaluate() -> (reward, success)`, and for
    `info["outcome"]` (`outcome`) `_goal_distance()` and `_shortfall(target_moved)`; `_layout_info()`
    adds a task's layout descriptors to `info`.

    Args:
        render_mode: None or "rgb_array" (`render()` returns the main camera at `image_size`).
        image_size: side of the square `pixels` image (and of `wrist_pixels`).
        wrist_camera: also observe a gripper-mounted camera under `wrist_pixels`.
        camera: the main camera, "front" (default) or "top".
        instructions: "train" (the task's templates, default), "held_out" or "held_out_2"
            (paraphrases that no training data contains, for measuring how well a policy follows
            them), "augmented" (the templates and more paraphrases, none held out, for training
            data) or "augmented_negated" (those and phrasings with negations;
            `sim_envs.instructions`).
        target: "sampled" (default) or "distractor": the instruction, the success test and
            `info["target_object"]` name an object of the scene other than the one sampled as the
            target. Scene, gripper start and phrasing are those of "sampled" for the same seed, so
            a policy that succeeds as often goes for the object the instruction names, not for
            one it expects from the scene. Not for Push (`retargetable` False), whose layout keeps
            the push path clear for the sampled object only.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    n_objects: int = 3
    n_plates: int = 0
    goal_marker: bool = False
    retargetable: bool = True
    """Whether `target="distractor"` is a fair task: any object could have been the target."""

    def __init__(
        self,
        render_mode: str | None = None,
        image_size: int = 128,
        wrist_camera: bool = False,
        camera: str = "front",
        instructions: str = "train",
        target: str = "sampled",
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if not isinstance(image_size, int) or not 16 <= image_size <= 1024:
            raise ValueError(f"image_size must be an int in [16, 1024], got {image_size!r}")
        if not isinstance(wrist_camera, bool | np.bool_):
            raise ValueError(f"wrist_camera must be a bool, got {wrist_camera!r}")
        if camera not in ("front", "top"):
            raise ValueError(f"camera must be 'front' or 'top', got {camera!r}")
        if instructions not in INSTRUCTION_SETS:
            raise ValueError(f"instructions must be one of {', '.join(INSTRUCTION_SETS)}, got {instructions!r}")
        if target not in ("sampled", "distractor"):
            raise ValueError(f"target must be 'sampled' or 'distractor', got {target!r}")
        if target == "distractor" and not self.retargetable:
            raise ValueError(
                f"target='distractor' is not available for {type(self).__name__}: its layout is sampled "
                "for the target it draws (another object may block the way or start too near the goal)"
            )
        self.instructions = instructions
        self.target = target
        self.render_mode = render_mode
        self.image_size = image_size
        self.wrist_camera = wrist_camera

        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.n_objects, self.n_plates, self.goal_marker))
        self.data = mujoco.MjData(self.model)
        self._camera = OffscreenCamera(self.model, camera, image_size)
        self._wrist = OffscreenCamera(self.model, "wrist", image_size) if wrist_camera else None

        m = self.model
        self._gripper_body = m.body("gripper").id
        self._mocap_id = m.body_mocapid[m.body("mocap").id]
        self._tcp_site = m.site("tcp").id
        self._gripper_qpos = m.jnt_qposadr[m.joint("gripper_joint").id]
        self._gripper_qvel = m.jnt_dofadr[m.joint("gripper_joint").id]
        self._finger_qpos = [m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in ("left", "right")]
        self._finger_geoms = {m.geom(f"finger_{s}").id for s in ("left", "right")}
        self._pressing_geoms = np.zeros(m.ngeom, dtype=bool)  # what can press down on ...
        self._pressing_geoms[[*self._finger_geoms, m.geom("palm").id]] = True
        self._pressed_geoms = np.zeros(m.ngeom, dtype=bool)  # ... what (objects and plates)
        self._obj_body = [m.body(f"obj{i}").id for i in range(self.n_objects)]
        self._obj_qpos = [m.jnt_qposadr[m.joint(f"obj{i}_joint").id] for i in range(self.n_objects)]
        self._obj_qvel = [m.jnt_dofadr[m.joint(f"obj{i}_joint").id] for i in range(self.n_objects)]
        self._obj_geoms = [{s: m.geom(f"obj{i}_{s}").id for s in SHAPES} for i in range(self.n_objects)]
        self._plate_body = [m.body(f"plate{i}").id for i in range(self.n_plates)]
        self._pressed_geoms[[g for geoms in self._obj_geoms for g in geoms.values()]] = True
        self._pressed_geoms[[m.geom(f"plate{i}").id for i in range(self.n_plates)]] = True
        self._goal_body = m.body("goal").id if self.goal_marker else -1

        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        obs_spaces = {
            "pixels": spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8),
            # TCP x, y, z (m), roll, pitch, yaw (rad), jaw opening (m); generous bounds.
            "agent_pos": spaces.Box(
                np.array([-1, -1, -1, -np.pi, -np.pi, -np.pi, -0.01], dtype=np.float32),
                np.array([1, 1, 1, np.pi, np.pi, np.pi, 0.1], dtype=np.float32),
                dtype=np.float32,
            ),
        }
        if wrist_camera:
            obs_spaces["wrist_pixels"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

        self.objects: list[SceneObject] = []
        self.target_index = 0
        self.task_description = ""
        self._template, self._names = "{obj}", {}
        self._cmd_pos = np.zeros(3)
        self._cmd_euler = np.zeros(3)
        self._obj_rest_z = np.zeros(self.n_objects)
        self._obj_start_xy = np.zeros((self.n_objects, 2))

    # ---- task hooks -------------------------------------------------------------------------
    def _sample_task(self, rng: np.random.Generator) -> None:
        """Place objects/plates/goal and set the instruction with `_describe` (subclass)."""
        raise NotImplementedError

    def _draw_template(self, rng: np.random.Generator, train: tuple[str, ...], task: str) -> str:
        """One instruction template: drawn from the task's training `train` templates, or the same
        draw's held-out paraphrase (`instructions="held_out"` or `"held_out_2"`), or one of the
        templates and the training paraphrases (`instructions="augmented"` or `"augmented_negated"`;
        `sim_envs.instructions`)."""
        return choose_template(train, task, int(rng.integers(len(train))), self.instructions, rng)

    def _describe(self, template: str, **names: str) -> None:
        """Set `task_description` from `template`, its ``{obj}`` the target's name and its other
        fields `names`; both are kept so that `questions` can name the other objects alike."""
        self._template, self._names = template, names
        self.task_description = template.format(obj=self.objects[self.target_index].name, **names)

    def _goal_options(self) -> list[tuple[dict, np.ndarray | None]]:
        """The goals an instruction of this scene can name, the episode's own first: (template
        fields, goal position; None = the named object itself, as in Reach and PickCube)."""
        return [(self._names, None)]

    def _evaluate(self) -> tuple[float, bool]:
        """(reward, success) of the current state (subclass)."""
        raise NotImplementedError

    def _goal_distance(self) -> float:
        """How far (m) the state is from the task's success distance (subclass; `info["goal_distance"]`)."""
        raise NotImplementedError

    def _shortfall(self, target_moved: float) -> str:
        """What an unfinished episode's state lacks, when no object was lost or disturbed (subclass;
        `info["outcome"]`)."""
        raise NotImplementedError

    def _layout_info(self) -> dict[str, float]:
        """Numbers that describe the episode's layout, the same at every step (subclass; added to
        `info`, so that an evaluation's results can be grouped by them)."""
        return {}

    # ---- scene helpers used by tasks -----------------------------------------------------------
    def _sample_objects(self, rng: np.random.Generator) -> None:
        """Choose the objects' colours/shapes: the target plus distractors that share its colour or
        its shape half of the time, so that both words of the instruction are needed."""
        colors = list(COLORS)
        target = SceneObject(str(rng.choice(colors)), str(rng.choice(SHAPES)))
        objs = [target]
        while len(objs) < self.n_objects:
            mode = rng.integers(3)
            color = target.color if mode == 0 else str(rng.choice(colors))
            shape = target.shape if mode == 1 else str(rng.choice(SHAPES))
            cand = SceneObject(color, shape)
            if all(cand.name != o.name for o in objs):
                objs.append(cand)
        order = rng.permutation(self.n_objects)
        self.objects = [objs[i] for i in order]
        self.target_index = int(np.nonzero(order == 0)[0][0])
        for i, obj in enumerate(self.objects):
            for shape, gid in self._obj_geoms[i].items():
                shown = shape == obj.shape
                self.model.geom_rgba[gid] = (*COLORS[obj.color], 1.0) if shown else (0, 0, 0, 0)
                self.model.geom_contype[gid] = 1 if shown else 0
                self.model.geom_conaffinity[gid] = 1 if shown else 0
                self.model.geom_group[gid] = 0 if shown else HIDDEN_GROUP

    @staticmethod
    def _sample_positions(
        rng: np.random.Generator, n: int, min_dist: float, low: np.ndarray, high: np.ndarray, fixed: list | None = None
    ) -> list[np.ndarray]:
        """`n` xy points in the box [low, high], pairwise (and from `fixed`) at least `min_dist` apart."""
        placed = [np.asarray(p) for p in (fixed or [])]
        out: list[np.ndarray] = []
        for _ in range(10_000):
            p = rng.uniform(low, high)
            if all(np.linalg.norm(p - q) >= min_dist for q in placed):
                placed.append(p)
                out.append(p)
                if len(out) == n:
                    return out
        raise RuntimeError("could not place objects without overlap; the layout constraints are too tight")

    def _set_object_pose(self, i: int, xy: np.ndarray, yaw: float) -> None:
        adr = self._obj_qpos[i]
        self.data.qpos[adr : adr + 3] = (xy[0], xy[1], OBJECT_HALF)
        self.data.qpos[adr + 3 : adr + 7] = euler_to_quat(0.0, 0.0, yaw)
        self.data.qvel[self._obj_qvel[i] : self._obj_qvel[i] + 6] = 0.0

    def _set_body_xy(self, body: int, xy: np.ndarray) -> None:
        self.model.body_pos[body][:2] = xy

    # ---- state -------------------------------------------------------------------------------
    @property
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp_site].copy()

    @property
    def gripper_euler(self) -> np.ndarray:
        return quat_to_euler(self.data.xquat[self._gripper_body])

    @property
    def gripper_opening(self) -> float:
        """Distance between the finger pads in metres."""
        return float(0.002 + self.data.qpos[self._finger_qpos[0]] + self.data.qpos[self._finger_qpos[1]])

    def object_pos(self, i: int) -> np.ndarray:
        return self.data.xpos[self._obj_body[i]].copy()

    def object_yaw(self, i: int) -> float:
        return float(quat_to_euler(self.data.xquat[self._obj_body[i]])[2])

    @property
    def target_pos(self) -> np.ndarray:
        return self.object_pos(self.target_index)

    @property
    def goal_pos(self) -> np.ndarray:
        """Where the task wants the target to end up: the target itself for tasks without a second
        place (Reach, PickCube); the goal marker or plate where there is one (Push, Place)."""
        return self.target_pos

    def task_points(self) -> np.ndarray:
        """(6,) float32: the target's position then `goal_pos` (simulator ground truth, never an
        observation). Recorded by `sim_envs.collect` as `privileged/task_points` for grounding
        co-training (docs/training.md)."""
        return np.concatenate([self.target_pos, self.goal_pos]).astype(np.float32)

    def questions(self) -> list[tuple[str, np.ndarray]]:
        """Every grounding question this scene answers: (instruction, task points) with each object
        in turn as the target, and each goal of `_goal_options` (Place: each plate). The first is
        the episode's own (`task_description`, `task_points()`). Asking them all about one
        rendered image shows a network the same pixels with different answers, told apart by
        the instruction alone (grounding pre-training, docs/training.md)."""
        objects = [self.target_index] + [i for i in range(self.n_objects) if i != self.target_index]
        out = []
        for names, goal in self._goal_options():
            for i in objects:
                instruction = self._template.format(obj=self.objects[i].name, **names)
                where = self.object_pos(i)
                out.append((instruction, np.concatenate([where, where if goal is None else goal]).astype(np.float32)))
        return out

    def object_touches_fingers(self, i: int) -> tuple[bool, bool]:
        """Whether the left / right finger is in contact with object `i`."""
        gid = self._obj_geoms[i][self.objects[i].shape]
        left = right = False
        left_id, right_id = sorted(self._finger_geoms)
        for c in self.data.contact[: self.data.ncon]:
            pair = {int(c.geom1), int(c.geom2)}
            if gid in pair:
                left |= left_id in pair
                right |= right_id in pair
        return left, right

    def is_grasped(self, i: int) -> bool:
        left, right = self.object_touches_fingers(i)
        return left and right

    def privileged_state(self) -> dict:
        """Simulator ground truth for scripted experts (never part of the observation)."""
        return {
            "tcp_pos": self.tcp_pos,
            "gripper_euler": self.gripper_euler,
            "commanded_euler": self._cmd_euler.copy(),
            "gripper_opening": self.gripper_opening,
            "gripper_closing": bool(self.data.ctrl[0] < FINGER_TRAVEL / 2),  # the last gripper command
            "target_index": self.target_index,
            "target_pos": self.target_pos,
            "target_yaw": self.object_yaw(self.target_index),
            "target_shape": self.objects[self.target_index].shape,
            "target_rest_z": float(self._obj_rest_z[self.target_index]),
            "target_grasped": self.is_grasped(self.target_index),
            "object_pos": [self.object_pos(i) for i in range(self.n_objects)],
        }

    # ---- gymnasium API -----------------------------------------------------------------------
    def _get_obs(self) -> dict[str, np.ndarray]:
        agent_pos = np.concatenate([self.tcp_pos, self.gripper_euler, [self.gripper_opening]]).astype(np.float32)
        obs = {"pixels": self._camera.render(self.data), "agent_pos": agent_pos}
        if self._wrist is not None:
            obs["wrist_pixels"] = self._wrist.render(self.data)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Gymnasium reset. `options`: ``{"gripper_pos": (x, y, z)}`` starts the gripper at that TCP
        position (inside WORKSPACE_LOW..HIGH) instead of the usual start above the table's middle;
        the scene itself is the same as without it for the same seed."""
        super().reset(seed=seed)
        gripper_pos = _gripper_option(options)
        mujoco.mj_resetData(self.model, self.data)
        self._sample_objects(self.np_random)
        self._sample_task(self.np_random)
        # Gripper: open, pointing down, above the middle of the table with a little noise.
        start = np.array([0.0, -0.08, 0.18]) + self.np_random.uniform(-0.03, 0.03, size=3)
        if gripper_pos is not None:
            start = gripper_pos
        self._cmd_pos = start
        self._cmd_euler = np.zeros(3)
        self.data.mocap_pos[self._mocap_id] = start
        self.data.mocap_quat[self._mocap_id] = euler_to_quat(0, 0, 0)
        self.data.qpos[self._gripper_qpos : self._gripper_qpos + 3] = start
        self.data.qpos[self._gripper_qpos + 3 : self._gripper_qpos + 7] = (1, 0, 0, 0)
        for adr in self._finger_qpos:
            self.data.qpos[adr] = FINGER_TRAVEL
        self.data.ctrl[0] = FINGER_TRAVEL
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=10)
        if self.target == "distractor":  # drawn last, so the scene is the one "sampled" gets
            others = [i for i in range(self.n_objects) if i != self.target_index]
            self.target_index = others[int(self.np_random.integers(len(others)))]
            self._describe(self._template, **self._names)
        start = np.array([self.object_pos(i) for i in range(self.n_objects)])
        self._obj_rest_z, self._obj_start_xy = start[:, 2], start[:, :2]
        _, success = self._evaluate()
        return self._get_obs(), self._info(success, lost=False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.simulate(action)
        reward, success = self._evaluate()
        lost = bool(self.target_pos[2] < LOST_Z)  # unrecoverable: no scene is left to act in
        info = self._info(success, lost)
        return self._get_obs(), float(reward), bool(success) or lost, False, info

    def simulate(self, action: np.ndarray) -> None:
        """The physics of one step (the action's motion and gripper command), without the
        observation, reward or rendering: `step` calls it, and planners call it in `scratch()`."""
        a = validate_action(action)
        tcp = self.tcp_pos
        cmd = np.clip(self._cmd_pos + a[:3] * MAX_TRANSLATION, WORKSPACE_LOW, WORKSPACE_HIGH)
        lead = cmd - tcp
        if np.linalg.norm(lead) > MAX_LAG:
            cmd = tcp + lead * (MAX_LAG / np.linalg.norm(lead))
        lim = np.array([ROLL_PITCH_LIMIT, ROLL_PITCH_LIMIT, YAW_LIMIT])
        euler = np.clip(self._cmd_euler + a[3:6] * MAX_ROTATION, -lim, lim)
        self.data.ctrl[0] = FINGER_TRAVEL * (1.0 - a[6]) / 2.0
        # Ramp the mocap target (the gripper frame; the TCP site is its origin) over the control
        # period: a constant-velocity motion instead of a step, which would make the weld fling the
        # gripper (and whatever it hits).
        # A gripper resting on top of an object or plate is not driven lower: the weld is far stiffer
        # than the soft contacts of a 50 g object, so it would crush the object into the table and
        # fling it off at several m/s when it slips out. Once a finger or the palm touches a top,
        # the commanded height is held at the TCP's (the highest such height) for the rest of the
        # step, as a force-limited arm stops on contact; sideways motion is unaffected.
        pos0, euler0 = self._cmd_pos, self._cmd_euler
        floor = -np.inf
        for k in range(1, N_RAMP + 1):
            f = k / N_RAMP
            target = pos0 + f * (cmd - pos0)
            if self._resting_on_top():
                floor = max(floor, self.tcp_pos[2])
            target[2] = max(target[2], floor)
            self.data.mocap_pos[self._mocap_id] = target
            self.data.mocap_quat[self._mocap_id] = euler_to_quat(*(euler0 + f * (euler - euler0)))
            mujoco.mj_step(self.model, self.data, nstep=N_SUBSTEPS // N_RAMP)
        cmd[2] = max(cmd[2], floor)
        self._cmd_pos, self._cmd_euler = cmd, euler
        if not np.isfinite(self.data.qpos).all():
            raise RuntimeError("the simulation diverged (non-finite state)")

    def _resting_on_top(self) -> bool:
        """Whether a finger or the palm touches the top of an object or plate (`ON_TOP_NORMAL_Z`)."""
        n = self.data.ncon
        if n == 0:
            return False
        c = self.data.contact
        g1, g2, nz = c.geom1[:n], c.geom2[:n], c.frame[:n, 2]  # the normal points from geom1 to geom2
        press, pressed = self._pressing_geoms, self._pressed_geoms
        down = (press[g1] & pressed[g2] & (nz < -ON_TOP_NORMAL_Z)) | (press[g2] & pressed[g1] & (nz > ON_TOP_NORMAL_Z))
        return bool(down.any())

    @contextlib.contextmanager
    def scratch(self) -> Iterator[TabletopEnv]:
        """Simulate on a copy of the current state: inside the block `simulate` (and
        `privileged_state`) act on the copy; on exit the env is exactly as before, so what follows
        is as if the block never ran (the expert's k-step plans of `ExpertLabels`)."""
        data, commanded = self.data, (self._cmd_pos, self._cmd_euler)
        self.data = copy.copy(data)
        try:
            yield self
        finally:
            self.data = data
            self._cmd_pos, self._cmd_euler = commanded

    def moved(self, i: int) -> float:
        """How far (m, in the table plane) object `i` is from where it stood at the episode's start."""
        return float(np.linalg.norm(self.object_pos(i)[:2] - self._obj_start_xy[i]))

    def outcome(self, success: bool, lost: bool) -> tuple[str, dict[str, float]]:
        """What the current state says of the episode (`info["outcome"]`), and the measurements behind
        it: ``goal_distance``, ``target_moved`` and ``other_moved`` (m; the largest move of another
        object). In order: "success", "target fell off the table", "moved another object, not the
        target" or "moved another object too" (another by `DISTURBED` or more, the target by less
        than `MOVED` or not), else the task's own shortfall (e.g. "target not moved")."""
        others = [self.moved(i) for i in range(self.n_objects) if i != self.target_index]
        metrics = {
            "goal_distance": self._goal_distance(),
            "target_moved": self.moved(self.target_index),
            "other_moved": max(others, default=0.0),
        }
        if success:
            return "success", metrics
        if lost:
            return "target fell off the table", metrics
        if metrics["other_moved"] >= DISTURBED:
            alone = metrics["target_moved"] < MOVED
            return ("moved another object, not the target" if alone else "moved another object too"), metrics
        return self._shortfall(metrics["target_moved"]), metrics

    def _info(self, success: bool, lost: bool) -> dict:
        outcome, metrics = self.outcome(success, lost)
        return {
            "is_success": bool(success),
            "task_description": self.task_description,
            "target_object": self.objects[self.target_index].name,
            "target_lost": bool(lost),
            "outcome": outcome,
            **metrics,
            **self._layout_info(),
        }

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._camera.render(self.data)

    def close(self) -> None:
        self._camera.close()
        if self._wrist is not None:
            self._wrist.close()
