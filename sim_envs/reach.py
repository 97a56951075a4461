"""ee_vla/Reach-v0: move the gripper to the named object."""

from __future__ import annotations

import numpy as np

from sim_envs.tabletop import TabletopEnv

REACH_TEMPLATES = (
    "reach the {obj}",
    "move the gripper to the {obj}",
    "go to the {obj}",
    "put your gripper around the {obj}",
    "reach for the {obj}",
)
REACH_THRESHOLD = 0.04
"""Success: TCP within this distance (m) of the target's centre."""


class ReachEnv(TabletopEnv):
    """Reach the object named in the instruction, among two distractors.

    ## Description
    Three objects (cubes / cylinders in six colours) stand on a table. The instruction names one of
    them by colour and shape ("reach the red cube"); distractors share the target's colour or shape
    half of the time, so the instruction is needed to know which object to go to.

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
    | term  | value                         |
    |-------|-------------------------------|
    | reach | `1 - tanh(10 * dist(tcp, target))` in [0, 1] |

    ## Success and episode end
    | condition                                   | effect |
    |---------------------------------------------|--------|
    | `dist(tcp, target centre) < 0.04 m`         | `info["is_success"] = True`, terminated |
    | the target falls off the table (centre 5 cm below its top)  | `info["target_lost"] = True`, terminated (failed) |
    | 50 steps (`max_episode_steps`)              | truncated (TimeLimit) |

    ## Starting state
    Objects uniformly in x in [-0.15, 0.15], y in [-0.1, 0.12], at least 8 cm apart, random yaw;
    the gripper open, pointing down, 18 cm above the table (+/- 3 cm).
    """

    n_objects = 3

    def _sample_task(self, rng: np.random.Generator) -> None:
        pos = self._sample_positions(rng, self.n_objects, 0.08, np.array([-0.15, -0.1]), np.array([0.15, 0.12]))
        for i, p in enumerate(pos):
            self._set_object_pose(i, p, rng.uniform(-np.pi / 4, np.pi / 4))
        template = self._draw_template(rng, REACH_TEMPLATES, "reach")
        self._describe(template)

    def _evaluate(self) -> tuple[float, bool]:
        d = self._goal_distance()
        return 1.0 - float(np.tanh(10.0 * d)), d < REACH_THRESHOLD

    def _goal_distance(self) -> float:
        return float(np.linalg.norm(self.tcp_pos - self.target_pos))

    def _shortfall(self, target_moved: float) -> str:
        return "target not reached"
