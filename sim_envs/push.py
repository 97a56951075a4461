"""ee_vla/Push-v0: push the named object onto a target circle."""

from __future__ import annotations

import numpy as np

from sim_envs.tabletop import MOVED, OBJECT_HALF, TabletopEnv

PUSH_TEMPLATES = (
    "push the {obj} to the white circle",
    "slide the {obj} onto the white circle",
    "push the {obj} onto the target",
    "move the {obj} to the white circle by pushing it",
    "shove the {obj} onto the circle",
)
PUSH_THRESHOLD = 0.04
"""Success: the target's centre is within this distance (m, in the table plane) of the circle's centre."""


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


class PushEnv(TabletopEnv):
    """Push the object named in the instruction onto a white circle, among two distractors.

    ## Description
    Three objects (cubes / cylinders in six colours) and a white circle (radius 4 cm, visual only)
    on a table. The instruction names the object to push ("push the blue cube to the white
    circle"); distractors share the target's colour or shape half of the time. The circle is 10-18
    cm from the target and the straight path is clear of distractors.

    ## Action space
    `Box(-1, 1, (7,), float32)`: (dx, dy, dz, droll, dpitch, dyaw, gripper); translation scaled to
    0.04 m/step, rotation to 0.25 rad/step, gripper -1 open / +1 closed. Out-of-range values are
    clipped; a wrong shape or NaN raises `ValueError`.

    ## Observation space
    | key            | shape                  | dtype   | content                                      |
    |----------------|------------------------|---------|----------------------------------------------|
    | `pixels`       | (image_size, image_size, 3) | uint8 | front camera                              |
    | `agent_pos`    | (7,)                   | float32 | TCP x, y, z (m), roll, pitch, yaw (rad), jaw opening (m) |
    | `wrist_pixels` | (image_size, image_size, 3) | uint8 | only with `wrist_camera=True`             |

    ## Rewards
    | term  | weight | value                                        |
    |-------|--------|----------------------------------------------|
    | reach | 0.3    | `1 - tanh(10 * dist(tcp, target))`               |
    | place | 0.7    | `1 - tanh(10 * dist_xy(target, circle))`      |

    ## Success and episode end
    | condition                                                         | effect |
    |-------------------------------------------------------------------|--------|
    | target within 0.04 m of the circle centre and resting on the table | `info["is_success"] = True`, terminated |
    | the target falls off the table (centre 5 cm below its top)  | `info["target_lost"] = True`, terminated (failed) |
    | 100 steps (`max_episode_steps`)                                   | truncated (TimeLimit) |

    ## Starting state
    Objects uniformly in x in [-0.15, 0.15], y in [-0.1, 0.12], at least 8 cm apart; the gripper
    open, pointing down, 18 cm above the table (+/- 3 cm). `info["push_angle"]` is the direction
    from the target to the circle, in degrees from the table's +x axis: the scene camera looks along
    +y, so 90 is a push straight away from it (the gripper then hides the target from that camera)
    and -90 one towards it.
    """

    n_objects = 3
    goal_marker = True
    retargetable = False  # the layout keeps the path from the sampled target to the circle clear

    def _sample_task(self, rng: np.random.Generator) -> None:
        low, high = np.array([-0.15, -0.1]), np.array([0.15, 0.12])
        for _ in range(1000):
            pos = self._sample_positions(rng, self.n_objects, 0.08, low, high)
            target = pos[0]
            angle = rng.uniform(-np.pi, np.pi)
            goal = target + rng.uniform(0.1, 0.18) * np.array([np.cos(angle), np.sin(angle)])
            if not (np.all(goal >= low - 0.03) and np.all(goal <= high + 0.03)):
                continue
            start = target - 0.06 * (goal - target) / np.linalg.norm(goal - target)  # where the pusher starts
            if all(_segment_distance(p, start, goal) > 0.08 for p in pos[1:]):
                break
        else:
            raise RuntimeError("could not sample a push layout")
        # pos[0] is the target; slot order is already shuffled by _sample_objects.
        others = iter(pos[1:])
        for i in range(self.n_objects):
            p = target if i == self.target_index else next(others)
            self._set_object_pose(i, p, rng.uniform(-np.pi / 4, np.pi / 4))
        self._set_body_xy(self._goal_body, goal)
        self.goal_xy = goal
        self.push_angle = float(np.degrees(np.arctan2(goal[1] - target[1], goal[0] - target[0])))
        template = self._draw_template(rng, PUSH_TEMPLATES, "push")
        self._describe(template)

    def _evaluate(self) -> tuple[float, bool]:
        obj = self.target_pos
        d_reach = float(np.linalg.norm(self.tcp_pos - obj))
        d_goal = self._goal_distance()
        reward = 0.3 * (1.0 - np.tanh(10.0 * d_reach)) + 0.7 * (1.0 - np.tanh(10.0 * d_goal))
        on_table = obj[2] < OBJECT_HALF + 0.01
        return float(reward), d_goal < PUSH_THRESHOLD and on_table

    def _goal_distance(self) -> float:
        return float(np.linalg.norm(self.target_pos[:2] - self.goal_xy))

    def _shortfall(self, target_moved: float) -> str:
        return "target not moved" if target_moved < MOVED else "target short of the circle"

    def _layout_info(self) -> dict[str, float]:
        return {"push_angle": self.push_angle}

    def privileged_state(self) -> dict:
        return {**super().privileged_state(), "goal_xy": self.goal_xy.copy()}

    @property
    def goal_pos(self) -> np.ndarray:
        return np.array([*self.goal_xy, 0.0])

    def _goal_options(self) -> list[tuple[dict, np.ndarray | None]]:
        return [({}, self.goal_pos)]  # the one circle, whichever object is named
