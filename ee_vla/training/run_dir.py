"""A training run's directory: its layout, the checks before a run starts or resumes, and the
checkpoint and final-model files.

    out_dir/config.json                     the config of the latest (re)start
    out_dir/checkpoints/step_0000500/       an ee_vla model dir (float32) + trainer_state.pt
    out_dir/model/                          the final model (save_dtype)
    out_dir/metrics.jsonl, out_dir/loss.png
    out_dir/trajectories/                   distillation's teacher trajectories
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ee_vla.training.config import RunConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
RAW_MODEL_DIR = "model_raw"
"""With an average of the weights (`RunConfig.ema_decay`): the last step's own weights, beside the
average in `MODEL_DIR`."""
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CONFIG_FILE = "config.json"
TRAJECTORY_DIR = "trajectories"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state) of a run directory, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    ckpts = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(ckpts, key=lambda p: int(p.name[5:]))


RUN_ENTRIES = frozenset(
    {
        CONFIG_FILE,
        METRICS_FILE,
        PLOT_FILE,
        CHECKPOINTS,
        MODEL_DIR,
        MODEL_DIR + ".tmp",
        RAW_MODEL_DIR,
        RAW_MODEL_DIR + ".tmp",
        TRAJECTORY_DIR,
    }
)
"""What a run directory may hold: the files a run writes (distillation's trajectories included)."""
RUN_KINDS = ("bc", "distill")

RESUME_MAY_CHANGE = frozenset(
    {
        "out_dir",
        "steps",
        "stop_after",
        "max_minutes",
        "resume",
        "allow_config_change",
        "device",
        "dtype",
        "num_workers",
        "threads",
        "log_every",
        "save_every",
        "keep_checkpoints",
        "eval_every",
        "eval_samples",
        "save_dtype",
        "collect_only",
        "collect_batch_size",
    }
)
"""Fields a resumed run may change freely: where the run directory is (it may have been moved), how
long and where it runs, how often it logs, saves and evaluates. Every other field defines the run
and must match its checkpoint."""
FIXED_BY_CHECKPOINT = frozenset(
    {
        "preset",
        "chunk_size",
        "cameras",
        "use_proprio",
        "init_from",
        "action_stats",
        "unnormalized_dims",
        "patch_size",
        "vision_pos_init",
        "vision_stem",
        "teacher",
    }
)
"""Fields that shape the model, which a resumed run loads from its checkpoint: a different value
could not take effect, so it is refused even with `allow_config_change`."""
_PATH_FIELDS = frozenset({"data", "init_from", "action_stats", "teacher", "trajectories"})


class ResumeConfigError(ValueError):
    """`resume` with a config that differs from the checkpoint's in a field that defines the run."""


def _is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json of a training run (not, e.g., a model's config.json)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("kind") in RUN_KINDS


def _foreign_entries(out: Path) -> list[str]:
    """Entries of the directory `out` that no training run writes (a config.json counts when it is
    not a run's)."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES)
    if (out / CONFIG_FILE).is_file() and not _is_run_config(out / CONFIG_FILE):
        foreign.insert(0, f"{CONFIG_FILE} (not a training run's)")
    return foreign


def resolve_run_dir(cfg: RunConfig, kind: str = "bc") -> Path | None:
    """Check the run directory against `resume` before any compute; returns the checkpoint to
    resume from (None for a fresh run).

    A fresh run needs an absent or empty out_dir, or one that holds only the files of a run that
    never saved a checkpoint (config.json, metrics.jsonl, distillation trajectories): anything else
    (a model directory, a dataset) would be overwritten. A resumed run's config must match its
    checkpoint's (`check_resume_config`).
    """
    out = Path(cfg.out_dir)
    check_run_dir(cfg)
    ckpts = list_checkpoints(out)
    if cfg.resume:
        import torch

        state = torch.load(ckpts[-1] / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        check_resume_config(state.get("config", {}), state.get("kind", kind), cfg, kind, ckpts[-1])
        return ckpts[-1]
    return None


def check_run_dir(cfg: RunConfig) -> None:
    """The checks of `resolve_run_dir` that read no checkpoint: out_dir may take a fresh run (see
    `check_out_dir`, and no run in it unless `resume`), or holds a checkpoint to resume from."""
    out = Path(cfg.out_dir)
    check_out_dir(out)
    ckpts = list_checkpoints(out)
    if cfg.resume and not ckpts:
        raise FileNotFoundError(f"resume=True but {out / CHECKPOINTS} holds no checkpoint to resume from")
    if not cfg.resume and (ckpts or (out / MODEL_DIR).exists()):
        raise FileExistsError(
            f"{out} already holds a run: pass resume=True (--resume) to continue it, or use a new out_dir"
        )


def check_out_dir(out: Path) -> None:
    """Refuse an out_dir that is a file, or a directory without a run (no checkpoint, no model/)
    holding something other than a run's files (`RUN_ENTRIES`): e.g. a model directory, whose
    config.json a run would overwrite."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir {out} is a file, not a run directory")
    if not out.is_dir() or list_checkpoints(out) or (out / MODEL_DIR).is_dir():
        return  # absent, or a run (whatever else it holds, e.g. an evaluation's output)
    if foreign := _foreign_entries(out):
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise FileExistsError(
            f"out_dir {out} is not empty and holds no training run (it holds {shown}); a run would overwrite "
            "its files: use a new or empty directory"
        )


def _comparable(name: str, value):
    """A config value as JSON gives it back (tuples as lists), paths resolved."""
    value = json.loads(json.dumps(value))
    if name in _PATH_FIELDS and value is not None:
        if isinstance(value, list):
            return [str(Path(v).resolve()) for v in value]
        return str(Path(value).resolve())
    return value


def check_resume_config(saved: dict, saved_kind: str, cfg: RunConfig, kind: str, ckpt: Path) -> None:
    """Refuse to resume the checkpoint `ckpt` (config `saved`, run kind `saved_kind`) with `cfg`
    when a field that defines the run differs (data, lr, batch_size, seed, ...). With
    `cfg.allow_config_change` the new values are used and logged as a warning, except for fields
    the checkpoint's model fixes (`FIXED_BY_CHECKPOINT`), which are always refused. A field the
    checkpoint does not record is not compared."""
    if saved_kind != kind:
        raise ResumeConfigError(f"cannot resume {ckpt} as a {kind} run: it is a checkpoint of a {saved_kind} run")
    new = cfg.to_dict()
    diffs = [
        (name, saved[name], new[name])
        for name in new
        if name in saved
        and name not in RESUME_MAY_CHANGE
        and _comparable(name, saved[name]) != _comparable(name, new[name])
    ]
    if not diffs:
        return
    text = "; ".join(f"{name}: {old!r} -> {value!r}" for name, old, value in diffs)
    fixed = [name for name, _, _ in diffs if name in FIXED_BY_CHECKPOINT]
    if fixed:
        raise ResumeConfigError(
            f"cannot resume {ckpt} with a different {', '.join(fixed)} ({text}): the model comes from the "
            "checkpoint, so these cannot change; give the run's values"
        )
    if not getattr(cfg, "allow_config_change", False):
        raise ResumeConfigError(
            f"cannot resume {ckpt}: the config differs from the checkpoint's ({text}); give the run's values, "
            "or pass allow_config_change=True (--allow-config-change) to continue with the new ones"
        )
    log.warning("resuming %s with a changed config (allow_config_change): %s", ckpt, text)


def load_trainer_state(ckpt: Path) -> dict:
    """The trainer state of a checkpoint: step, optimizer, scheduler, RNG states, config and kind."""
    import torch

    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def save_checkpoint(out_dir: Path, step: int, vla, state: dict, keep: int) -> Path:
    """Write checkpoint `step` (the model as `vla.save_pretrained` writes it, float32, and the trainer
    state) and delete all but the newest `keep` checkpoints."""
    root = out_dir / CHECKPOINTS
    final = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    from ee_vla.training.lora import merged_lora

    with merged_lora(vla.model):  # LoRA runs: the adapters folded in, the plain layout saved
        vla.save_pretrained(tmp)
    import torch

    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a checkpoint is complete or absent, never half-written
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def save_final_model(out_dir: Path, vla, save_dtype: str, name: str = MODEL_DIR) -> Path:
    """Write out_dir/`name` in `save_dtype` (float32, bfloat16 or float16), replacing any earlier one
    only once the new one is complete; returns its path."""
    final = out_dir / name
    import torch

    tmp = out_dir / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from ee_vla.training.lora import merged_lora

    with merged_lora(vla.model):
        vla.save_pretrained(tmp, dtype=None if save_dtype == "float32" else getattr(torch, save_dtype))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
