"""CEED consistency distillation: `distill(DistillConfig) -> Path` (CEED-VLA, arXiv 2506.13725; its
consistency loss follows CLLM, arXiv 2403.00835).

1. The AR-trained teacher P decodes every training sample with greedy Jacobi from each initial
   guess in `cfg.inits`; every window state Y0 .. Y* is recorded (`trajectories`).
2. The student Q (initialised from P) is trained on (sample, state Y) items with
       consistency_weight * KL(Q_sg(. | Y*, x) || Q(. | Y, x))      (per position, see `losses`)
     + ar_weight * CE(Q(. | labels, x), labels)                      (teacher forced)
   where labels are Y* except on action steps where Y* deviates from the demonstration by more
   than `mixed_label_threshold` (mixed-label supervision), which take the demonstration's tokens.
   With `consistency="local"` the consistency target of a state Y_j is the next state of its
   trajectory, Y_{j+1}, instead of Y* (CLLM's local consistency).

A student trained this way predicts the fixed point from intermediate Jacobi states, so the same
greedy Jacobi/CEED decoder (`ee_vla.decoding.core`) converges in fewer iterations.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ee_vla.training.config import DistillConfig
from ee_vla.training.data import (
    DemoDataset,
    check_against_model,
    check_cameras_recorded,
    collate,
    load_pixels,
    model_dims,
    scan_dataset,
)
from ee_vla.training.loop import Objective, autocast_for, fit, init_runtime, shutdown_runtime
from ee_vla.training.losses import after_first_wrong, ar_loss, consistency_loss, mixed_labels, window_logits
from ee_vla.training.run_dir import TRAJECTORY_DIR, check_out_dir, resolve_run_dir
from ee_vla.training.trajectories import Trajectories, TrajectoryError, collect_trajectories

log = logging.getLogger(__name__)


class DistillDataset(torch.utils.data.Dataset):
    """Items of consistency distillation: a demonstration sample with one teacher trajectory.

    `state_sampling="uniform"`: one item per trajectory; the objective draws the state.
    `"all"`: one item per (trajectory, state before the fixed point), the state fixed.
    Item = the `DemoDataset` item + ``states`` (n, n) int64, ``n_states`` int, ``state_index``
    int (-1 = draw), ``fixed`` (n,) int64.
    """

    def __init__(self, demo: DemoDataset, trajectories: Trajectories, state_sampling: str = "uniform"):
        self.demo = demo
        self.traj = trajectories
        self.fixed = trajectories.fixed_points
        if state_sampling == "all":
            counts = (trajectories.n_states - 1).clamp(min=1).numpy()
            m = np.repeat(np.arange(len(trajectories)), counts)
            s = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
            self.items = np.stack([m, s], 1)
        else:
            self.items = np.stack([np.arange(len(trajectories)), np.full(len(trajectories), -1)], 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        m, s = (int(x) for x in self.items[i])
        item = self.demo[int(self.traj.sample[m])]
        item["states"] = self.traj.states[m].long().numpy()
        item["n_states"] = int(self.traj.n_states[m])
        item["state_index"] = s
        item["fixed"] = self.fixed[m].long().numpy()
        return item


def pick_states(states: torch.Tensor, n_states: torch.Tensor, state_index: torch.Tensor, generator: torch.Generator):
    """(B, n) the training state of each item: `state_index` where >= 0, else uniform among the
    states before the fixed point (the fixed point itself when the guess already was one); with
    the index of each state."""
    before = (n_states - 1).clamp(min=1)
    drawn = (torch.rand(len(before), generator=generator) * before).long()
    s = torch.where(state_index >= 0, state_index, drawn)
    return states[torch.arange(len(s)), s], s


def next_states(states: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, n) the state after state `s` of each trajectory (B, n_max, n): the trajectories are
    padded with their fixed point, so the fixed point's next state is itself."""
    return states[torch.arange(len(s)), (s + 1).clamp(max=states.shape[1] - 1)]


def _twice(inputs: dict) -> dict:
    return {k: torch.cat([v, v]) for k, v in inputs.items()}


def distill_objective(cfg: DistillConfig, vla) -> Objective:
    """The consistency + AR loss of one batch (see module docstring)."""
    action_range = vla.action_range if cfg.action_vocab_only else None
    tok = vla.action_tokenizer

    def objective(model, inputs: dict, batch: dict, generator: torch.Generator):
        dev = inputs["input_ids"].device
        states = torch.as_tensor(batch["states"])
        y, s = pick_states(states, torch.as_tensor(batch["n_states"]), torch.as_tensor(batch["state_index"]), generator)
        fixed = np.asarray(batch["fixed"])
        if cfg.mixed_labels:
            labels, replaced = mixed_labels(fixed, batch["target"], tok, cfg.mixed_label_threshold)
        else:
            labels, replaced = fixed, np.zeros((len(fixed), 1), dtype=bool)
        target = fixed if cfg.consistency == "global" else next_states(states, s)
        y, target_t, labels_t = (torch.as_tensor(a, device=dev) for a in (y, target, labels))
        raw = getattr(model, "module", model)
        # one forward with gradients over [Jacobi states; labels] (one DDP forward per backward)
        logits = window_logits(model, _twice(inputs), torch.cat([y[:, :-1], labels_t[:, :-1]]))
        logits_y, logits_lab = logits.chunk(2)
        if torch.equal(labels_t, target_t):
            logits_target = logits_lab.detach()  # the labels are the target: the same forward gives Q(. | target)
        else:
            with torch.no_grad():
                logits_target = window_logits(raw, inputs, target_t[:, :-1])
        mask = after_first_wrong(y, target_t) if cfg.mask_converged_prefix else None
        cons = consistency_loss(logits_y, logits_target, mask, action_range, cfg.reduction)
        ar = ar_loss(logits_lab, labels_t, action_range, cfg.label_smoothing, cfg.reduction)
        loss = cfg.consistency_weight * cons + cfg.ar_weight * ar
        metrics = {
            "consistency_loss": cons.detach(),
            "ar_loss": ar.detach(),
            "replaced_steps": torch.tensor(float(replaced.mean())),
            "state_index": s.float().mean(),
        }
        return loss, metrics

    return objective


