"""Scripted experts: privileged-state controllers that produce the same 7-dim bounded actions a VLA
emits, for data collection and as an upper bound in evaluation.

Translation and rotation are proportional control on the error, scaled by the env's per-step
limits and clipped by the vector norm (so actions shrink smoothly near a goal and are saturated only
when far away: they tokenise well); the gripper is -1 (open) or +1 (closed). Each expert's action
is a function of the current state only (its phase is read off the state, never remembered), so a
slipped grasp or a rotated cube is retried, and its labels of states another policy visited
(`ExpertLabels`, `ee-vla dagger`) are the ones it would give on its own way through them.
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol

import gymnasium as gym
import numpy as np

from sim_envs.common import ACTION_DIM
from sim_envs.place import PLACE_MARGIN
from sim_envs.tabletop import (
    MAX_ROTATION,
    MAX_TRANSLATION,
    OBJECT_HALF,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    YAW_LIMIT,
    TabletopEnv,
    wrap_half_turn,
)

OPEN, CLOSE = -1.0, 1.0
GAIN = 0.8
"""Fraction of the remaining error commanded per step."""


class Expert(Protocol):
    """A scripted policy bound to one env: `reset()` after `env.reset()`, then `act()` per step."""

    def reset(self) -> None: ...

    def act(self) -> np.ndarray: ...


def _translate(tcp: np.ndarray, target: np.ndarray, max_speed: float = 1.0) -> np.ndarray:
    """Normalised translation action towards `target`, norm-clipped to `max_speed`."""
    v = GAIN * (np.asarray(target) - tcp) / MAX_TRANSLATION
    n = float(np.linalg.norm(v))
    return v * (max_speed / n) if n > max_speed else v


def _rotate(state: dict, yaw: float) -> np.ndarray:
    """Normalised rotation action: roll and pitch to 0, yaw to the equivalent of `yaw` (modulo a half
    turn) inside the yaw limit that is nearest to the commanded yaw."""
    cmd = state["commanded_euler"]
    candidates = [c for c in (yaw - math.pi, yaw, yaw + math.pi) if abs(c) <= YAW_LIMIT - 0.05]
    best = min(candidates, key=lambda c: abs(c - cmd[2]))
    err = np.array([-cmd[0], -cmd[1], best - cmd[2]])
    return np.clip(GAIN * err / MAX_ROTATION, -1.0, 1.0)


def _grasp_yaw(state: dict) -> float:
    """Gripper yaw that puts the fingers on two parallel faces of the target (any yaw for a cylinder)."""
    if state["target_shape"] == "cylinder":
        return float(state["commanded_euler"][2])
    return (state["target_yaw"] + math.pi / 4) % (math.pi / 2) - math.pi / 4


def _action(translation: np.ndarray, rotation: np.ndarray, gripper: float) -> np.ndarray:
    return np.concatenate([translation, rotation, [gripper]]).astype(np.float32)


class _StateExpert:
    """An expert of the ee_vla suite bound to one env. Its action depends on the env's current
    state only, so `reset()` has nothing to forget."""

    def __init__(self, env: TabletopEnv):
        self.env = env

    def reset(self) -> None:
        pass


class ReachExpert(_StateExpert):
    """Above the target, then down to it, gripper open."""

    def act(self) -> np.ndarray:
        s = self.env.privileged_state()
        tcp, obj = s["tcp_pos"], s["target_pos"]
        high = obj + np.array([0.0, 0.0, 0.06])
        goal = obj + np.array([0.0, 0.0, 0.01]) if np.linalg.norm(tcp[:2] - obj[:2]) < 0.02 else high
        return _action(_translate(tcp, goal), _rotate(s, s["commanded_euler"][2]), OPEN)


def _grasp(s: dict, lift_z: float) -> np.ndarray | None:
    """The action that grasps the target and lifts it to `lift_z`, or None once it is held there.

    A function of the current state only: above the target (aligned) -> down to it -> close ->
    lift. Each phase is read off the state (held? how high above the target? how far off in xy?),
    with wider tolerances once lower down so that a descent is not abandoned for a few millimetres.
    """
    tcp, obj, euler = s["tcp_pos"], s["target_pos"], s["gripper_euler"]
    yaw = _grasp_yaw(s)
    rot = _rotate(s, yaw)
    xy_err = float(np.linalg.norm(tcp[:2] - obj[:2]))
    height = float(tcp[2] - obj[2])
    if s["target_grasped"]:
        if abs(tcp[2] - lift_z) > 0.01:
            return _action(_translate(tcp, [tcp[0], tcp[1], lift_z]), _rotate(s, s["commanded_euler"][2]), CLOSE)
        return None
    above = obj + np.array([0.0, 0.0, 0.07])
    opening = s["gripper_opening"]
    if s["gripper_closing"] and xy_err < 0.02 and height < 0.015 and opening > 2 * OBJECT_HALF + 0.015:
        # closing, but a finger is held off the target (on a plate's rim, say): rise a little while
        # closing, so that the fingers clear the obstacle and close on the target's upper half
        return _action(_translate(tcp, obj + np.array([0.0, 0.0, 0.012])), np.zeros(3), CLOSE)
    if height < 0.006 and xy_err < 0.02:  # at the target: close, unless the fingers met nothing
        if opening < OBJECT_HALF:
            return _action(_translate(tcp, above), rot, OPEN)
        return _action(np.zeros(3), np.zeros(3), CLOSE)
    aligned = abs(wrap_half_turn(yaw - euler[2])) < 0.08
    if (xy_err < 0.01 and aligned) or (height < 0.05 and xy_err < 0.02):
        return _action(_translate(tcp, obj), rot, OPEN)
    return _action(_translate(tcp, above), rot, OPEN)


class PickExpert(_StateExpert):
    """Grasp the named object and lift it 12 cm."""

    LIFT_Z = 0.14

    def act(self) -> np.ndarray:
        a = _grasp(self.env.privileged_state(), self.LIFT_Z)
        if a is None:  # held up high: keep still (success ends the episode)
            return _action(np.zeros(3), np.zeros(3), CLOSE)
        return a


class PlaceExpert(_StateExpert):
    """Grasp the named object, carry it above the named plate, lower it, open, retreat."""

    LIFT_Z = 0.1
    LOWER_WITHIN = 0.03
    """Start lowering once the object is this close (m, in the table plane) to the plate's centre,
    and go on correcting on the way down. The plate takes the object anywhere within 4.5 cm of its
    centre, and a start this wide is one a policy that sees the plate to a centimetre or two can
    imitate: with a start at 8 mm, policies fine-tuned on its labels held the object over the plate
    until time ran out (docs/training.md, "When the Place expert lowers the object")."""
    KEEP_LOWERING_WITHIN = 0.035
    """Once below the carrying height, lowering goes on while the object is this close."""

    def act(self) -> np.ndarray:
        s = self.env.privileged_state()
        tcp, obj, plate = s["tcp_pos"], s["target_pos"], s["plate_xy"]
        hold = _rotate(s, s["commanded_euler"][2])
        on_plate = np.linalg.norm(obj[:2] - plate) < PLATE_RADIUS - PLACE_MARGIN
        rest_z = 2 * PLATE_HALF_HEIGHT + OBJECT_HALF  # the object's centre when it stands on the plate
        if not s["target_grasped"]:
            if on_plate and obj[2] < rest_z + 0.015:  # let go on the plate: open and retreat
                return _action(_translate(tcp, [tcp[0], tcp[1], 0.15]), hold, OPEN)
            return _grasp(s, self.LIFT_Z)  # never lifted here: the target is held below
        offset = tcp[:2] - obj[:2]  # where the object sits in the hand
        xy_goal = plate + offset
        xy_err = float(np.linalg.norm(tcp[:2] - xy_goal))
        low = tcp[2] < self.LIFT_Z - 0.02
        lowering = xy_err < self.LOWER_WITHIN or (low and xy_err < self.KEEP_LOWERING_WITHIN)
        if not lowering:
            if xy_err > 0.02 and tcp[2] < self.LIFT_Z - 0.01:  # just grasped: straight up first
                return _action(_translate(tcp, [tcp[0], tcp[1], self.LIFT_Z]), hold, CLOSE)
            return _action(_translate(tcp, [*xy_goal, self.LIFT_Z], max_speed=0.8), hold, CLOSE)
        z_goal = tcp[2] - (obj[2] - (rest_z + 0.004))  # the object just above the plate's surface
        if tcp[2] - z_goal > 0.004:
            return _action(_translate(tcp, [*xy_goal, z_goal], max_speed=0.6), hold, CLOSE)
        return _action(np.zeros(3), np.zeros(3), OPEN)  # release


class PushExpert(_StateExpert):
    """Closed fingers as a pusher: turn the gripper so its fingers' flat side faces the push
    direction, go behind the object (relative to the circle) above it, drop to table height and push
    along the object-to-circle line. Once low near the object it stays low: off the line but clear
    behind the object it slides back onto the line; too close to slide, it backs off along the line;
    beside the object it goes back past it; in front of it, it first steps out to the side. Only far
    from the object does it lift and come over. Like the grasping experts, the phase is read off the
    current state."""

    PUSH_Z = 0.016
    SAFE_Z = 0.075
    CONTACT = OBJECT_HALF + 0.012  # object half-size + finger half-width (gripper x axis)
    BEHIND = CONTACT + 0.018
    # The push goes on while the pusher is at most PUSH_ABOVE over the push height, at most
    # PUSH_LATERAL off the line and at least PUSH_BEHIND behind the object's centre: the steering
    # brings it back onto the line. The descent behind the object starts within DESCEND_WITHIN of
    # that point and DESCEND_ALIGNED (rad) of the push yaw, and both are corrected on the way down.
    # Gates as wide as a policy's own precision: tighter ones label the states a policy visits
    # (`ExpertLabels`) "hover until aligned" where pushing on succeeds.
    PUSH_ABOVE = 0.010
    PUSH_LATERAL = 0.025
    PUSH_BEHIND = 0.012
    DESCEND_WITHIN = 0.025
    DESCEND_ALIGNED = 0.25
    # Low within ROUND_WITHIN of the object, the pusher goes round it at table height, SIDE off the
    # line: lifting there labels a policy's states with a climb to a hover above the object, where
    # the scene camera no longer sees the object under the gripper.
    ROUND_WITHIN = 0.10
    SIDE = CONTACT + 0.015

    PHASES = ("push", "descend", "over", "slide", "up", "round", "back_off", "step_out")
    """The branches of `act`, in the order they are tried (`phase` names the one a state is in)."""

    def act(self) -> np.ndarray:
        return self._plan(self.env.privileged_state())[1]

    def phase(self) -> str:
        """Which of `PHASES` the current state is in: "push" (pushing along the line), "descend"
        (down behind the object), "over" (above the table, moving over to the point behind the
        object), "slide" (low, onto the line behind the object), "up" (low but far from the object:
        lift first), "round" (low beside the object: back past it), "back_off" (low, behind it but too
        close to slide: back off along the line), "step_out" (low in front of it: step out sideways)."""
        return self._plan(self.env.privileged_state())[0]

    def plan(self, state: dict | None = None) -> tuple[str, np.ndarray]:
        """(`phase`, `act`) from one reading of the state: `state`, the env's `privileged_state()`
        when given (a caller that already read it), else read here."""
        return self._plan(self.env.privileged_state() if state is None else state)

    def _plan(self, s: dict) -> tuple[str, np.ndarray]:
        tcp, obj, goal, euler = s["tcp_pos"], s["target_pos"], s["goal_xy"], s["gripper_euler"]
        to_goal = goal - obj[:2]
        dist = float(np.linalg.norm(to_goal))
        d = to_goal / max(dist, 1e-9)
        normal = np.array([-d[1], d[0]])
        yaw = wrap_half_turn(math.atan2(d[1], d[0]))  # gripper x axis along the push
        rot = _rotate(s, yaw)
        rel = tcp[:2] - obj[:2]
        behind = -float(np.dot(rel, d))  # how far the pusher is behind the object along the line
        offset = float(np.dot(rel, normal))  # signed distance from the line
        lateral = abs(offset)
        pre = obj[:2] - d * self.BEHIND
        to_pre = float(np.linalg.norm(tcp[:2] - pre))
        low = tcp[2] < self.SAFE_Z - 0.01

        def table(xy) -> np.ndarray:  # move at table height (push height)
            return _action(_translate(tcp, [*xy, self.PUSH_Z]), rot, CLOSE)

        if tcp[2] - self.PUSH_Z <= self.PUSH_ABOVE and lateral <= self.PUSH_LATERAL and behind >= self.PUSH_BEHIND:
            # track a point a little ahead of the contact point on the line through the object,
            # which also steers the pusher back onto the line
            target = obj[:2] - d * self.CONTACT + d * min(dist, 0.02)
            return "push", _action(_translate(tcp, [*target, self.PUSH_Z], max_speed=0.5), rot, CLOSE)
        aligned = abs(wrap_half_turn(yaw - euler[2])) < self.DESCEND_ALIGNED
        clear = behind >= self.BEHIND - 0.005  # far enough behind to move sideways without touching it
        if to_pre < self.DESCEND_WITHIN and aligned:
            return "descend", table(pre)
        if not low:
            return "over", _action(_translate(tcp, [*pre, self.SAFE_Z]), rot, CLOSE)
        if clear or to_pre < 0.02:
            return "slide", table(pre)
        if float(np.linalg.norm(rel)) > self.ROUND_WITHIN:
            return "up", _action(_translate(tcp, [tcp[0], tcp[1], self.SAFE_Z]), rot, CLOSE)
        side = 1.0 if offset >= 0 else -1.0
        if lateral >= self.SIDE - 0.005:  # beside the object with room: back past it, on this side
            return "round", table(obj[:2] - d * self.BEHIND + normal * side * lateral)
        if behind > 0:  # behind it, too close to slide
            return "back_off", table(tcp[:2] - d * (self.BEHIND - behind))
        return "step_out", table(obj[:2] - d * behind + normal * side * self.SIDE)


class MetaWorldExpert:
    """Meta-World's own scripted policy for the task (`metaworld.policies`), mapped to 7-dim
    actions: (dx, dy, dz, 0, 0, 0, grab_effort)."""

    def __init__(self, env: gym.Env):
        from metaworld.policies import ENV_POLICY_MAP

        self.env = env
        self.policy = ENV_POLICY_MAP[env.task_name]()

    def reset(self) -> None:
        pass

    def act(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Constant(s) may be too high" on every call
            a = np.asarray(self.policy.get_action(self.env.privileged_state()), dtype=np.float64)
        a = np.clip(a, -1.0, 1.0)
        out = np.zeros(ACTION_DIM, dtype=np.float32)
        out[:3], out[6] = a[:3], a[3]
        return out


def make_expert(env: gym.Env) -> Expert:
    """The scripted expert for `env` (wrappers are looked through)."""
    from sim_envs.metaworld_adapter import MetaWorldEnv  # does not import metaworld itself
    from sim_envs.pick_cube import PickCubeEnv
    from sim_envs.place import PlaceEnv
    from sim_envs.push import PushEnv
    from sim_envs.reach import ReachEnv

    base = env.unwrapped
    for cls, expert in (
        (ReachEnv, ReachExpert),
        (PickCubeEnv, PickExpert),
        (PushEnv, PushExpert),
        (PlaceEnv, PlaceExpert),
    ):
        if isinstance(base, cls):
            return expert(base)
    if isinstance(base, MetaWorldEnv):
        return MetaWorldExpert(base)
    raise ValueError(f"no scripted expert for {type(base).__name__}")


class ExpertLabels(gym.Wrapper):
    """Adds the scripted expert's action for the current observation to `info["expert_action"]`
    after every `reset` and `step`, whoever chooses the executed actions (on-policy data
    collection, `ee-vla dagger`), and the privileged `info["task_points"]` where the env has them.

    With `horizon` k > 1 it also adds `info["expert_plan"]` (k, 7): the expert's next k actions
    from the current state, simulated on a copy of it (`TabletopEnv.scratch`): the chunk the
    expert would execute from here, where k consecutive labels of a policy's states would instead
    correct deviations the policy itself made. Row 0 is `expert_action`. The experts act on the
    state only, so a plan is what the expert would do.
    """

    def __init__(self, env: gym.Env, horizon: int = 1):
        super().__init__(env)
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"ExpertLabels horizon must be an int >= 1, got {horizon!r}")
        base = env.unwrapped
        if horizon > 1 and not (hasattr(base, "scratch") and hasattr(base, "simulate")):
            raise ValueError(f"{type(base).__name__} cannot simulate a copy of its state: use horizon=1")
        self.expert = make_expert(env)
        self.horizon = horizon
        self._points = getattr(base, "task_points", None)

    def _label(self, info: dict) -> dict:
        info = dict(info)
        action = np.asarray(self.expert.act(), dtype=np.float32)
        info["expert_action"] = action
        if self.horizon > 1:
            plan = [action]
            with self.env.unwrapped.scratch() as sim:
                for _ in range(self.horizon - 1):
                    sim.simulate(plan[-1])
                    plan.append(np.asarray(self.expert.act(), dtype=np.float32))
            info["expert_plan"] = np.stack(plan)
        if self._points is not None:
            info["task_points"] = np.asarray(self._points(), dtype=np.float32)
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.expert.reset()
        return obs, self._label(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._label(info)
