"""ee_vla/Place-v0: put the named object on the named plate."""

from __future__ import annotations

import numpy as np

from sim_envs.tabletop import MOVED, OBJECT_HALF, PLATE_COLORS, PLATE_HALF_HEIGHT, PLATE_RADIUS, TabletopEnv

PLACE_TEMPLATES = (
    "put the {obj} on the {plate}",
    "place the {obj} onto the {plate}",
    "pick up the {obj} and put it on the {plate}",
    "move the {obj} to the {plate}",
    "set the {obj} down on the {plate}",
)
PLACE_MARGIN = 0.015
"""Success: the target's centre is within `PLATE_RADIUS - PLACE_MARGIN` (4.5 cm) of the plate centre."""


class PlaceEnv(TabletopEnv):
    """Put the object named in the instruction on the plate named in the instruction.

    ## Description
    Two objects (cubes / cylinders in six colours) and two plates (white, black, pink or cyan,
    radius 6 cm) on a table. The instruction names both ("put the red cube on the pink plate"):
    the distractor object shares the target's colour or shape half of the time and the other
    plate is the wrong destination.

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
    | term  | weight | value                                          |
    |-------|--------|------------------------------------------------|
    | reach | 0.2    | `1 - tanh(10 * dist(tcp, target))`                 |
    | grasp | 0.1    | 1 while both fingers touch the target           |
    | place | 0.7    | `1 - tanh(10 * dist_xy(target, plate))`         |

    ## Success and episode end
    | condition                                                       | effect |
    |-----------------------------------------------------------------|--------|
    | target within 4.5 cm of the named plate's centre, on it, released | `info["is_success"] = True`, terminated |
    | the target falls off the table (centre 5 cm below its top)  | `info["target_lost"] = True`, terminated (failed) |
    | 120 steps (`max_episode_steps`)                                 | truncated (TimeLimit) |

    "Resting on it" means the object's centre is at most 1.5 cm above its height when standing on
    the plate; "released" means neither finger touches it.

    ## Starting state
    Objects and plates uniformly in x in [-0.17, 0.17], y in [-0.11, 0.13], plates 15 cm apart and
    objects 10 cm from plate centres; the gripper open, pointing down, 18 cm above the table.
    """

    n_objects = 2
    n_plates = 2

    def _sample_task(self, rng: np.random.Generator) -> None:
        low, high = np.array([-0.17, -0.11]), np.array([0.17, 0.13])
        plates = self._sample_positions(rng, self.n_plates, 0.15, low, high)
        objs = self._sample_positions(rng, self.n_objects, 0.08, low, high, fixed=plates)
        # _sample_positions keeps the 8 cm spacing to plates too; widen it to a plate's rim.
        while any(np.linalg.norm(o - p) < PLATE_RADIUS + 0.04 for o in objs for p in plates):
            objs = self._sample_positions(rng, self.n_objects, 0.08, low, high, fixed=plates)
        for i, p in enumerate(objs):
            self._set_object_pose(i, p, rng.uniform(-np.pi / 4, np.pi / 4))
        colors = rng.choice(list(PLATE_COLORS), size=self.n_plates, replace=False)
        for j, (xy, color) in enumerate(zip(plates, colors, strict=True)):
            self._set_body_xy(self._plate_body[j], xy)
            self.model.geom_rgba[self.model.body_geomadr[self._plate_body[j]]] = (*PLATE_COLORS[str(color)], 1.0)
        self._plates = [
            (f"{color} plate", np.array([*xy, 2 * PLATE_HALF_HEIGHT])) for xy, color in zip(plates, colors, strict=True)
        ]
        self.plate_index = int(rng.integers(self.n_plates))
        self.plate_name, goal = self._plates[self.plate_index]
        self.plate_xy = goal[:2]
        template = self._draw_template(rng, PLACE_TEMPLATES, "place")
        self._describe(template, plate=self.plate_name)

    def _evaluate(self) -> tuple[float, bool]:
        i = self.target_index
        obj = self.target_pos
        d_reach = float(np.linalg.norm(self.tcp_pos - obj))
        d_plate = self._goal_distance()
        left, right = self.object_touches_fingers(i)
        reward = 0.2 * (1 - np.tanh(10 * d_reach)) + 0.1 * (left and right) + 0.7 * (1 - np.tanh(10 * d_plate))
        resting = obj[2] < 2 * PLATE_HALF_HEIGHT + OBJECT_HALF + 0.015
        success = d_plate < PLATE_RADIUS - PLACE_MARGIN and resting and not (left or right)
        return float(reward), bool(success)

    def _goal_distance(self) -> float:
        return float(np.linalg.norm(self.target_pos[:2] - self.plate_xy))

    def _shortfall(self, target_moved: float) -> str:
        if self.is_grasped(self.target_index):
            return "target still held"
        return "target not moved" if target_moved < MOVED else "target not on the plate"

    def _info(self, success: bool, lost: bool) -> dict:
        return {**super()._info(success, lost), "target_plate": self.plate_name}

    def privileged_state(self) -> dict:
        return {**super().privileged_state(), "plate_xy": self.plate_xy.copy()}

    @property
    def goal_pos(self) -> np.ndarray:
        return self._plates[self.plate_index][1].copy()

    def _goal_options(self) -> list[tuple[dict, np.ndarray | None]]:
        own = self.plate_index
        order = [own, *(j for j in range(self.n_plates) if j != own)]
        return [({"plate": self._plates[j][0]}, self._plates[j][1]) for j in order]
