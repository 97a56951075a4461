"""A fast offscreen camera renderer for MuJoCo models (the ee_vla suite and the Meta-World adapter)."""

from __future__ import annotations

import atexit
import weakref

import numpy as np

from sim_envs.gl import mujoco  # MuJoCo, or a GLBackendError naming MUJOCO_GL when its backend cannot load

_OPEN: weakref.WeakSet[OffscreenCamera] = weakref.WeakSet()
"""Cameras whose GL context is open, closed at interpreter exit (`_close_open_cameras`)."""


def _close_open_cameras() -> None:
    """Free the GL contexts of cameras still open at exit while GL still works: left to the garbage
    collector at shutdown, a renderer frees its EGL context after MuJoCo's own exit hook terminated
    the EGL display, and Python prints an ignored exception for each one. Registered once the first
    renderer exists, after MuJoCo's hook, so that it runs before it (exit hooks run last first)."""
    for camera in list(_OPEN):
        camera.close()


class OffscreenCamera:
    """Renders one named camera of a model to a (size, size, 3) uint8 array.

    Shadows and reflections are switched off and the offscreen buffer is only as large as needed:
    that is what makes software rendering (Mesa llvmpipe through EGL or OSMesa) run at hundreds of
    frames per second. The GL context is created lazily on the first `render()`, so an env can be
    constructed in one process and used in another (Async vector envs) and an env that never renders
    never touches GL. `MUJOCO_GL` (egl / osmesa / glfw) is the user's choice, read by MuJoCo itself.
    """

    def __init__(self, model: mujoco.MjModel, camera: str, size: int, flip: bool = False):
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera {camera!r} does not exist in the model")
        self.model = model
        self.camera = camera
        self.size = int(size)
        self.flip = flip
        self._renderer: mujoco.Renderer | None = None
        self._option = mujoco.MjvOption()
        self._option.geomgroup[5] = 0  # group 5 = hidden geoms (shape variants switched off)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        if self._renderer is None:
            vis = self.model.vis
            vis.quality.shadowsize = 0
            vis.quality.offsamples = 0  # no multisampling: 4x MSAA costs 4x in software rendering
            vis.global_.offwidth = max(int(vis.global_.offwidth), self.size)
            vis.global_.offheight = max(int(vis.global_.offheight), self.size)
            self._renderer = mujoco.Renderer(self.model, self.size, self.size)
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            if not _OPEN:
                atexit.unregister(_close_open_cameras)
                atexit.register(_close_open_cameras)
            _OPEN.add(self)
        self._renderer.update_scene(data, camera=self.camera, scene_option=self._option)
        img = self._renderer.render()
        if self.flip:
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def close(self) -> None:
        _OPEN.discard(self)
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
