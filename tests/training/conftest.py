"""Fixtures of the training tests: tiny synthetic demonstration files in the sim_envs HDF5 layout.

`write_demo_file` is a stand-in for `sim_envs` collection: `data/demo_<i>/{obs/pixels, obs/agent_pos,
actions}` (and `obs/wrist_pixels` with `wrist`) + attrs (instruction, env_id, seed, success). Each
episode shows a coloured square that moves with time; the actions are smooth functions of time and
the square's colour, so a tiny model can fit them from the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}


def write_demo_file(
    path: Path,
    n_episodes: int = 3,
    steps: int = 10,
    size: int = 64,
    action_dim: int = 7,
    proprio_dim: int = 4,
    seed: int = 0,
    env_id: str = "ee_vla/Synthetic-v0",
    success: list[bool] | None = None,
    with_demos: bool = True,
    task_points: bool = False,
    wrist: bool = False,
) -> Path:
    """Write a tiny demonstration file; returns its path."""
    import h5py

    rng = np.random.default_rng(seed)
    names = list(COLORS)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_id"] = env_id
        for i in range(n_episodes if with_demos else 0):
            color = names[i % len(names)]
            t = np.arange(steps, dtype=np.float32)
            px = np.full((steps, size, size, 3), 90, dtype=np.uint8)
            for s in range(steps):
                x = 4 + (s * 3) % (size - 16)
                px[s, 20:32, x : x + 12] = COLORS[color]
            px = np.clip(px.astype(int) + rng.integers(-5, 6, px.shape), 0, 255).astype(np.uint8)
            phase = names.index(color)
            actions = np.stack([0.8 * np.sin(0.4 * t + phase + d) for d in range(action_dim)], 1).astype(np.float32)
            actions[:, -1] = np.where(t < steps // 2, -1.0, 1.0)  # gripper: open then closed
            g = data.create_group(f"demo_{i}")
            g.create_dataset("obs/pixels", data=px)
            g.create_dataset("obs/agent_pos", data=rng.normal(size=(steps, proprio_dim)).astype(np.float32))
            g.create_dataset("actions", data=actions)
            if wrist:  # a gripper view: the square large, its colour the episode's, at a fixed place
                w = np.full((steps, size, size, 3), 40, dtype=np.uint8)
                w[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = COLORS[color]
                g.create_dataset("obs/wrist_pixels", data=w)
            if task_points:  # the square's x (pixels) and a fixed goal, as sim_envs records them
                xs = np.array([4 + (s * 3) % (size - 16) for s in range(steps)], dtype=np.float32)
                pts = np.stack(
                    [xs, np.full(steps, 26.0), np.zeros(steps), xs + 6, np.full(steps, 10.0), np.ones(steps)], 1
                )
                g.create_dataset("privileged/task_points", data=pts.astype(np.float32))
            g.attrs["instruction"] = f"pick up the {color} cube"
            g.attrs["env_id"] = env_id
            g.attrs["seed"] = seed + i
            g.attrs["success"] = True if success is None else success[i]
    return path


@pytest.fixture(scope="session")
def write_demo():
    """The `write_demo_file` function (test modules cannot import conftest)."""
    return write_demo_file


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    return write_demo_file(tmp_path / "demos.hdf5")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Tiny models run fastest on one intra-op thread; on a shared 2-core machine, two threads
    spin against other processes and are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
