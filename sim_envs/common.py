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


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: object) -> bool:
    """An env argument given as text (`--env-kwargs observe_goal true`) as a bool: a bool as it is,
    an int 0 or 1, or one of `TRUE_WORDS` / `FALSE_WORDS` in any case and with surrounding spaces;
    ValueError naming the value otherwise. The same words and rules as `ee_vla.flags.parse_bool`
    (sim_envs imports nothing from ee_vla; a test keeps the two equal)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and (word := value.strip().lower()) in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {value!r}")
