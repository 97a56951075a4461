"""Drive the closed gripper of a suite env straight down onto the edge of the named object, then
sideways, and report how fast the object moves (docs/sim_envs.md, "Design choice": a gripper
resting on top of an object is not driven lower).

A physically sane scene moves the object at about the gripper's speed (0.2-0.4 m/s) or not at all;
without the resting rule the weld crushes the 50 g object into the table and flings it off at up to
9 m/s. CPU only (MuJoCo with EGL or OSMesa rendering); no model involved.

    MUJOCO_GL=egl python scripts/press_test.py                      # Push-v0, 10 seeds x 24 offsets
    MUJOCO_GL=egl python scripts/press_test.py --env ee_vla/PickCube-v0 --seeds 20
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import sim_envs  # registers the suite


def press(env_id: str, seed: int, offset: np.ndarray) -> tuple[float, float, float]:
    """One descent: (peak object speed in m/s, distance the object moved in m, lowest TCP height in
    m). tests/sim_envs/test_envs.py runs it too."""
    env = gym.make(env_id, image_size=16)
    try:
        base = env.unwrapped
        env.reset(seed=seed)
        p = base.target_pos
        env.reset(seed=seed, options={"gripper_pos": [p[0] + offset[0], p[1] + offset[1], 0.12]})
        start, dof = base.target_pos, base._obj_qvel[base.target_index]
        peak, lowest = 0.0, np.inf
        for t in range(12):
            move = [0.0, 0.0, -1.0] if t < 6 else [*(-0.5 * np.sign(offset)), 0.0]
            base.simulate(np.array([*move, 0, 0, 0, 1.0], dtype=np.float32))
            peak = max(peak, float(np.linalg.norm(base.data.qvel[dof : dof + 3])))
            lowest = min(lowest, float(base.tcp_pos[2]))
        return peak, float(np.linalg.norm(base.target_pos[:2] - start[:2])), lowest
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="ee_vla/Push-v0")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 100000, 100001, ...")
    a = ap.parse_args(argv)
    if a.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {a.seeds}")
    if a.env not in sim_envs.SUITE_ENV_IDS:
        ap.error(f"--env {a.env}: one of the ee_vla suite's envs ({', '.join(sim_envs.SUITE_ENV_IDS)})")
    offsets = [d * np.array([np.cos(t), np.sin(t)]) for d in (0.025, 0.03, 0.035) for t in np.arange(8) * np.pi / 4]
    rows = [press(a.env, 100000 + s, o) for s in range(a.seeds) for o in offsets]
    speed = np.array([r[0] for r in rows])
    print(
        f"{a.env}: {len(rows)} descents onto an edge (TCP 2.5-3.5 cm from the object's centre); "
        f"object peak speed max {speed.max():.2f} m/s, median {np.median(speed):.2f} m/s, "
        f"over 1 m/s in {np.mean(speed > 1.0):.0%}; moved at most {max(r[1] for r in rows):.3f} m"
    )


if __name__ == "__main__":
    main()
