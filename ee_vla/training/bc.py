"""Behaviour cloning of a VLA on demonstrations: `train(TrainConfig) -> Path`.

The model reads the image (one per camera of `TrainConfig.cameras`, e.g. `pixels` and
`wrist_pixels`), instruction (and optionally proprio) prompt and is taught, teacher forced, the
action tokens of the chunk starting at each demonstration step: next-token cross-entropy on the
k * action_dim chunk tokens only. The result is the AR teacher of CEED
distillation (and a policy in its own right under any decoder).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ee_vla.decoding.core import greedy
from ee_vla.training.config import TrainConfig
from ee_vla.training.data import (
    IGNORE,
    DemoDataset,
    GroundingDataset,
    MixedDataset,
    RepeatDataset,
    SceneGroundingDataset,
    check_against_model,
    check_cameras_recorded,
    compute_action_stats,
    compute_point_stats,
    compute_proprio_stats,
    evenly_spaced,
    instruction_corpus,
    load_pixels,
    model_dims,
    model_point_stats,
    scan_dataset,
    scene_sources,
    split_episodes,
)
from ee_vla.training.loop import Objective, fit, init_runtime, shutdown_runtime
from ee_vla.training.losses import ar_loss, window_logits
from ee_vla.training.run_dir import resolve_run_dir

log = logging.getLogger(__name__)


def corrupt_inputs(
    window: torch.Tensor, rate: float, token_range: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """`window` with each token replaced, with probability `rate`, by a uniformly random token of
    `token_range` (inclusive); the loss still asks for the true next token."""
    if rate <= 0:
        return window
    lo, hi = token_range
    hit = torch.rand(window.shape, generator=generator) < rate
    noise = torch.randint(lo, hi + 1, window.shape, generator=generator)
    return torch.where(hit.to(window.device), noise.to(window.device), window)


def bc_objective(
    action_range: tuple[int, int] | None,
    label_smoothing: float = 0.0,
    input_noise: float = 0.0,
    token_range: tuple[int, int] | None = None,
) -> Objective:
    """Teacher-forced cross-entropy on the chunk tokens (`batch["target"]`), plus token accuracy.
    `input_noise`: the fraction of teacher-forced input tokens replaced by random tokens of
    `token_range` (`TrainConfig.input_noise`)."""
    if input_noise > 0 and token_range is None:
        raise ValueError("input_noise needs token_range (the action block)")

    def objective(model, inputs: dict, batch: dict, generator: torch.Generator):
        target = torch.as_tensor(batch["target"], device=inputs["input_ids"].device)
        labelled = target != IGNORE
        # unlabelled positions (the tail of a grounding answer) only follow the answer: any token will do
        window = torch.where(labelled, target, target.new_tensor(action_range[0] if action_range else 0))
        window = corrupt_inputs(window, input_noise, token_range, generator)
        logits = window_logits(model, inputs, window[:, :-1])
        loss = ar_loss(logits, target, action_range, label_smoothing)
        metrics = {}
        with torch.no_grad():
            correct = (greedy(logits, action_range) == target) & labelled
            grounding = torch.zeros_like(labelled[:, 0])
            if batch.get("template") is not None:
                grounding = torch.tensor([t is not None for t in batch["template"]], device=target.device)
                g = labelled & grounding[:, None]
                metrics["grounding_acc"] = (correct & g).sum() / g.sum().clamp(min=1)
            a = labelled & ~grounding[:, None]
            metrics["token_acc"] = (correct & a).sum() / a.sum().clamp(min=1)
        return loss, metrics

    return objective


def start_frame_eval_hook(demo: DemoDataset, n_episodes: int, point_tokenizer=None):
    """An evaluation hook (`fit(eval_hooks=...)`) on the first frame of up to `n_episodes` episodes
    of `demo` (held-out ones): there the gripper is far from the objects, so neither the proprio
    nor an earlier action gives the answer away and only reading the image does. Metrics:
    ``eval/start_action_l1`` (mean |error| of the first action's translation, action units),
    ``eval/start_action_cos`` (cosine of predicted vs demonstrated translation) and
    ``eval/start_action_mean_l1`` (the error of always answering the mean: a policy that does not
    read the image cannot beat it). With `point_tokenizer` the grounding question is asked too:
    ``eval/start_grounding_err_m`` (mean |error| of the six task-point coordinates, metres) and
    ``eval/start_grounding_mean_err_m`` (the mean answer's)."""
    from ee_vla.models.vla import GROUNDING_TEMPLATE
    from ee_vla.training.trajectories import jacobi_states

    starts = demo.offsets[evenly_spaced(len(demo.offsets), n_episodes)]
    batch = demo.__getitems__(starts.tolist())
    truth = np.stack([demo.episodes[e].actions[0, :3] for e in batch["episode"]])
    mean_l1 = float(np.abs(truth - truth.mean(0)).mean())
    if point_tokenizer is not None:
        points = np.stack([demo.episodes[e].task_points[0] for e in batch["episode"]])
        points_mean_err = float(np.abs(points - points.mean(0)).mean())

    def decode(vla, autocast, templates=None) -> np.ndarray:
        inputs = vla.build_inputs(vla.camera_images(batch), batch["instruction"], batch["proprio"], templates)
        with torch.no_grad(), autocast():
            states, _ = jacobi_states(vla, inputs, None)
        return states[-1].cpu().numpy()

    def hook(vla, autocast) -> dict[str, float]:
        act = vla.tokens_to_actions(decode(vla, autocast))[:, 0, :3]
        norms = np.linalg.norm(act, axis=1) * np.linalg.norm(truth, axis=1)
        out = {
            "eval/start_action_l1": float(np.abs(act - truth).mean()),
            "eval/start_action_cos": float(((act * truth).sum(1) / np.maximum(norms, 1e-9)).mean()),
            "eval/start_action_mean_l1": mean_l1,
        }
        if point_tokenizer is not None:
            answer = decode(vla, autocast, [GROUNDING_TEMPLATE] * len(starts))[:, : point_tokenizer.action_dim]
            out["eval/start_grounding_err_m"] = float(np.abs(point_tokenizer.decode(answer) - points).mean())
            out["eval/start_grounding_mean_err_m"] = points_mean_err
        return out

    return hook


def _start_model(cfg: TrainConfig, resume_from: Path | None) -> Path | None:
    """The model directory the run starts from: the checkpoint when resuming, else `init_from`
    (None: a new model)."""
    return resume_from or (Path(cfg.init_from) if cfg.init_from else None)


def _check_inputs(cfg: TrainConfig, episodes, src: Path | None):
    """Check the data against the model it will train (`src`, `_start_model`, or `action_stats`)
    without loading weights; returns the ActionStats of a new model (None when one is loaded)."""
    from ee_vla.action_tokenizer import ActionStats

    if src is not None:
        a_dim, p_dim, _ = model_dims(src)
        check_against_model(episodes, a_dim, p_dim, what=f"the model in {src}")
        return None
    if cfg.action_stats:
        stats = ActionStats.load(cfg.action_stats)
        check_against_model(episodes, stats.action_dim, 0, what=f"action_stats {cfg.action_stats}")
        return stats
    stats = compute_action_stats(episodes, cfg.unnormalized_dims)
    if cfg.use_proprio:
        compute_proprio_stats(episodes)  # fails here, before any model is built, if a demonstration has no agent_pos
    return stats


def data_contract(episodes) -> dict:
    """The `contract` section of the trained model's `ee_vla.json` (`ee_vla.models.contract`): the
    env ids the demonstrations came from, their control rate (a file's `control_hz` attribute, else
    the env's own rate, `sim_envs.control_hz`) and the action space the file describes. The rate is
    None when the data does not tell it, or when its envs run at different rates."""
    import json

    from ee_vla.models.contract import recorded_contract

    env_ids = sorted({str(e.env_id or e.attrs.get("env_id") or "") for e in episodes} - {""})
    rates = {float(e.attrs["control_hz"]) for e in episodes if e.attrs.get("control_hz") is not None}
    if not rates and env_ids:
        try:
            import sim_envs

            registered = set(sim_envs.registered_env_ids())
            known = [sim_envs.control_hz(i) for i in env_ids if i in registered]
        except ImportError:  # the sim extra is not installed: the rate stays unknown
            known = []
        if len(known) == len(env_ids):
            rates = set(known) - {None}
    if len(rates) > 1:
        log.warning("the demonstrations come at several control rates %s: the model records none", sorted(rates))
    control_hz = rates.pop() if len(rates) == 1 else None
    if control_hz is None:
        log.warning("the control rate of the demonstrations is unknown: the model records none")
    described = next((e.attrs["action_space"] for e in episodes if e.attrs.get("action_space")), None)
    action_space = json.loads(described) if isinstance(described, str) else dict(described or {})
    return recorded_contract(env_ids, control_hz, action_space)


def _build_vla(cfg: TrainConfig, episodes, src: Path | None, stats):
    """The model to train: `src` (`_start_model`: the checkpoint when resuming, `init_from`), set to
    `chunk_size` and `cameras` when given (a resumed run's checkpoint has them already: the fields
    cannot change on resume), or a new `preset` model whose tokenizers fit the data."""
    from ee_vla.models.vla import PROMPT_TEMPLATE, VLA

    if src is not None:
        vla = VLA.from_pretrained(src)
        if cfg.chunk_size is not None and cfg.chunk_size != vla.chunk_size:
            log.info("fine-tuning %s from chunks of %d actions to chunks of %d", src, vla.chunk_size, cfg.chunk_size)
            vla.chunk_size = cfg.chunk_size
        if cfg.cameras is not None and cfg.cameras != vla.cameras:
            log.info("fine-tuning %s from cameras %s to cameras %s", src, list(vla.cameras), list(cfg.cameras))
            vla.cameras = cfg.cameras
        return vla
    proprio_stats = compute_proprio_stats(episodes) if cfg.use_proprio else None
    corpus = instruction_corpus(episodes, PROMPT_TEMPLATE)
    return VLA.create(
        cfg.preset,
        stats,
        cfg.chunk_size or 3,
        proprio_stats,
        corpus,
        seed=cfg.seed,
        patch_size=cfg.patch_size,
        vision_pos_init=cfg.vision_pos_init,
        vision_stem=cfg.vision_stem,
        cameras=cfg.model_cameras(None),
    )


def _grounding_mix(
    cfg: TrainConfig, episodes, demo: DemoDataset, points, use_proprio: bool, world_size: int, scenes=None
):
    """(training set, grounding dataset) for `cfg.grounding_fraction` f of grounding items, showing
    the cameras of `demo` (the model's).

    demos: f / (1 - f) questions per demonstration item, on demonstration frames. scenes (`scenes`
    = `scene_sources(episodes)`): every question a new scene; the demonstration items are repeated
    so that one epoch of the mix covers the whole run (`steps x batch_size x world_size` items) at
    the ratio f, and f = 1 trains on scenes only."""
    f, n_tok = cfg.grounding_fraction, demo.targets[0].shape[1]
    if scenes is None:
        n_items = round(len(demo) * f / (1 - f))
        grounding = GroundingDataset(episodes, points, n_tok, use_proprio, n_items, cfg.seed, cameras=demo.cameras)
        log.info("grounding co-training: %d questions beside %d demonstration items", n_items, len(demo))
        return MixedDataset([demo, grounding]), grounding
    env_ids, env_kwargs = scenes
    questions = {"all_questions": cfg.grounding_questions == "all", "cameras": demo.cameras}
    total = cfg.steps * cfg.batch_size * world_size
    if f >= 1:
        grounding = SceneGroundingDataset(env_ids, env_kwargs, points, n_tok, use_proprio, total, **questions)
        log.info(
            "grounding pre-training: %d fresh-scene items of %s (%s questions)", total, env_ids, cfg.grounding_questions
        )
        return grounding, grounding
    demos = RepeatDataset(demo, max(1, math.ceil(total * (1 - f) / len(demo))))
    n_items = max(1, round(len(demos) * f / (1 - f)))
    grounding = SceneGroundingDataset(env_ids, env_kwargs, points, n_tok, use_proprio, n_items, **questions)
    log.info(
        "grounding co-training: %d fresh-scene items of %s (%s questions) beside %d demonstration items (x%d)",
        n_items,
        env_ids,
        cfg.grounding_questions,
        len(demo),
        demos.times,
    )
    return MixedDataset([demos, grounding]), grounding


def train(cfg: TrainConfig) -> Path:
    """Behaviour-clone a VLA on `cfg.data`; returns the final model directory (out_dir/model).

    Bad input (missing/empty dataset, dims that do not fit the model, an occupied out_dir without
    `resume`) raises before any model is built.
    """
    episodes = scan_dataset(cfg.data, cfg.success_only)
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction)
    resume_from = resolve_run_dir(cfg, kind="bc")
    src = _start_model(cfg, resume_from)
    cameras = cfg.model_cameras(src)
    check_cameras_recorded(episodes, cameras)
    stats = _check_inputs(cfg, train_eps, src)
    point_stats = compute_point_stats(train_eps) if cfg.grounding_fraction > 0 else None
    if point_stats is not None and src is not None and (kept := model_point_stats(src)) is not None:
        log.info("grounding answers keep the discretisation of %s", src)
        point_stats = kept
    # the tasks and cameras of fresh grounding scenes (fails here, before training, if they cannot be rendered)
    use_scenes = point_stats is not None and cfg.grounding_source == "scenes"
    scenes = scene_sources(train_eps, cameras) if use_scenes else None
    rt = init_runtime(cfg.device, cfg.threads, cfg.num_workers)
    try:
        torch.manual_seed(cfg.seed)
        vla = _build_vla(cfg, train_eps, src, stats)
        vla.contract = data_contract(episodes)
        use_proprio = vla.proprio_tokenizer is not None
        if vla.cameras != cameras:  # _cameras read them from the same ee_vla.json
            raise RuntimeError(f"the model reads cameras {list(vla.cameras)}, expected {list(cameras)}")
        load_pixels(episodes, cameras)
        dataset = DemoDataset(train_eps, vla.action_tokenizer, vla.chunk_size, use_proprio, cameras)
        eval_dataset = (
            DemoDataset(val_eps, vla.action_tokenizer, vla.chunk_size, use_proprio, cameras) if val_eps else None
        )
        if val_eps:
            log.info("holding out %d of %d episodes for evaluation", len(val_eps), len(episodes))
        train_set, hooks, points = dataset, [], None
        if point_stats is not None:
            from ee_vla.action_tokenizer import ActionTokenizer

            points = ActionTokenizer.openvla(point_stats, vocab_size=len(vla.tokenizer))
            train_set, grounding = _grounding_mix(cfg, train_eps, dataset, points, use_proprio, rt.world_size, scenes)
            vla.meta["grounding"] = {
                "template": grounding.template,
                "stats": point_stats.to_dict(),
                "source": cfg.grounding_source,
                "questions": cfg.grounding_questions,
            }
        if eval_dataset is not None:
            hooks.append(start_frame_eval_hook(eval_dataset, cfg.eval_samples, points))
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        objective = bc_objective(
            vla.action_range if cfg.action_vocab_only else None, cfg.label_smoothing, cfg.input_noise, vla.action_range
        )
        return fit(
            cfg,
            vla,
            train_set,
            objective,
            rt,
            resume_from,
            kind="bc",
            eval_dataset=eval_dataset or dataset,
            eval_hooks=hooks,
        )
    finally:
        shutdown_runtime(rt)
