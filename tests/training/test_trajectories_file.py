"""Trajectory files: written with the mode of any new file, and read back unchanged."""

from __future__ import annotations

import os

import torch

from ee_vla.training.trajectories import FORMAT, Trajectories


def test_saved_trajectories_get_the_mode_of_new_files_and_round_trip(tmp_path):
    t = Trajectories(
        states=torch.randint(0, 256, (3, 4, 7)),
        n_states=torch.tensor([2, 4, 1]),
        sample=torch.arange(3),
        init=torch.zeros(3, dtype=torch.long),
        iterations=torch.tensor([1, 3, 0]),
        meta={"format": FORMAT, "teacher": "x"},
    )
    old = os.umask(0o027)
    try:
        path = t.save(tmp_path / "traj.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # safetensors alone leaves 0600
    back = Trajectories.load(path)
    for k in ("states", "n_states", "sample", "init", "iterations"):
        assert torch.equal(getattr(back, k), getattr(t, k)), k
    assert back.meta == t.meta
