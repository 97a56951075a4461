"""The training loop shared by behaviour cloning and distillation.

`fit` owns what both need: the process group under `torchrun` (DistributedDataParallel, a
resumable per-rank batch stream built on `DistributedSampler`), AdamW with transformers' cosine
schedule, bf16 autocast, gradient clipping, image augmentation, checkpoints that resume exactly
(model + optimizer + scheduler + step + RNG), a tqdm bar, metrics.jsonl, loss.png and a periodic
Jacobi-decoding evaluation. What differs between BC and distillation is the `Objective`: a
callable that turns a batch into a loss. The run directory's layout and checks are in
`ee_vla.training.run_dir`, metrics and the plot in `ee_vla.training.metrics`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
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

from ee_vla.runtime import resolve_device
from ee_vla.threads import configure_threads, resolve_threads
from ee_vla.training.augment import augment_pixel_values
from ee_vla.training.config import RunConfig
from ee_vla.training.data import DatasetError, collate, evenly_spaced
from ee_vla.training.losses import WindowLM
from ee_vla.training.metrics import MetricsLog, eval_mode, evaluate_decoding
from ee_vla.training.run_dir import (
    CONFIG_FILE,
    MODEL_DIR,
    RAW_MODEL_DIR,
    load_trainer_state,
    save_checkpoint,
    save_final_model,
)
from ee_vla.training.run_dir import ResumeConfigError as ResumeConfigError  # also importable from here

log = logging.getLogger(__name__)

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
    # auto -> cuda or cpu; a device this machine cannot run is one line naming it
    resolved = torch.device(resolve_device(device))
    want_cuda = resolved.type == "cuda"
    if world <= 1:
        return Runtime(0, 1, 0, resolved)
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


@dataclass
class _Run:
    """What the steps of `fit` share: `net` is the `WindowLM` the objective calls (DDP-wrapped when
    distributed), `aug_gen` and `obj_gen` the augmentation's and the objective's generators (both
    checkpointed), `step` the number of optimizer steps taken, `ema` the average of the weights
    (`RunConfig.ema_decay`; None when off)."""

    cfg: RunConfig
    rt: Runtime
    vla: Any
    kind: str
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[], contextlib.AbstractContextManager]
    aug_gen: torch.Generator
    obj_gen: torch.Generator
    ema: Any = None
    step: int = 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)


def _prepare(cfg: RunConfig, vla, rt: Runtime, kind: str) -> _Run:
    """`vla.model` in float32 on the device, ready to train: its DDP wrapper, AdamW on a cosine
    schedule with warmup, the autocast and the seeded generators."""
    from transformers import get_cosine_schedule_with_warmup

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
    aug_gen = torch.Generator(device=rt.device).manual_seed(cfg.seed * 7919 + rt.rank)
    obj_gen = torch.Generator().manual_seed(cfg.seed * 104729 + rt.rank + 1)
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    autocast = autocast_for(cfg.dtype, rt.device)
    return _Run(cfg, rt, vla, kind, net, optimizer, scheduler, autocast, aug_gen, obj_gen, ema)


def _restore(run: _Run, ckpt: Path) -> None:
    """Continue from checkpoint `ckpt`: its optimizer, schedule, step and RNG states (the model's
    weights are the checkpoint's already)."""
    cfg, rt, optimizer, scheduler = run.cfg, run.rt, run.optimizer, run.scheduler
    state = load_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    run.step = int(state["step"])
    if run.ema is not None and "ema" in state:
        run.ema.load_state_dict(state["ema"])
    elif run.ema is not None:
        log.warning("%s holds no average of the weights: the average starts again at step %d", ckpt, run.step)
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
        run.aug_gen.set_state(mine["aug"])
        run.obj_gen.set_state(mine["objective"])
        if mine.get("cuda") is not None and rt.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], rt.device)
    else:
        log.warning("resuming with %d processes, the checkpoint had %d: RNG streams restart", rt.world_size, len(rngs))
        run.aug_gen.manual_seed(cfg.seed * 7919 + rt.rank + run.step)
        run.obj_gen.manual_seed(cfg.seed * 104729 + rt.rank + 1 + run.step)
    log.info("resumed from %s at step %d", ckpt, run.step)


