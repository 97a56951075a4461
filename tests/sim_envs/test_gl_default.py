"""MuJoCo's GL backend on a machine without a display."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _headless_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _gl_after_import(env: dict[str, str]) -> str:
    code = "import os, sim_envs; print(os.environ.get('MUJOCO_GL', '<unset>'))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_headless_import_chooses_a_backend_mujoco_can_render_with(tmp_path):
    from sim_envs.gl import headless_gl_backend

    expected = headless_gl_backend()
    if expected is None:
        pytest.skip("neither libEGL nor libOSMesa is installed here (Debian: libegl1 / libosmesa6)")
    assert _gl_after_import(_headless_env()) == expected


def test_user_choice_and_display_are_kept():
    assert _gl_after_import(_headless_env(MUJOCO_GL="osmesa")) == "osmesa"
    # With a display, MuJoCo's default window backend (GLFW) is left to work.
    assert _gl_after_import(_headless_env(DISPLAY=":0")) == "<unset>"


def test_an_env_left_open_exits_without_gl_errors():
    """A script that renders and exits without `env.close()` (the garbage collector then frees the
    renderers at shutdown) prints nothing on stderr."""
    from sim_envs.gl import headless_gl_backend

    backend = headless_gl_backend()
    if backend is None:
        pytest.skip("neither libEGL nor libOSMesa is installed here (Debian: libegl1 / libosmesa6)")
    code = (
        "import gymnasium as gym, sim_envs\n"
        "env = gym.make('ee_vla/Push-v0', wrist_camera=True)\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs['pixels'].any() and obs['wrist_pixels'].any()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_headless_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Exception ignored" not in r.stderr and "Error" not in r.stderr, r.stderr


_BROKEN_EGL = (
    "import importlib.abc, sys\n"
    "class _NoEGL(importlib.abc.MetaPathFinder):  # PyOpenGL's failure where libEGL is missing\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name == 'OpenGL.EGL':\n"
    "            raise AttributeError(\"'NoneType' object has no attribute 'eglQueryString'\")\n"
    "sys.meta_path.insert(0, _NoEGL())\n"
)


@pytest.mark.parametrize(
    "backend, prelude, hint",
    [("nonsense", "", "set MUJOCO_GL to egl, osmesa or glfw"), ("egl", _BROKEN_EGL, "libegl1")],
)
def test_a_backend_that_cannot_load_is_one_error_line_naming_mujoco_gl(tmp_path, backend, prelude, hint):
    """`ee-vla collect` with a GL backend MuJoCo cannot load (an unknown MUJOCO_GL; EGL without its
    library, as PyOpenGL fails then): a usage error naming MUJOCO_GL and the fix, no traceback."""
    code = prelude + (
        "from ee_vla.cli import main\n"
        f"args = ['collect', '--env', 'ee_vla/Reach-v0', '--episodes', '1', '--out', {str(tmp_path)!r}]\n"
        "raise SystemExit(main(args))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=_headless_env(MUJOCO_GL=backend), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("ee-vla collect: error:"))
    assert f"GL backend MUJOCO_GL={backend}" in line and hint in line, line