def _trajectory_source(cfg: DistillConfig) -> Path | None:
    """Trajectories to reuse: `cfg.trajectories`, or the ones an earlier run left in out_dir."""
    if cfg.trajectories:
        p = Path(cfg.trajectories)
        if not p.exists():
            raise TrajectoryError(f"DistillConfig.trajectories: {p} does not exist")
        return p
    own = Path(cfg.out_dir) / TRAJECTORY_DIR
    return own if own.is_dir() and any(own.glob("part-*-of-*.safetensors")) else None


def freeze_vision(model: torch.nn.Module) -> int:
    """Stop the gradient of a Llava-style VLA's vision tower and projector; returns how many
    parameters that covers."""
    inner = getattr(model, "model", model)
    parts = [getattr(inner, name, None) for name in ("vision_tower", "multi_modal_projector")]
    if any(part is None for part in parts):
        raise ValueError(
            f"freeze_vision needs a Llava-style VLA (vision_tower, multi_modal_projector); got {type(model).__name__}"
        )
    n = 0
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
            n += p.numel()
    return n


def distill(cfg: DistillConfig) -> Path:
    """Consistency-distil `cfg.teacher` on `cfg.data`; returns the student's model directory
    (out_dir/model), or the trajectory directory with `collect_only`.

    Bad input (missing/empty dataset, dims that do not fit the teacher, missing trajectories, an
    occupied out_dir without `resume`) raises before any model is loaded.
    """
    from ee_vla.models import load_vla

    episodes = scan_dataset(cfg.data, cfg.success_only)
    a_dim, p_dim, _ = model_dims(cfg.teacher, cfg.unnorm_key, cfg.chunk_size)
    check_against_model(episodes, a_dim, p_dim, what=f"the teacher {cfg.teacher}")
    from ee_vla.models.contract import read_contract

    cameras = read_contract(cfg.teacher).cameras  # the student reads the teacher's cameras
    check_cameras_recorded(episodes, cameras, what=f"the teacher {cfg.teacher}")
    _trajectory_source(cfg)  # a missing `trajectories` path fails here, before compute
    if cfg.collect_only:  # trajectories only: nothing is trained or resumed
        check_out_dir(Path(cfg.out_dir))
        resume_from = None
    else:
        resume_from = resolve_run_dir(cfg, kind="distill")
        if cfg.lora_rank and resume_from is not None:
            raise ValueError(
                f"DistillConfig.lora_rank: {cfg.out_dir} holds checkpoints, and a LoRA run cannot resume "
                "(its checkpoints hold the merged weights): use a new out_dir"
            )
    rt = init_runtime(cfg.device, cfg.threads, cfg.num_workers)
    try:
        source = _trajectory_source(cfg)
        rt.barrier()  # every rank decides before any rank writes trajectories
        torch.manual_seed(cfg.seed)
        vla = load_vla(cfg.teacher, device=rt.device, unnorm_key=cfg.unnorm_key, chunk_size=cfg.chunk_size)
        load_pixels(episodes, vla.cameras)
        demo = DemoDataset(episodes, vla.action_tokenizer, vla.chunk_size, use_proprio=p_dim > 0, cameras=vla.cameras)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if source is None:
            parts = out / TRAJECTORY_DIR
            traj = collect_trajectories(
                vla,
                demo,
                cfg.inits,
                cfg.collect_batch_size,
                cfg.warm_shift,
                cfg.seed,
                rt.rank,
                rt.world_size,
                autocast_for(cfg.dtype, rt.device),
                teacher=cfg.teacher,
                progress=rt.is_main,
            )
            traj.save(parts / f"part-{rt.rank:03d}-of-{rt.world_size:03d}.safetensors")
            rt.barrier()
            source = parts
        traj = Trajectories.load(source)
        traj.check_matches(demo, vla.n_action_tokens)
        if rt.is_main:
            log.info("teacher trajectories %s: %s", source, traj.summary())
        if cfg.collect_only:
            return source
        if resume_from is not None:
            vla = load_vla(resume_from, device=rt.device, unnorm_key=cfg.unnorm_key)
        if cfg.freeze_vision:
            n = freeze_vision(vla.model)
            log.info("freeze_vision: %d vision tower and projector parameters keep the teacher's values", n)
        if cfg.lora_rank:
            from ee_vla.training.lora import add_lora

            n = add_lora(vla.model, cfg.lora_rank)
            log.info("lora_rank %d: %d adapter parameters train, every other weight is frozen", cfg.lora_rank, n)
        dataset = DistillDataset(demo, traj, cfg.state_sampling)
        return fit(
            cfg,
            vla,
            dataset,
            distill_objective(cfg, vla),
            rt,
            resume_from,
            kind="distill",
            collate_fn=collate,
            eval_dataset=demo,
        )
    finally:
        shutdown_runtime(rt)
