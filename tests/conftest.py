"""Shared fixtures: a tiny random VLA saved once per test session.

MuJoCo reads MUJOCO_GL once, when first imported, and one process cannot switch backends: the
whole suite renders through EGL (Mesa's software EGL on a CPU) unless the caller sets it.
"""

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="session")
def tiny_vla_dir(tmp_path_factory):
    from ee_vla.models import create_random_vla_dir

    return create_random_vla_dir(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", chunk_size=3)
