"""Training of ee_vla policies: behaviour cloning (`train`) and CEED consistency distillation
(`distill`) on demonstrations collected with `sim_envs` (see docs/training.md).

    from ee_vla.training import TrainConfig, train, DistillConfig, distill
    teacher = train(TrainConfig(data=("data/",), out_dir="runs/bc", preset="small"))
    student = distill(DistillConfig(data=("data/",), out_dir="runs/ceed", teacher=str(teacher)))

The configs import nothing heavy (CLI help stays fast); torch and transformers load on the call.
"""

from __future__ import annotations

from pathlib import Path

from ee_vla.training.config import DistillConfig, RunConfig, TrainConfig


def train(cfg: TrainConfig) -> Path:
    """Behaviour cloning; returns the final model directory. See `ee_vla.training.bc.train`."""
    from ee_vla.training.bc import train as _train

    return _train(cfg)


def distill(cfg: DistillConfig) -> Path:
    """CEED distillation; returns the student's model directory. See `ee_vla.training.consistency.distill`."""
    from ee_vla.training.consistency import distill as _distill

    return _distill(cfg)


__all__ = ["DistillConfig", "RunConfig", "TrainConfig", "distill", "train"]
