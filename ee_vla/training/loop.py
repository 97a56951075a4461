"""The training loop shared by behaviour cloning and distillation.

`fit` owns what both need: the process group under `torchrun` (DistributedDataParallel, a
resumable per-rank batch stream built on `DistributedSampler`), AdamW with transformers' cosine
schedule, bf16 autocast, gradient clipping, image augmentation, checkpoints that resume exactly
(model + optimizer + scheduler + step + RNG), a tqdm bar, metrics.jsonl, loss.png and a periodic
Jacobi-decoding evaluation. What differs between BC and distillation is the `Objective`: a
callable that turns a batch into a loss.

Run directory:

    out_dir/config.json                     the config of the latest (re)start
    out_dir/checkpoints/step_0000500/       an ee_vla model dir (float32) + trainer_state.pt
    out_dir/model/                          the final model (save_dtype)
    out_dir/metrics.jsonl, out_dir/loss.png
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ee_vla.threads import configure_threads, resolve_threads
from ee_vla.training.augment import augment_pixel_values
from ee_vla.training.config import RunConfig
from ee_vla.training.data import DatasetError, collate, evenly_spaced
from ee_vla.training.losses import WindowLM

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CONFIG_FILE = "config.json"
TRAJECTORY_DIR = "trajectories"

Objective = Callable[[torch.nn.Module, dict, dict, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""objective(model, inputs, batch, generator) -> (loss, metrics): `model` is the `WindowLM` to call
(its DDP wrapper when distributed), `inputs` the (augmented) `VLA.build_inputs` tensors, `batch`
the collated numpy batch, `generator` a CPU generator whose state is checkpointed."""


def _out_of_time(deadline: float, rt: Runtime) -> bool:
    """Whether the main process is past `deadline` (every rank gets its answer, so all stop at
    the same step)."""
    late = torch.tensor(float(time.monotonic() > deadline), device=rt.device)
    if rt.distributed:
        dist.broadcast(late, src=0)
    return bool(late.item())


# ---- processes and devices ---------------------------------------------------------------------
@dataclass
class Runtime:
    """Where this process runs: its rank in a torchrun job (0 of 1 otherwise) and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def training_threads(threads: int = 0, num_workers: int = 0) -> int:
    """torch's intra-op threads for one training process: `threads` when > 0, else the available
    cores less the DataLoader workers, split among torchrun's processes on this machine."""
    if threads > 0:
        return threads
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, resolve_threads(0, reserve=num_workers) // max(1, local_world))


