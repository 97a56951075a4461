"""The 7-dim action convention shared by the ee_vla suite and the Meta-World adapter, and action
validation. Imports no MuJoCo (`import sim_envs` registers the env ids without loading it).

The action convention is OpenVLA's end-effector delta: `(dx, dy, dz, droll, dpitch, dyaw, gripper)`,
each in [-1, 1]. Out-of-range values are clipped (documented behaviour); a wrong shape or a NaN/inf is
a `ValueError`, never a silent NaN simulation.
"""

from __future__ import annotations

import numpy as np

ACTION_DIM = 7
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
GRIPPER_CONVENTION = "-1 = open, +1 = closed (absolute target, not a delta)"


def validate_action(action: np.ndarray, dim: int = ACTION_DIM) -> np.ndarray:
    """Return `action` as a float64 vector clipped to [-1, 1].

    Raises:
        ValueError: the action is not a flat vector of `dim` numbers, or contains NaN/inf.
    """
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"action must be a numeric array of shape ({dim},), got {action!r}") from e
    if a.shape != (dim,):
        raise ValueError(f"action must have shape ({dim},) = {ACTION_NAMES[:dim]}, got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = [ACTION_NAMES[i] if dim == ACTION_DIM else str(i) for i in np.nonzero(~np.isfinite(a))[0]]
        raise ValueError(f"action contains NaN or inf in {bad}: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)
