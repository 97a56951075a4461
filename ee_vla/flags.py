"""Settings given as text: the words that mean true or false.

A setting can arrive as a word: a command-line value tyro leaves as a string
(`--env-kwargs wrist_camera false`), a ROS 2 launch argument (`use_sim_time:=off`), an option of a
decoder spec (`ceed_cap:guess_in_prefill=yes`). Every such place reads it with `parse_bool`, so the
same words work everywhere. Imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: Any) -> bool:
    """`value` as a bool: a bool (Python's or NumPy's) as it is, an int 0 or 1, or one of
    `TRUE_WORDS` / `FALSE_WORDS` in any case and with surrounding spaces. ValueError naming the
    value otherwise."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {value!r}")
