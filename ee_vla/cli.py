"""`ee-vla`: one command, one subcommand per job.

Each subcommand is a typed config dataclass (its fields and docstrings are the options and their
help, rendered by tyro) and a function that runs it. Only the chosen subcommand's module is
imported, so `ee-vla --help` is instant and a missing optional dependency (mujoco, cyclonedds)
only affects the subcommands that need it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

# name -> (module, config class, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "eval": (
        "ee_vla.evaluation",
        "EvalConfig",
        "evaluate",
        "evaluate a policy in simulation (success, latency; --compare decoders)",
    ),
    "bench": ("ee_vla.bench", "BenchConfig", "run_bench", "decode latency of AR vs Jacobi vs CEED on one machine"),
    "collect": ("sim_envs.collect", "CollectConfig", "collect", "record scripted-expert demonstrations to HDF5"),
    "dagger": (
        "ee_vla.training.dagger",
        "DaggerConfig",
        "collect_on_policy",
        "run a policy in the sim and record the expert's labels of the states it visits (DAgger)",
    ),
    "train": ("ee_vla.training", "TrainConfig", "train", "behaviour-cloning training of a VLA on demonstrations"),
    "distill": ("ee_vla.training", "DistillConfig", "distill", "CEED consistency distillation of a trained VLA"),
    "serve": (
        "ros_nodes.serve",
        "ServeConfig",
        "serve",
        "run the policy node over Cyclone DDS (no ROS install needed)",
    ),
    "init-model": ("ee_vla.cli", "InitModelConfig", "init_model", "write a randomly initialised VLA of a preset"),
}


@dataclass
class InitModelConfig:
    """Options of `ee-vla init-model`."""

    out: Path
    """Directory to write the model to."""
    preset: str = "tiny"
    """Network size: tiny | small."""
    chunk_size: int = 3
    """Actions per chunk."""
    seed: int = 0
    """Initialisation seed."""


def init_model(cfg: InitModelConfig) -> Path:
    from ee_vla.models import create_random_vla_dir

    path = create_random_vla_dir(cfg.out, cfg.preset, cfg.chunk_size, cfg.seed)
    logging.getLogger("ee_vla").info("wrote a random %s VLA to %s", cfg.preset, path)
    return path


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {spec[3]}" for name, spec in SUBCOMMANDS.items())
    return (
        "usage: ee-vla SUBCOMMAND [OPTIONS]\n\nFast VLA policies: CEED decoding, streaming, sim evaluation, ROS 2.\n\n"
        f"subcommands:\n{rows}\n\n`ee-vla SUBCOMMAND --help` lists that subcommand's options."
    )


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ee-vla: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, cls, fn, _ = SUBCOMMANDS[name]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(
            f"ee-vla {name}: a dependency is missing ({e}); install the matching extra, e.g. "
            "`pip install -e .[sim]` or `.[dds]`",
            file=sys.stderr,
        )
        return 1
    config = tyro.cli(getattr(mod, cls), args=rest, prog=f"ee-vla {name}")
    getattr(mod, fn)(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
