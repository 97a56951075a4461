"""Headless rendering for the sim tests: MuJoCo reads MUJOCO_GL when it is first imported.

EGL (Mesa's software EGL on a CPU-only machine, the GPU driver elsewhere) is the default; a user's
own MUJOCO_GL (e.g. osmesa) wins.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
