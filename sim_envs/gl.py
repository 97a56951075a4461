"""MuJoCo's GL backend on a machine without a display.

MuJoCo reads `MUJOCO_GL` once, when it is first imported, and defaults to GLFW, which needs a window
system. `choose_mujoco_gl` (run when `sim_envs` is imported, before any of its modules imports
MuJoCo) picks a headless backend when the variable is unset and no display exists: egl (a GPU's
EGL, or Mesa's software EGL on a CPU-only machine), else osmesa. A value you set is kept.

MuJoCo loads the backend's library when it is imported. The modules that render import it from here
(`from sim_envs.gl import mujoco`), so that a backend that cannot load is a `GLBackendError` naming
`MUJOCO_GL` and what to install or set, not PyOpenGL's AttributeError from deep inside.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from types import ModuleType

_HINTS = {
    "egl": "install libEGL (Debian/Ubuntu: libegl1; a GPU driver's EGL or Mesa's software EGL), or set "
    "MUJOCO_GL=osmesa with libosmesa6 installed",
    "osmesa": "install libOSMesa (Debian/Ubuntu: libosmesa6), or set MUJOCO_GL=egl with libegl1 installed",
    "glfw": "GLFW needs a display; on a headless machine set MUJOCO_GL=egl (libegl1) or osmesa (libosmesa6)",
}


class GLBackendError(RuntimeError):
    """MuJoCo cannot load the GL backend `MUJOCO_GL` names on this machine (rendering needs one)."""


def load_mujoco() -> ModuleType:
    """Import MuJoCo; raise GLBackendError naming `MUJOCO_GL` and the fix when its GL backend cannot
    load (a missing libEGL/libOSMesa, an unknown value). MuJoCo itself missing stays an ImportError."""
    try:
        import mujoco
    except ModuleNotFoundError as e:
        if e.name == "mujoco":
            raise
        raise _backend_error(e) from e
    except Exception as e:  # PyOpenGL's AttributeError for a missing library, MuJoCo's RuntimeError, ...
        raise _backend_error(e) from e
    return mujoco


def __getattr__(name: str) -> ModuleType:
    """`from sim_envs.gl import mujoco`: MuJoCo through `load_mujoco`."""
    if name == "mujoco":
        return load_mujoco()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _backend_error(e: BaseException) -> GLBackendError:
    backend = os.environ.get("MUJOCO_GL", "")
    hint = _HINTS.get(backend.lower().strip(), "set MUJOCO_GL to egl, osmesa or glfw")
    return GLBackendError(
        f"MuJoCo could not load its GL backend MUJOCO_GL={backend or '(unset: glfw)'} ({type(e).__name__}: {e}); {hint}"
    )


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
