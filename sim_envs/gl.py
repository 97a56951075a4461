"""MuJoCo's GL backend on a machine without a display.

MuJoCo reads `MUJOCO_GL` once, when it is first imported, and defaults to GLFW, which needs a window
system. `choose_mujoco_gl` (run when `sim_envs` is imported, before any of its modules imports
MuJoCo) picks a headless backend when the variable is unset and no display exists: egl (a GPU's
EGL, or Mesa's software EGL on a CPU-only machine), else osmesa. A value you set is kept.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys


def headless_gl_backend() -> str | None:
    """egl when libEGL is installed, else osmesa when libOSMesa is, else None (Debian's libegl1 /
    libosmesa6 provide them)."""
    for backend, lib in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(lib):
            return backend
    return None


def choose_mujoco_gl() -> str | None:
    """Set MUJOCO_GL for a headless machine; leave a user's value, a display (GLFW then works) and
    an already imported MuJoCo alone. Returns the backend MuJoCo will use (None: its default)."""
    # PyOpenGL, under MuJoCo's EGL/OSMesa bindings, logs at INFO that its optional C accelerator is
    # missing; rendering does not use it.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    current = os.environ.get("MUJOCO_GL")
    if current or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "mujoco" in sys.modules:
        return current or None
    backend = headless_gl_backend()
    if backend is not None:
        os.environ["MUJOCO_GL"] = backend
    return backend