def _announce(run: _Run, n_items: int) -> None:
    """Write the run's config.json (main process) and log what is trained; record the training in
    the model's metadata."""
    cfg, rt = run.cfg, run.rt
    if rt.is_main:
        (run.out / CONFIG_FILE).write_text(json.dumps({"kind": run.kind, **cfg.to_dict()}, indent=2))
        log.info(
            "%s: %d training items, %d steps x %d samples x %d process(es) on %s (%s), %.2fM parameters",
            run.kind,
            n_items,
            cfg.steps,
            cfg.batch_size,
            rt.world_size,
            rt.device,
            "bf16 autocast" if run.autocast is not contextlib.nullcontext else "float32",
            sum(p.numel() for p in run.vla.model.parameters()) / 1e6,
        )
    run.vla.meta["training"] = {"kind": run.kind, "steps": cfg.steps, "data": list(cfg.data), "seed": cfg.seed}


def _train_step(run: _Run, batch: dict, objective: Objective) -> dict[str, torch.Tensor]:
    """One optimizer step on `batch`; returns its loss, gradient norm and the objective's metrics
    (tensors, unsynchronised)."""
    cfg, vla = run.cfg, run.vla
    inputs = vla.build_inputs(vla.camera_images(batch), batch["instruction"], batch["proprio"], batch.get("template"))
    if cfg.augment:
        inputs["pixel_values"] = augment_pixel_values(
            inputs["pixel_values"],
            vla.image_mean,
            vla.image_std,
            run.aug_gen,
            cfg.aug_shift,
            cfg.aug_brightness,
            cfg.aug_contrast,
            cfg.aug_saturation,
        )
    with run.autocast():
        loss, metrics = objective(run.net, inputs, batch, run.obj_gen)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        vla.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    )
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if run.ema is not None and run.step > cfg.warmup_steps:
        run.ema.update_parameters(vla.model)  # the first update copies the weights
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics}


