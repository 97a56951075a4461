"""Measure scripted-expert success and rendering speed per env: the numbers in docs/sim_envs.md.

    MUJOCO_GL=egl python -m sim_envs.report --episodes 100
    MUJOCO_GL=egl python -m sim_envs.report --env ee_vla/MetaWorld-reach-v0 --episodes 20

For each env id: render-only frames/s of the main camera (after a warm-up), and over `episodes`
seeded expert episodes (seeds seed .. seed + episodes - 1, observations rendered as in data
collection): success rate, mean episode length, env steps/s and episodes/min, on this process's
CPU. Results are logged as a Markdown table and optionally written as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim_envs import SUITE_ENV_IDS

logger = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    """Which envs to measure and how much."""

    env: tuple[str, ...] = SUITE_ENV_IDS
    """Gymnasium ids to measure."""
    episodes: int = 100
    """Seeded expert episodes per env id."""
    seed: int = 0
    """Seed of the first episode."""
    image_size: int = 128
    """Camera image side in pixels."""
    render_frames: int = 300
    """Frames rendered for the render-only frames/s measurement (after 20 warm-up frames)."""
    json_out: Path | None = None
    """Also write the results as JSON to this file."""

    def __post_init__(self) -> None:
        import sim_envs

        if isinstance(self.env, str):
            self.env = (self.env,)
        known = sim_envs.registered_env_ids()
        for env_id in self.env:
            if env_id not in known:
                raise ValueError(f"ReportConfig.env: unknown env id {env_id!r}; registered: {known}")
        if self.episodes < 1:
            raise ValueError(f"ReportConfig.episodes must be >= 1, got {self.episodes}")
        if self.render_frames < 1:
            raise ValueError(f"ReportConfig.render_frames must be >= 1, got {self.render_frames}")


@dataclass
class EnvReport:
    env_id: str
    episodes: int
    success_rate: float
    mean_length: float
    render_fps: float
    steps_per_s: float
    episodes_per_min: float
    failed_seeds: list[int]


def render_fps(env, frames: int) -> float:
    """Frames/s of `env.render()` (rgb_array) on the current state, after 20 warm-up frames."""
    for _ in range(20):
        env.render()
    t = time.perf_counter()
    for _ in range(frames):
        env.render()
    return frames / (time.perf_counter() - t)


def measure_env(
    env_id: str, episodes: int, seed: int = 0, image_size: int = 128, render_frames: int = 300
) -> EnvReport:
    """Expert success and speed of one env id (see the module docstring)."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from sim_envs.experts import make_expert

    env = gym.make(env_id, render_mode="rgb_array", image_size=image_size)
    try:
        expert = make_expert(env)
        env.reset(seed=seed)
        fps = render_fps(env, render_frames)
        successes, lengths, failed = 0, [], []
        t = time.perf_counter()
        for s in range(seed, seed + episodes):
            env.reset(seed=s)
            expert.reset()
            n = 0
            while True:
                _, _, terminated, truncated, info = env.step(expert.act())
                n += 1
                if terminated or truncated:
                    break
            lengths.append(n)
            successes += bool(info["is_success"])
            if not info["is_success"]:
                failed.append(s)
        wall = time.perf_counter() - t
    finally:
        env.close()
    return EnvReport(
        env_id=env_id,
        episodes=episodes,
        success_rate=successes / episodes,
        mean_length=float(np.mean(lengths)),
        render_fps=fps,
        steps_per_s=sum(lengths) / wall,
        episodes_per_min=60.0 * episodes / wall,
        failed_seeds=failed,
    )


def markdown_table(reports: list[EnvReport]) -> str:
    rows = [
        "| env id | expert success | mean length | render fps | env steps/s | episodes/min |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        rows.append(
            f"| `{r.env_id}` | {100 * r.success_rate:.0f}% ({r.episodes} eps) | {r.mean_length:.1f} | "
            f"{r.render_fps:.0f} | {r.steps_per_s:.0f} | {r.episodes_per_min:.0f} |"
        )
    return "\n".join(rows)


def run(cfg: ReportConfig) -> list[EnvReport]:
    reports = []
    for env_id in cfg.env:
        r = measure_env(env_id, cfg.episodes, cfg.seed, cfg.image_size, cfg.render_frames)
        logger.info("%s: %s", env_id, r)
        reports.append(r)
    gl = os.environ.get("MUJOCO_GL")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, MUJOCO_GL={gl}"
    logger.info("results (%s, image %dpx):\n%s", machine, cfg.image_size, markdown_table(reports))
    if cfg.json_out is not None:
        payload = {"machine": machine, "config": {**asdict(cfg), "json_out": str(cfg.json_out)}}
        payload["results"] = [asdict(r) for r in reports]
        Path(cfg.json_out).write_text(json.dumps(payload, indent=2))
    return reports


def main() -> None:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(tyro.cli(ReportConfig))


if __name__ == "__main__":
    main()
