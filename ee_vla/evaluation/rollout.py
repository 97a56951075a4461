"""Batched rollouts of one policy on one env id's vector env, and what they measure.

How episodes run: each env id gets a Gymnasium vector env of `num_envs` copies (autoreset
disabled). Episode i of an env id is reset with seed `seed + i`, whichever copy runs it, so every
decoder and every `num_envs` sees the same initial states. Each copy holds a queue of the
`n_action_steps` first actions of its last chunk; whenever copies run out (or, with an
`inference_delay` of d steps, are down to their last d actions: the new chunk queues behind them,
from its action d with `chunk_start` observation), ONE batched policy call decodes new chunks for
all of them. With the policy's `temporal_ensemble`, every copy decodes a chunk at every step and
executes its `TemporalEnsemble`'s action. A copy whose episode ends is reset with the next
episode's seed (its queued actions and ensembled chunks are dropped); when no episodes are left it
idles on a hold action and its results are ignored.
Any exception in an env or the policy aborts the evaluation: a crash is an error, never a failed
episode.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ee_vla.evaluation.config import EvalConfig, EvalConfigError, import_env_modules
from ee_vla.models.contract import rate_mismatch
from ee_vla.timing import LatencyRecorder, summarize

if TYPE_CHECKING:
    from ee_vla.decoding.core import DecodeStats

log = logging.getLogger(__name__)


class DecodeLog:
    """Per-call decode measurements of a run (latency is device-synchronised, see `ee_vla.timing`)."""

    def __init__(self, n_tokens: int, chunk_size: int) -> None:
        self.n_tokens = n_tokens
        self.chunk_size = chunk_size
        self.latency = LatencyRecorder()
        self.prefill_s: list[float] = []
        self.batch_sizes: list[int] = []
        self.forward_passes: list[int] = []  # per call (shared by the batch)
        self.sample_iterations: list[int] = []  # per decoded chunk
        self.accepted: list[float] = []  # per iteration
        self.exit_reasons: Counter[str] = Counter()
        self.inexact_chunks = 0
        self.setup_s = 0.0  # one-time engine work inside timed calls, taken out of their latency
        self.setup_calls = 0

    def add(self, stats: DecodeStats, seconds: float, setup_s: float = 0.0) -> None:
        """Record one policy call that took `seconds` and produced `stats`, of which `setup_s` was
        one-time engine work in its prefill (an engine built, a prompt bucket captured): not decoding,
        so it is left out of the latency and prefill figures and reported on its own."""
        self.latency.add(seconds - setup_s)
        self.prefill_s.append(stats.prefill_s - setup_s)
        if setup_s > 0:
            self.setup_s += setup_s
            self.setup_calls += 1
        self.batch_sizes.append(stats.batch_size)
        self.forward_passes.append(stats.forward_passes)
        for row in stats.unit_final_iteration:
            self.sample_iterations.append(max(row) if row else 0)
        self.accepted.extend(stats.accepted_per_iteration)
        self.exit_reasons.update(stats.exit_reason)
        self.inexact_chunks += sum(not all(row) for row in stats.unit_exact)

    def merge(self, other: DecodeLog) -> None:
        self.latency.extend(other.latency.samples)
        self.prefill_s += other.prefill_s
        self.batch_sizes += other.batch_sizes
        self.forward_passes += other.forward_passes
        self.sample_iterations += other.sample_iterations
        self.accepted += other.accepted
        self.exit_reasons.update(other.exit_reasons)
        self.inexact_chunks += other.inexact_chunks
        self.setup_s += other.setup_s
        self.setup_calls += other.setup_calls

    def summary(self) -> dict[str, Any]:
        """The `decode` block of eval_info.json (definitions in docs/evaluation.md)."""
        chunks = int(sum(self.batch_sizes))
        total_s = self.latency.total
        it = np.asarray(self.sample_iterations, dtype=np.int64)
        hist = {str(k): int(v) for k, v in sorted(Counter(it.tolist()).items())}
        nan = float("nan")
        return {
            "calls": len(self.batch_sizes),
            "chunks": chunks,
            "tokens_per_chunk": self.n_tokens,
            "actions_per_chunk": self.chunk_size,
            "mean_batch_size": float(np.mean(self.batch_sizes)) if self.batch_sizes else nan,
            "latency_ms": self.latency.summary_ms(),
            "prefill_ms": {k: (v if k == "n" else v * 1e3) for k, v in summarize(self.prefill_s).items()},
            "iterations_per_chunk": {
                "mean": float(it.mean()) if it.size else nan,
                "max": int(it.max()) if it.size else 0,
                "histogram": hist,
            },
            "forward_passes_per_chunk": float(it.mean() + 1) if it.size else nan,
            "forward_passes_per_call": float(np.mean(self.forward_passes)) if self.forward_passes else nan,
            "accepted_tokens_per_iteration": float(np.mean(self.accepted)) if self.accepted else nan,
            "exit_reasons": dict(sorted(self.exit_reasons.items())),
            "inexact_chunks": self.inexact_chunks,
            "decode_s": total_s,
            "tokens_per_s": chunks * self.n_tokens / total_s if total_s > 0 else nan,
            "actions_per_s": chunks * self.chunk_size / total_s if total_s > 0 else nan,
            "setup_s": self.setup_s,
            "setup_calls": self.setup_calls,
        }


def _make_env(
    env_id: str,
    env_modules: tuple[str, ...],
    max_episode_steps: int | None,
    kwargs: dict[str, Any],
    expert_horizon: int = 0,
):
    """One env (module-level so that async vector envs can pickle it); `expert_horizon` k > 0 wraps
    it in `sim_envs.experts.ExpertLabels(env, k)` (info["expert_action"] at every observation, and
    the expert's k-step plan when k > 1)."""
    import gymnasium

    import_env_modules(env_modules)
    env = gymnasium.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    if expert_horizon:
        from sim_envs.experts import ExpertLabels

        env = ExpertLabels(env, expert_horizon)
    return env


def env_kwargs_for(env_id: str, cfg: EvalConfig, policy) -> dict[str, Any]:
    """The keyword arguments `env_id` is made with: `cfg.env_kwargs`, plus `image_size` = the camera
    size the policy was trained on (its contract) when the env takes that argument and it is not given,
    so the env renders what the policy expects instead of an image the policy must resize, plus the
    arguments that make the env render every camera the policy reads (`camera_env_kwargs`)."""
    from sim_envs import takes_argument

    kwargs = camera_env_kwargs(env_id, cfg, policy.vla.cameras)
    if "image_size" not in kwargs and takes_argument(env_id, "image_size"):
        kwargs["image_size"] = int(policy.vla.image_size)
    return kwargs


def typed_env_kwargs(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`sim_envs.typed_env_kwargs`: each value of a bool constructor argument of `env_id` read as a
    bool. EvalConfigError naming the env and the argument when such a value is not a true/false
    word."""
    import sim_envs

    try:
        return sim_envs.typed_env_kwargs(env_id, env_kwargs)
    except ValueError as e:
        raise EvalConfigError(f"env {env_id!r}: --env-kwargs {e}") from None


def camera_env_kwargs(env_id: str, cfg: EvalConfig, cameras: Sequence[str]) -> dict[str, Any]:
    """`cfg.env_kwargs` (`typed_env_kwargs`) with the constructor arguments that make `env_id`
    observe every camera of `cameras` (a policy's, `sim_envs.camera_kwargs`), e.g.
    `wrist_camera=True` for `wrist_pixels`. EvalConfigError naming the env and the camera when the
    env cannot render one, or when `env_kwargs` turns off a camera the policy reads
    (`--env-kwargs wrist_camera false`)."""
    import sim_envs

    kwargs = typed_env_kwargs(env_id, cfg.env_kwargs)
    try:
        needed = sim_envs.camera_kwargs(env_id, cameras)
    except ValueError as e:
        raise EvalConfigError(f"env {env_id!r} cannot render every camera the policy reads: {e}") from None
    for camera, arg in sim_envs.CAMERA_ARGUMENTS.items():
        if arg in needed and arg in kwargs and not kwargs[arg]:
            raise EvalConfigError(
                f"env {env_id!r}: --env-kwargs {arg} {cfg.env_kwargs[arg]} turns off the camera {camera!r}, which "
                f"the policy reads (its cameras: {', '.join(cameras)}); leave {arg} out, the evaluation sets it"
            )
    return {**kwargs, **needed}


def check_env_cameras(cfg: EvalConfig, cameras: Sequence[str]) -> None:
    """`camera_env_kwargs` of every env id of `cfg`: an env that cannot render a camera of `cameras`
    (a policy's, read from its directory before the model loads) is an EvalConfigError."""
    for env_id in cfg.env:
        camera_env_kwargs(env_id, cfg, cameras)


def check_env_compatible(env_id: str, policy, cfg: EvalConfig, expert_horizon: int = 0) -> None:
    """Fail before any episode runs if the env's spaces do not fit the policy (or, with
    `expert_horizon`, if `ExpertLabels` cannot wrap it: its ValueError)."""
    from gymnasium import spaces

    kwargs = env_kwargs_for(env_id, cfg, policy)
    env = _make_env(env_id, tuple(cfg.env_modules), cfg.max_episode_steps, kwargs, expert_horizon)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        fps = env.metadata.get("render_fps")
    finally:
        env.close()
    contract = policy.vla.model_contract
    if fps and (warning := rate_mismatch(contract, float(fps), f"env {env_id!r}")):
        log.warning(warning)
    cameras = policy.vla.cameras
    if not isinstance(obs_space, spaces.Dict):
        raise EvalConfigError(f"env {env_id!r}: observations must be a Dict with {cameras[0]!r}, got {obs_space}")
    for camera in cameras:
        px = obs_space.spaces.get(camera)
        if px is None:
            which = "" if cameras == ("pixels",) else f" (the policy reads cameras {', '.join(cameras)})"
            raise EvalConfigError(
                f"env {env_id!r}: observations must be a Dict with {camera!r}{which}, got {obs_space}"
            )
        if len(px.shape) != 3 or px.shape[-1] != 3 or px.dtype != np.uint8:
            raise EvalConfigError(f"env {env_id!r}: {camera!r} must be (H, W, 3) uint8, got {px.shape} {px.dtype}")
    if not isinstance(act_space, spaces.Box) or act_space.shape != (policy.action_dim,):
        raise EvalConfigError(
            f"env {env_id!r}: action space {act_space} does not match the policy's action_dim={policy.action_dim}"
        )
    p = policy.vla.proprio_dim
    if p:
        ap = obs_space.spaces.get("agent_pos")
        if ap is None or int(np.prod(ap.shape)) != p:
            import sim_envs

            hint = ""
            if sim_envs.takes_argument(env_id, "observe_goal") and "observe_goal" not in cfg.env_kwargs:
                hint = " (a policy trained with the goal in agent_pos needs `--env-kwargs observe_goal true`)"
            raise EvalConfigError(f"env {env_id!r}: the policy needs 'agent_pos' of {p} dims, the env gives {ap}{hint}")


def _make_vector_env(env_id: str, n: int, cfg: EvalConfig, kwargs: dict[str, Any], expert_horizon: int = 0):
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    fn = functools.partial(_make_env, env_id, tuple(cfg.env_modules), cfg.max_episode_steps, kwargs, expert_horizon)
    cls = SyncVectorEnv if cfg.vector == "sync" else AsyncVectorEnv
    return cls([fn] * n, autoreset_mode=AutoresetMode.DISABLED)


def video_frame(images: Sequence[np.ndarray]) -> np.ndarray:
    """One video frame of what the policy saw: its cameras' (H, W, 3) images side by side, in the
    order it reads them, each scaled (nearest pixel) to the tallest one's height; a copy of the
    image for a one-camera policy."""
    if len(images) == 1:
        return np.array(images[0], copy=True)
    h = max(im.shape[0] for im in images)
    parts = []
    for im in images:
        if im.shape[0] != h:
            w = max(1, round(im.shape[1] * h / im.shape[0]))
            rows = np.arange(h) * im.shape[0] // h
            cols = np.arange(w) * im.shape[1] // w
            im = im[rows][:, cols]
        parts.append(im)
    return np.concatenate(parts, axis=1)


def _info_column(info: dict, key: str, n: int) -> np.ndarray | None:
    """info[key] of a vector env as an (n,) object array, None where a copy did not report it."""
    if key not in info:
        return None
    vals = np.asarray(info[key], dtype=object).reshape(n)
    mask = np.asarray(info.get(f"_{key}", np.ones(n, dtype=bool)), dtype=bool)
    return np.where(mask, vals, None)


def _instructions(envs, info: dict, slots: Sequence[int], env_id: str) -> dict[int, str]:
    col = _info_column(info, "task_description", envs.num_envs)
    out: dict[int, str] = {}
    fallback = None
    for s in slots:
        text = None if col is None else col[s]
        if text is None:
            fallback = fallback or envs.get_attr("task_description")
            text = fallback[s]
        if not isinstance(text, str) or not text.strip():
            raise EvalConfigError(f"env {env_id!r} gives no task_description (instruction), got {text!r}")
        out[s] = text
    return out


@dataclass
class _Episode:
    episode_ix: int
    seed: int
    instruction: str = ""
    sum_reward: float = 0.0
    max_reward: float = -math.inf
    success: bool = False
    steps: int = 0
    frames: list[np.ndarray] | None = None
    outcome: str | None = None
    final_info: dict[str, float] = field(default_factory=dict)
    video: str | None = None

    def result(self) -> dict[str, Any]:
        out = {
            "episode_ix": self.episode_ix,
            "sum_reward": self.sum_reward,
            "max_reward": self.max_reward if self.steps else float("nan"),
            "success": self.success,
            "seed": self.seed,
            "steps": self.steps,
            "task_description": self.instruction,
            "final_info": self.final_info,
        }
        if self.outcome is not None:
            out["outcome"] = self.outcome
        if self.video is not None:
            out["video"] = self.video
        return out


def _final_info(info: dict, slot: int, n: int) -> tuple[str | None, dict[str, float]]:
    """Copy `slot`'s `info["outcome"]` (a string, where the env reports one) and its numeric
    scalar entries (bools as 0/1) out of a vector env's info: what the episode's last step said."""
    outcome = None
    numbers: dict[str, float] = {}
    for key, column in info.items():
        if key.startswith("_") or key == "is_success" or np.shape(column) != (n,):  # arrays per copy: not scalars
            continue
        value = _info_column(info, key, n)[slot]
        if key == "outcome":
            outcome = value if isinstance(value, str) else None
        elif isinstance(value, bool | np.bool_ | int | np.integer | float | np.floating):
            if math.isfinite(float(value)):
                numbers[key] = float(value)
    return outcome, numbers


@dataclass
class _Copies:
    """The state of a vector env's copies during `_Rollout.run` (index s = copy s)."""

    running: list[_Episode | None]
    """The episode each copy runs; None once no episode is left for it (it idles on `hold`)."""
    queues: list[deque[np.ndarray]]
    """Actions of each copy's last chunk not executed yet."""
    ensembles: list[Any]
    """Each copy's `TemporalEnsemble` (the policy's `temporal_ensemble`), or None for each."""
    previous: list[Any]
    """Each copy's last chunk's tokens (its warm start), None at an episode's start."""
    next_ix: int
    """Index of the next episode to start."""
    space: Any
    low: np.ndarray
    high: np.ndarray
    hold: np.ndarray
    """The action of an idle copy (zeros, clipped to the action space)."""
    obs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    instr: dict[int, str] = field(default_factory=dict)
    done: list[dict] = field(default_factory=list)
    """Results of the finished episodes."""


class Recorder:
    """What `_Rollout` tells an observer of its episodes (on-policy data collection,
    `ee_vla.training.dagger`), in order: each observation with its info, then the action executed
    after it and its reward, ..., the last observation, and the episode's end."""

    expert_horizon = 0
    """k > 0: the envs are wrapped in `sim_envs.experts.ExpertLabels(env, k)`; 0: not wrapped."""

    def observe(self, ep: _Episode, obs: dict, info: dict, slot: int) -> None: ...

    def step(self, ep: _Episode, action: np.ndarray, reward: float) -> None: ...

    def finish(self, ep: _Episode) -> None: ...


class _Rollout:
    """Runs `cfg.episodes` episodes of one env id with one policy/decoder (see module docstring)."""

    def __init__(
        self,
        env_id: str,
        policy,
        cfg: EvalConfig,
        warm: bool,
        out_dir: Path,
        pbar,
        warmup: int,
        recorder: Recorder | None = None,
    ):
        self.env_id, self.policy, self.cfg = env_id, policy, cfg
        self.warm, self.out_dir, self.pbar, self.warmup = warm, out_dir, pbar, warmup
        self.recorder = recorder
        self.stop_at: float | None = None
        """perf_counter() time after which no new episode starts (running ones finish); None = run all."""
        if cfg.inference_delay >= policy.n_action_steps:
            raise EvalConfigError(
                f"EvalConfig.inference_delay={cfg.inference_delay} must be below the actions executed per chunk "
                f"(n_action_steps={policy.n_action_steps}): the next chunk is decoded while the last "
                f"inference_delay actions of the current one run"
            )
        self._skips_stale_actions = cfg.inference_delay > 0 and cfg.chunk_start == "observation"
        """A chunk decoded while another runs starts at the action planned for its arrival."""
        self.log = DecodeLog(policy.vla.n_action_tokens, policy.chunk_size)
        self.video_paths: list[str] = []
        self.failure_videos_left = cfg.failure_videos

    def run(self) -> tuple[list[dict], float]:
        """Run the episodes; returns their results (by episode index) and the seconds they took
        (the untimed warm-up left out)."""
        rec = self.recorder
        n = min(self.cfg.num_envs, self.cfg.episodes)
        envs = _make_vector_env(
            self.env_id,
            n,
            self.cfg,
            env_kwargs_for(self.env_id, self.cfg, self.policy),
            expert_horizon=rec.expert_horizon if rec is not None else 0,
        )
        try:
            t0 = time.perf_counter()
            c = self._start(envs, n)
            warm_s = self._warm_up(c)  # untimed: not part of eval_s (episodes/min)
            while any(ep is not None for ep in c.running):
                self._step(envs, c)
            eval_s = time.perf_counter() - t0 - warm_s
        finally:
            envs.close()
        return sorted(c.done, key=lambda e: e["episode_ix"]), eval_s

    def _start(self, envs, n: int) -> _Copies:
        """Reset the n copies with the first n episodes' seeds."""
        space = envs.single_action_space
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        c = _Copies(
            running=[self._new_episode(i) for i in range(n)],
            queues=[deque() for _ in range(n)],
            ensembles=[self.policy.new_ensemble() for _ in range(n)],
            previous=[None] * n,
            next_ix=n,
            space=space,
            low=low,
            high=high,
            hold=np.clip(np.zeros(space.shape), low, high).astype(space.dtype),
        )
        c.obs, c.info = envs.reset(seed=[ep.seed for ep in c.running])
        c.instr = _instructions(envs, c.info, range(n), self.env_id)
        for s, ep in enumerate(c.running):
            ep.instruction = c.instr[s]
            self._frame(ep, c.obs, c.info, s)
        self.policy.reset()
        return c

    def _warm_up(self, c: _Copies) -> float:
        """`warmup` untimed decodes of the first observations; with a static engine also one at
        every smaller batch size (copies finish at different steps: every batch size 1..n occurs),
        so that no engine is built inside a timed call. With a warm start whose guess runs in the
        prefill (another prefill shape), each size is decoded cold and then warm. Returns the
        seconds it took."""
        policy, n = self.policy, len(c.running)
        t = time.perf_counter()
        if self.warmup:
            reps = 2 if self.warm and policy.decoder.guess_in_prefill else 1
            batch = self._batch(c.obs, list(range(n)), c.instr)
            policy.warm_start_tokens = None
            for _ in range(max(self.warmup, reps)):
                policy.predict_action_chunk(batch)
            pool = policy.engine_pool
            if pool is not None:
                pool.max_engines = max(pool.max_engines, n)
                for b in range(1, n):
                    policy.warm_start_tokens = None
                    for _ in range(reps):  # cold, then warm from the first
                        policy.predict_action_chunk(self._batch(c.obs, list(range(b)), c.instr))
            policy.reset()
        return time.perf_counter() - t

    def _step(self, envs, c: _Copies) -> None:
        """One env step of every copy: new chunks for the copies whose queue ran out, or is down to
        `inference_delay` actions (one policy call; a new chunk queues behind those), then each
        running episode's bookkeeping, and resets of the copies that finished."""
        delay, n = self.cfg.inference_delay, self.policy.n_action_steps
        need = [s for s, ep in enumerate(c.running) if ep is not None and len(c.queues[s]) <= delay]
        if need:
            for s, chunk in self._decode(c.obs, need, c.instr, c.previous).items():
                if c.ensembles[s] is not None:  # a chunk every step: the ensemble's action
                    c.queues[s].append(c.ensembles[s].add(chunk))
                    continue
                # a chunk decoded while another runs arrives `delay` steps after its observation
                first = delay if self._skips_stale_actions and c.queues[s] else 0
                c.queues[s].extend(chunk[first:n])
        actions = np.stack([c.queues[s].popleft() if ep is not None else c.hold for s, ep in enumerate(c.running)])
        if self.cfg.clip_actions:
            actions = np.clip(actions, c.low, c.high)
        c.obs, reward, terminated, truncated, c.info = envs.step(actions.astype(c.space.dtype))
        done = np.asarray(terminated) | np.asarray(truncated)
        success = _info_column(c.info, "is_success", len(c.running))
        new_slots: list[int] = []
        for s, ep in enumerate(c.running):
            if ep is None:
                continue
            if success is None or success[s] is None:
                raise RuntimeError(f"env {self.env_id!r} did not report info['is_success'] at step {ep.steps}")
            self._record(ep, s, c, actions[s], float(reward[s]), bool(success[s]))
            if done[s]:
                ep.outcome, ep.final_info = _final_info(c.info, s, len(c.running))
                if self._next_episode(c, s):
                    new_slots.append(s)
        if done.any():
            self._reset_finished(envs, c, done, new_slots)

    def _record(self, ep: _Episode, s: int, c: _Copies, action: np.ndarray, reward: float, success: bool) -> None:
        """Add one step (its action, reward, success and the observation after it) to `ep`."""
        ep.sum_reward += reward
        ep.max_reward = max(ep.max_reward, reward)
        ep.success = ep.success or success
        ep.steps += 1
        if self.recorder is not None:
            self.recorder.step(ep, action, reward)
        self._frame(ep, c.obs, c.info, s)

    def _next_episode(self, c: _Copies, s: int) -> bool:
        """Close copy s's finished episode and give the copy the next one, if any is left (and
        `stop_at` has not passed); whether it got one."""
        ep = c.running[s]
        self._save_video(ep)
        c.done.append(ep.result())
        if self.recorder is not None:
            self.recorder.finish(ep)
        if self.pbar is not None:
            self.pbar.update(1)
        c.queues[s].clear()
        if c.ensembles[s] is not None:
            c.ensembles[s].reset()
        c.previous[s] = None
        more = c.next_ix < self.cfg.episodes and (self.stop_at is None or time.perf_counter() < self.stop_at)
        c.running[s] = self._new_episode(c.next_ix) if more else None
        if c.running[s] is None:
            return False
        c.next_ix += 1
        return True

    def _reset_finished(self, envs, c: _Copies, done: np.ndarray, new_slots: list[int]) -> None:
        """Reset the copies that finished: those with a new episode with its seed, idle ones too
        (seed None) so that they never step past their end."""
        seeds = [c.running[s].seed if s in new_slots else None for s in range(len(c.running))]
        c.obs, c.info = envs.reset(seed=seeds, options={"reset_mask": done.copy()})
        if new_slots:
            c.instr.update(_instructions(envs, c.info, new_slots, self.env_id))
            for s in new_slots:
                c.running[s].instruction = c.instr[s]
                self._frame(c.running[s], c.obs, c.info, s)

    def _new_episode(self, ix: int) -> _Episode:
        record = ix < self.cfg.videos or self.failure_videos_left > 0  # a failure is known at the end only
        return _Episode(ix, self.cfg.seed + ix, frames=[] if record else None)

    def _frame(self, ep: _Episode, obs: dict, info: dict, s: int) -> None:
        if ep.frames is not None:
            ep.frames.append(video_frame([obs[c][s] for c in self.policy.vla.cameras]))
        if self.recorder is not None:
            self.recorder.observe(ep, obs, info, s)

    def _batch(self, obs: dict, slots: list[int], instr: dict[int, str]) -> dict[str, Any]:
        """The policy's observation of copies `slots`: the image of every camera it reads, the
        instructions and, where the env gives it, `agent_pos`."""
        batch: dict[str, Any] = {c: np.asarray(obs[c])[slots] for c in self.policy.vla.cameras}
        batch["instruction"] = [instr[s] for s in slots]
        if "agent_pos" in obs:
            batch["agent_pos"] = np.asarray(obs["agent_pos"])[slots]
        return batch

    def _decode(self, obs: dict, slots: list[int], instr: dict[int, str], previous: list[Any]) -> dict[int, np.ndarray]:
        """New chunks for `slots`, in one policy call. With a warm start each copy's guess is its
        own previous chunk; a copy that starts an episode has none (a row of -1: the default guess)."""
        import torch

        policy = self.policy
        if self._skips_stale_actions:  # actions run between two decodes (every copy's chunk but its first)
            policy.warm_start_shift = policy.n_action_steps - self.cfg.inference_delay
        if self.warm:
            have = [previous[s] for s in slots if previous[s] is not None]
            if have:
                none = torch.full_like(have[0], -1)
                rows = [previous[s] if previous[s] is not None else none for s in slots]
                policy.warm_start_tokens = torch.stack(rows)
            else:
                policy.warm_start_tokens = None
        pool = policy.engine_pool
        setup0 = pool.setup_s if pool is not None else 0.0
        rec = LatencyRecorder()
        with rec.time(self.cfg.runtime.device):
            chunks = policy.predict_action_chunk(self._batch(obs, slots, instr))
        self.log.add(policy.last_stats, rec.samples[0], pool.setup_s - setup0 if pool is not None else 0.0)
        out: dict[int, np.ndarray] = {}
        for i, s in enumerate(slots):
            out[s] = chunks[i]
            if self.warm:
                previous[s] = policy.warm_start_tokens[i].clone()
        return out

    def _save_video(self, ep: _Episode) -> None:
        """Write `ep`'s frames when it is one of the first `videos` episodes, or a failure while
        `failure_videos` are left; drop them either way."""
        frames, ep.frames = ep.frames, None
        if not frames:
            return
        failure = not ep.success and self.failure_videos_left > 0
        if ep.episode_ix >= self.cfg.videos and not failure:
            return
        if failure:
            self.failure_videos_left -= 1
        import imageio.v3 as iio

        folder = self.out_dir / "videos" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.env_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"episode_{ep.episode_ix}.{self.cfg.video_format}"
        fps = 10
        if self.cfg.video_format == "gif":
            iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
        else:
            iio.imwrite(path, np.stack(frames), fps=fps)
        self.video_paths.append(str(path))
        ep.video = str(path)