class _Averages:
    """Step metrics summed on the device between two logged steps (a per-step read would sync the
    GPU), and the time since the last logged step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, metrics: dict, device: torch.device) -> None:
        for k, v in metrics.items():
            v = torch.as_tensor(v, dtype=torch.float32).detach().to(device)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1

    def row(self, run: _Run, per_epoch: int) -> dict:
        """The metrics.jsonl row of this step: the means since the last row, averaged over the
        processes, and the throughput; starts the next sums."""
        cfg, rt = run.cfg, run.rt
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys]) / self.n
        if rt.distributed:
            dist.all_reduce(vec)
            vec /= rt.world_size
        dt = time.perf_counter() - self.t0
        row = {"step": run.step, "epoch": round(run.step / per_epoch, 3), "lr": run.scheduler.get_last_lr()[0]}
        row.update({k: float(v) for k, v in zip(keys, vec.tolist(), strict=True)})
        if not np.isfinite(row["loss"]):  # checked here, not every step: a check syncs the GPU
            raise FloatingPointError(f"loss is {row['loss']} by step {run.step}: lower lr or check the data")
        row["steps_per_s"] = self.n / dt
        row["samples_per_s"] = self.n * cfg.batch_size * rt.world_size / dt
        self.sums, self.n = {}, 0
        return row


def _evaluate(run: _Run, eval_batch: dict, eval_hooks: Sequence[Callable]) -> dict[str, float]:
    """Greedy Jacobi on the fixed evaluation batch, then the evaluation hooks."""
    out = evaluate_decoding(run.vla, eval_batch, run.autocast)
    for hook in eval_hooks:
        with eval_mode(run.vla.model):
            out.update(hook(run.vla, run.autocast))
    return out


def _checkpoint(run: _Run, metrics_log: MetricsLog | None) -> None:
    """Save checkpoint `run.step` and redraw the plot (main process); every rank joins the RNG gather."""
    rt = run.rt
    rng = {
        "torch": torch.get_rng_state(),
        "aug": run.aug_gen.get_state(),
        "objective": run.obj_gen.get_state(),
        "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
    }
    state = {
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": _gather(rng, rt),
        "config": json.loads(json.dumps(run.cfg.to_dict())),
        "kind": run.kind,
        "world_size": rt.world_size,
    }
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    if rt.is_main:
        path = save_checkpoint(run.out, run.step, run.vla, state, run.cfg.keep_checkpoints)
        metrics_log.plot(f"{run.kind} ({run.out.name})")
        log.info("saved checkpoint %s", path)


def _swap_in_average(run: _Run) -> None:
    """Save the last step's own weights as out_dir/model_raw, then load the average of the weights
    into the model, which `_finish` saves as out_dir/model."""
    n = int(run.ema.n_averaged)
    if n == 0:
        log.warning(
            "ema_decay: the run ended at step %d, within its %d warmup steps, before the average started: "
            "out_dir/model holds the last step's weights",
            run.step,
            run.cfg.warmup_steps,
        )
        return
    save_final_model(run.out, run.vla, run.cfg.save_dtype, name=RAW_MODEL_DIR)
    log.info("saved the last step's weights (%s) to %s", run.cfg.save_dtype, run.out / RAW_MODEL_DIR)
    run.vla.model.load_state_dict(run.ema.module.state_dict())
    log.info("the final model is the average of the weights over %d steps (ema_decay=%s)", n, run.cfg.ema_decay)


def _finish(run: _Run, metrics_log: MetricsLog | None) -> Path:
    """Save the final model (main process) once every rank is done; returns its directory."""
    if run.rt.is_main:
        if not metrics_log.plot_path.is_file():
            metrics_log.plot(f"{run.kind} ({run.out.name})")
        if run.ema is not None:
            _swap_in_average(run)
        save_final_model(run.out, run.vla, run.cfg.save_dtype)
        log.info("saved the final model (%s) to %s", run.cfg.save_dtype, run.out / MODEL_DIR)
    run.rt.barrier()
    return run.out / MODEL_DIR


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
    evaluation batch: items with ``pixels`` (and the image of every other camera of `vla.cameras`
    under its key), ``instruction``, ``proprio``, ``target``. Each of
    `eval_hooks` is called as hook(vla, autocast) at every evaluation (main process, model in eval
    mode) and returns more ``eval/*`` metrics."""
    deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
    run = _prepare(cfg, vla, rt, kind)
    if resume_from is not None:
        _restore(run, resume_from)
    batches = EpochBatches(dataset, cfg.batch_size, rt.rank, rt.world_size, cfg.seed, start=run.step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=cfg.num_workers
    )
    eval_batch = None
    if rt.is_main and cfg.eval_every:
        src = eval_dataset if eval_dataset is not None else dataset
        eval_batch = collate([src[int(i)] for i in evenly_spaced(len(src), cfg.eval_samples)])
    metrics_log = MetricsLog(run.out, run.step) if rt.is_main else None
    _announce(run, len(dataset))

    averages = _Averages()
    last = cfg.steps if cfg.stop_after is None else cfg.stop_after
    bar = tqdm(total=last, initial=run.step, desc=kind, disable=not rt.is_main, dynamic_ncols=True)
    data_iter = iter(loader)
    if run.step >= last:
        log.info("step %d: nothing to do (steps=%d, stop_after=%s)", run.step, cfg.steps, cfg.stop_after)
    while run.step < last:
        metrics = _train_step(run, next(data_iter), objective)
        step = run.step
        bar.update(1)
        if deadline is not None and step % cfg.log_every == 0 and step < last and _out_of_time(deadline, rt):
            log.info("step %d: max_minutes=%s reached; ending the run here", step, cfg.max_minutes)
            last = step  # logs, evaluates and saves this step as the last one
        averages.add(metrics, rt.device)
        due_eval = bool(cfg.eval_every) and step % cfg.eval_every == 0  # the same on every rank
        logged = step % cfg.log_every == 0 or due_eval or step == last
        if logged:
            row = averages.row(run, batches.per_epoch)
            if eval_batch is not None and (due_eval or step == last):
                row.update(_evaluate(run, eval_batch, eval_hooks))
            if rt.is_main:
                metrics_log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        if step % cfg.save_every == 0 or step == last:
            _checkpoint(run, metrics_log)
        if logged:
            averages.restart_clock()  # throughput excludes evaluation and checkpoint time
    bar.close()
    return _finish(run, metrics_log)
