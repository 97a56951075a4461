"""ee_vla/PickCube-v0: pick up the named object (a cube or a cylinder) and lift it."""

from __future__ import annotations

import numpy as np

from sim_envs.tabletop import MOVED, TabletopEnv

PICK_TEMPLATES = (
    "pick up the {obj}",
    "lift the {obj}",
    "grasp the {obj} and lift it",
    "raise the {obj} off the table",
    "pick the {obj} up",
)
LIFT_HEIGHT = 0.06
"""Success: the target is held by both fingers and its centre is this far (m) above its rest height."""


class PickCubeEnv(TabletopEnv):
    """Pick up the object named in the instruction, among two distractors.

    ## Description
    Three objects (cubes / cylinders in six colours, 4 cm wide) stand on a table. The instruction
    names one by colour and shape ("pick up the green cylinder"); distractors share the target's
    colour or shape half of the time. Cubes have a random yaw in [-45, 45] degrees, so a good grasp
    may rotate the gripper.

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
    | term  | weight | value                                   |
    |-------|--------|-----------------------------------------|
    | reach | 0.4    | `1 - tanh(10 * dist(tcp, target))`          |
    | grasp | 0.2    | 1 while both fingers touch the target    |
    | lift  | 0.4    | `clip(lift / 0.06, 0, 1)` while grasped  |

    ## Success and episode end
    | condition                                                    | effect |
    |--------------------------------------------------------------|--------|
    | target held by both fingers and lifted > 0.06 m              | `info["is_success"] = True`, terminated |
    | the target falls off the table (centre 5 cm below its top)  | `info["target_lost"] = True`, terminated (failed) |
    | 80 steps (`max_episode_steps`)                               | truncated (TimeLimit) |

    ## Starting state
    Objects uniformly in x in [-0.15, 0.15], y in [-0.1, 0.12], at least 8 cm apart; the gripper
    open, pointing down, 18 cm above the table (+/- 3 cm).
    """

    n_objects = 3

    def _sample_task(self, rng: np.random.Generator) -> None:
        pos = self._sample_positions(rng, self.n_objects, 0.08, np.array([-0.15, -0.1]), np.array([0.15, 0.12]))
        for i, p in enumerate(pos):
            self._set_object_pose(i, p, rng.uniform(-np.pi / 4, np.pi / 4))
        template = self._draw_template(rng, PICK_TEMPLATES, "pick_cube")
        self._describe(template)

    def _evaluate(self) -> tuple[float, bool]:
        i = self.target_index
        d = float(np.linalg.norm(self.tcp_pos - self.target_pos))
        grasped = self.is_grasped(i)
        lift = self._lift()
        reward = 0.4 * (1.0 - np.tanh(10.0 * d)) + (0.2 + 0.4 * np.clip(lift / LIFT_HEIGHT, 0, 1)) * grasped
        return float(reward), grasped and lift > LIFT_HEIGHT

    def _lift(self) -> float:
        """How far (m) the target's centre is above where it rested at the episode's start."""
        return float(self.target_pos[2] - self._obj_rest_z[self.target_index])

    def _goal_distance(self) -> float:
        return max(0.0, LIFT_HEIGHT - self._lift())

    def _shortfall(self, target_moved: float) -> str:
        if self.is_grasped(self.target_index):
            return "target grasped, not lifted"
        return "target not moved" if target_moved < MOVED else "target moved, not grasped"
