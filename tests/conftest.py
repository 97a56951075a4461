"""Shared fixtures: a tiny random VLA saved once per test session.

MuJoCo reads MUJOCO_GL once, when first imported, and one process cannot switch backends: the
whole suite renders through EGL (Mesa's software EGL on a CPU) unless the caller sets it.

Triton reads TRITON_INTERPRET when it is first imported too: without a GPU the suite runs Triton
kernels (`ee_vla.engine.splitkv`) in Triton's CPU interpreter, so that is set before anything
imports Triton.
"""

import os
import re

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ONE_CAMERA_ENV = "test_ee_vla/OneCamera-v0"
"""A registered env with no gripper camera (its constructor has no `wrist_camera`), as any env of
another package may be: what asking such an env for `wrist_pixels` gives. Every env of sim_envs
renders one."""


def _register_one_camera_env() -> None:
    import gymnasium
    import numpy as np

    class OneCameraEnv(gymnasium.Env):
        metadata = {"render_modes": [], "render_fps": 10}

        def __init__(self, image_size: int = 64):
            self.observation_space = gymnasium.spaces.Dict(
                {"pixels": gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)}
            )
            self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (7,), np.float32)

    if ONE_CAMERA_ENV not in gymnasium.registry:
        gymnasium.register(ONE_CAMERA_ENV, entry_point=OneCameraEnv, max_episode_steps=5)


_register_one_camera_env()


@pytest.fixture(scope="session")
def tiny_vla_dir(tmp_path_factory):
    from ee_vla.models import create_random_vla_dir

    return create_random_vla_dir(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", chunk_size=3)


@pytest.fixture(scope="session")
def openvla_dir(tmp_path_factory):
    """The OpenVLA conformance checkpoint (tests/fixtures/openvla), with its toy towers' heads
    given in config.json as `timm_model_args` (the timm ids alone would mean the real sizes)."""
    import json
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "openvla"
    ref = json.loads((fixtures / "reference.json").read_text())["checkpoints"]["A"]
    dst = tmp_path_factory.mktemp("openvla") / ref["path"]
    shutil.copytree(fixtures / ref["path"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["timm_model_args"] = [ref["timm_overrides"][t] for t in cfg["timm_model_ids"]]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def pytest_terminal_summary(terminalreporter):
    """One line when tests skipped for want of ROS 2 (rclpy, launch), saying how to run them."""
    import importlib.util

    if importlib.util.find_spec("rclpy") is not None:
        return
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if isinstance(r.longrepr, tuple) and re.search(r"'(rclpy|launch\w*)'", r.longrepr[2]))
    if n:
        terminalreporter.write_line(
            f"ee_vla: no ROS 2 (rclpy) here: {n} rclpy/launch tests skipped; "
            "`make ros2 && make test-ros` builds ROS 2 Jazzy and runs them"
        )