def init_runtime(device: str = "auto", threads: int = 0, num_workers: int = 0) -> Runtime:
    """Join the torchrun process group when one is launched (torchrun sets WORLD_SIZE, RANK and
    LOCAL_RANK), else run as a single process. CUDA processes use NCCL on cuda:LOCAL_RANK; CPU
    processes use gloo. Sets torch's CPU threads (`training_threads`)."""
    configure_threads(training_threads(threads, num_workers))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "auto" and torch.cuda.is_available() or device.startswith("cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine (use --device cpu or auto)")
    if world <= 1:
        dev = torch.device("cuda" if device == "auto" and want_cuda else ("cpu" if device == "auto" else device))
        return Runtime(0, 1, 0, dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if want_cuda:
        if device not in ("auto", "cuda"):
            log.warning("device=%s ignored under torchrun: rank %d uses cuda:%d", device, rank, local_rank)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", timeout=timedelta(minutes=60))
        # one group per process, kept for later jobs in the same process (train then distill):
        # re-creating a group on torchrun's rendezvous store can hang
        atexit.register(dist.destroy_process_group)
    return Runtime(rank, world, local_rank, dev)


def shutdown_runtime(rt: Runtime) -> None:
    """End of a job: every rank waits for the others (rank 0 writes the results)."""
    if rt.distributed and dist.is_initialized():
        dist.barrier()


def autocast_for(dtype: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward's autocast context: bf16 autocast, or nothing for float32."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# ---- checkpoints ---------------------------------------------------------------------------------
def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state) of a run directory, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    ckpts = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(ckpts, key=lambda p: int(p.name[5:]))


RUN_ENTRIES = frozenset(
    {CONFIG_FILE, METRICS_FILE, PLOT_FILE, CHECKPOINTS, MODEL_DIR, MODEL_DIR + ".tmp", TRAJECTORY_DIR}
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
    check_out_dir(out)
    ckpts = list_checkpoints(out)
    if cfg.resume:
        if not ckpts:
            raise FileNotFoundError(f"resume=True but {out / CHECKPOINTS} holds no checkpoint to resume from")
        state = torch.load(ckpts[-1] / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        check_resume_config(state.get("config", {}), state.get("kind", kind), cfg, kind, ckpts[-1])
        return ckpts[-1]
    if ckpts or (out / MODEL_DIR).exists():
        raise FileExistsError(
            f"{out} already holds a run: pass resume=True (--resume) to continue it, or use a new out_dir"
        )
    return None


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
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def _save_checkpoint(out_dir: Path, step: int, vla, state: dict, keep: int) -> Path:
    root = out_dir / CHECKPOINTS
    final = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vla.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a checkpoint is complete or absent, never half-written
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return final


# ---- data stream ---------------------------------------------------------------------------------
class EpochBatches:
    """Infinite per-process stream of index batches, resumable at any global step.

    Epoch e is `DistributedSampler(shuffle=True, seed, drop_last=True)` with `set_epoch(e)` cut into
    batches of `batch_size` (the tail is dropped), so a run resumed at step s sees exactly the
    batches an uninterrupted run would have seen from step s on.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int, start: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world = world_size
        self.seed = seed
        self.start = start
        self.per_epoch = (len(dataset) // world_size) // batch_size
        if self.per_epoch == 0:
            raise DatasetError(
                f"batch_size={batch_size} x {world_size} process(es) is larger than the {len(dataset)} training items"
            )

    def __iter__(self) -> Iterator[list[int]]:
        from torch.utils.data import DistributedSampler

        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            sampler = DistributedSampler(
                self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            idx = list(sampler)
            for b in range(offset, self.per_epoch):
                yield idx[b * self.batch_size : (b + 1) * self.batch_size]
            epoch, offset = epoch + 1, 0


# ---- metrics ------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl rows and the loss.png plot (rank 0 only)."""

    def __init__(self, out_dir: Path, start_step: int):
        self.path = out_dir / METRICS_FILE
        self.plot_path = out_dir / PLOT_FILE
        self.rows: list[dict] = []
        if self.path.is_file():  # a resumed run: keep the history up to the checkpoint
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for r in self.rows for k in r if k.endswith("loss")})
        evals = sorted({k for r in self.rows for k in r if k.startswith("eval/")})
        fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
        ax = axes[0, 0]
        for k in keys:
            pts = [(r["step"], r[k]) for r in self.rows if k in r]
            ax.plot(*zip(*pts, strict=True), label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if keys and all(r[k] > 0 for r in self.rows for k in keys if k in r):
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(title)
        if evals:
            ax2 = axes[0, 1]
            for k in evals:
                pts = [(r["step"], r[k]) for r in self.rows if k in r]
                ax2.plot(*zip(*pts, strict=True), marker="o", label=k)
            ax2.set_xlabel("step")
            ax2.legend()
            ax2.set_title("fixed training batch, greedy Jacobi")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


@torch.no_grad()
def evaluate_decoding(vla, batch: dict, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Greedy Jacobi (first token repeated as the guess) on a batch: iterations to converge, the
    forward passes saved against AR (n / (1 + iterations)), and the fixed point's (= the AR
    output's) agreement with the demonstration chunk."""
    from ee_vla.training.trajectories import jacobi_states

    with _eval_mode(vla.model):
        inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"])
        with autocast():
            states, iters = jacobi_states(vla, inputs, None)
    tok = vla.action_tokenizer
    y, tgt = states[-1].cpu().numpy(), np.asarray(batch["target"])
    n, d = y.shape[1], tok.action_dim
    l1 = np.abs(tok.bin_centers[tok.tokens_to_bins(y)] - tok.bin_centers[tok.tokens_to_bins(tgt)])
    return {
        "eval/jacobi_iterations": float(iters.float().mean()),
        "eval/forward_speedup": float((n / (1.0 + iters.float())).mean()),
        "eval/token_acc": float((y == tgt).mean()),
        "eval/action_l1": float(l1.mean()),
        # the action executed first, and its first token: predicted from the observation alone
        # (no earlier action token to lean on), the part a policy that memorises scenes gets wrong
        "eval/first_action_l1": float(l1[:, :d].mean()),
        "eval/first_token_acc": float((y[:, 0] == tgt[:, 0]).mean()),
    }


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---- the loop -----------------------------------------------------------------------------------
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _gather(obj, rt: Runtime) -> list:
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def fit(
    cfg: RunConfig,
    vla,
    dataset,
    objective: Objective,
    rt: Runtime,
    resume_from: Path | None = None,
    kind: str = "bc",
    collate_fn: Callable[[list[dict]], dict] = collate,
    eval_dataset=None,
    eval_hooks: Sequence[Callable[[Any, Callable], dict[str, float]]] = (),
) -> Path:
    """Train `vla.model` on `dataset` with `objective` for `cfg.steps` steps; returns the final
    model directory (out_dir/model). `eval_dataset` (default `dataset`) provides the fixed
    evaluation batch: items with ``pixels``, ``instruction``, ``proprio``, ``target``. Each of
    `eval_hooks` is called as hook(vla, autocast) at every evaluation (main process, model in eval
    mode) and returns more ``eval/*`` metrics."""
    from transformers import get_cosine_schedule_with_warmup

    out = Path(cfg.out_dir)
    deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
    model = vla.model.to(rt.device)
    model.float().train()
    if rt.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    net = WindowLM(model)
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # the vision tower's pooling head and post-layernorm are unused by Llava (features come from the
        # last hidden state): DDP must not wait for their gradients
        net = DistributedDataParallel(
            net, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        **({"fused": True} if rt.device.type == "cuda" else {"foreach": True}),
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    autocast = autocast_for(cfg.dtype, rt.device)
    aug_gen = torch.Generator(device=rt.device).manual_seed(cfg.seed * 7919 + rt.rank)
    obj_gen = torch.Generator().manual_seed(cfg.seed * 104729 + rt.rank + 1)

    step = 0
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        # the saved state carries the run's lr and weight decay: the config's apply (they differ
        # only with allow_config_change), on the schedule of the config's steps and warmup
        optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for group, lr_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * lr_lambda(scheduler.last_epoch)
        rngs = state["rng"]
        if len(rngs) == rt.world_size:
            mine = rngs[rt.rank]
            torch.set_rng_state(mine["torch"])
            aug_gen.set_state(mine["aug"])
            obj_gen.set_state(mine["objective"])
            if mine.get("cuda") is not None and rt.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], rt.device)
        else:
            log.warning(
                "resuming with %d processes, the checkpoint had %d: RNG streams restart", rt.world_size, len(rngs)
            )
            aug_gen.manual_seed(cfg.seed * 7919 + rt.rank + step)
            obj_gen.manual_seed(cfg.seed * 104729 + rt.rank + 1 + step)
        log.info("resumed from %s at step %d", resume_from, step)

    batches = EpochBatches(dataset, cfg.batch_size, rt.rank, rt.world_size, cfg.seed, start=step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=cfg.num_workers
    )
    eval_batch = None
    if rt.is_main and cfg.eval_every:
        src = eval_dataset if eval_dataset is not None else dataset
        eval_batch = collate([src[int(i)] for i in evenly_spaced(len(src), cfg.eval_samples)])
    metrics_log = MetricsLog(out, step) if rt.is_main else None
    if rt.is_main:
        (out / CONFIG_FILE).write_text(json.dumps({"kind": kind, **cfg.to_dict()}, indent=2))
        log.info(
            "%s: %d training items, %d steps x %d samples x %d process(es) on %s (%s), %.2fM parameters",
            kind,
            len(dataset),
            cfg.steps,
            cfg.batch_size,
            rt.world_size,
            rt.device,
            "bf16 autocast" if autocast is not contextlib.nullcontext else "float32",
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    vla.meta["training"] = {"kind": kind, "steps": cfg.steps, "data": list(cfg.data), "seed": cfg.seed}

    def trainer_state() -> dict:
        rng = {
            "torch": torch.get_rng_state(),
            "aug": aug_gen.get_state(),
            "objective": obj_gen.get_state(),
            "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
        }
        rngs = _gather(rng, rt)
        return {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "config": json.loads(json.dumps(cfg.to_dict())),
            "kind": kind,
            "world_size": rt.world_size,
        }

    def checkpoint() -> None:
        state = trainer_state()  # every rank joins the RNG gather
        if rt.is_main:
            path = _save_checkpoint(out, step, vla, state, cfg.keep_checkpoints)
            metrics_log.plot(f"{kind} ({out.name})")
            log.info("saved checkpoint %s", path)

    sums: dict[str, torch.Tensor] = {}
    n_acc, t_last = 0, time.perf_counter()
    last = cfg.steps if cfg.stop_after is None else cfg.stop_after
    bar = tqdm(total=last, initial=step, desc=kind, disable=not rt.is_main, dynamic_ncols=True)
    data_iter = iter(loader)
    if step >= last:
        log.info("step %d: nothing to do (steps=%d, stop_after=%s)", step, cfg.steps, cfg.stop_after)
    while step < last:
        batch = next(data_iter)
        inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"], batch.get("template"))
        if cfg.augment:
            inputs["pixel_values"] = augment_pixel_values(
                inputs["pixel_values"],
                vla.image_mean,
                vla.image_std,
                aug_gen,
                cfg.aug_shift,
                cfg.aug_brightness,
                cfg.aug_contrast,
                cfg.aug_saturation,
            )
        with autocast():
            loss, metrics = objective(net, inputs, batch, obj_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if deadline is not None and step % cfg.log_every == 0 and step < last and _out_of_time(deadline, rt):
            log.info("step %d: max_minutes=%s reached; ending the run here", step, cfg.max_minutes)
            last = step  # logs, evaluates and saves this step as the last one
        for k, v in {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics}.items():
            v = torch.as_tensor(v, dtype=torch.float32).detach().to(rt.device)
            sums[k] = sums[k] + v if k in sums else v
        n_acc += 1

        do_eval = eval_batch is not None and (step % cfg.eval_every == 0 or step == last)
        due_eval = bool(cfg.eval_every) and (step % cfg.eval_every == 0)  # the same on every rank
        logged = step % cfg.log_every == 0 or due_eval or step == last
        if logged:
            keys = sorted(sums)
            vec = torch.stack([sums[k] for k in keys]) / n_acc
            if rt.distributed:
                dist.all_reduce(vec)
                vec /= rt.world_size
            dt = time.perf_counter() - t_last
            row = {"step": step, "epoch": round(step / batches.per_epoch, 3), "lr": scheduler.get_last_lr()[0]}
            row.update({k: float(v) for k, v in zip(keys, vec.tolist(), strict=True)})
            if not np.isfinite(row["loss"]):  # checked here, not every step: a check syncs the GPU
                raise FloatingPointError(f"loss is {row['loss']} by step {step}: lower lr or check the data")
            row["steps_per_s"] = n_acc / dt
            row["samples_per_s"] = n_acc * cfg.batch_size * rt.world_size / dt
            if do_eval:
                row.update(evaluate_decoding(vla, eval_batch, autocast))
                for hook in eval_hooks:
                    with _eval_mode(vla.model):
                        row.update(hook(vla, autocast))
            if rt.is_main:
                metrics_log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            sums, n_acc = {}, 0
        if step % cfg.save_every == 0 or step == last:
            checkpoint()
        if logged:
            t_last = time.perf_counter()  # throughput excludes evaluation and checkpoint time
    bar.close()
    final = out / MODEL_DIR
    if rt.is_main:
        if not metrics_log.plot_path.is_file():
            metrics_log.plot(f"{kind} ({out.name})")
        tmp = out / (MODEL_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        vla.save_pretrained(tmp, dtype=None if cfg.save_dtype == "float32" else getattr(torch, cfg.save_dtype))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        log.info("saved the final model (%s) to %s", cfg.save_dtype, final)
    rt.barrier()
    return final
