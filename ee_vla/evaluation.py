"""The one evaluation entry point: a policy x decoder(s) x Gymnasium envs -> `eval_info.json`.

    rt = RuntimeConfig(decoder="ceed", device="cuda")            # ee_vla.runtime
    cfg = EvalConfig(policy="path/to/model", env=["ee_vla/PickCube-v0"], runtime=rt, episodes=50)
    info = evaluate(cfg)                          # writes <output_dir>/eval_info.json
    evaluate(replace(cfg, compare=["ar", "jacobi", "ceed"]))   # + compare.json, compare.png

`ee-vla eval --policy PATH --env ee_vla/PickCube-v0 --decoder jacobi --episodes 50 --num-envs 8`
parses an `EvalConfig` with tyro. The output follows LeRobot's `eval_info.json` (per_episode,
aggregated) and adds what LeRobot does not report: per-call decode latency percentiles, iterations
and forward passes per chunk, tokens/s, the device and library versions (docs/evaluation.md).

How episodes run: each env id gets a Gymnasium vector env of `num_envs` copies (autoreset
disabled). Episode i of an env id is reset with seed `seed + i`, whichever copy runs it, so every
decoder and every `num_envs` sees the same initial states. Each copy holds a queue of the
`n_action_steps` first actions of its last chunk; whenever copies run out, ONE batched policy call
decodes new chunks for all of them. A copy whose episode ends is reset with the next episode's seed
(its queued actions are dropped); when no episodes are left it idles on a hold action and its
results are ignored. Any exception in an env or the policy aborts the evaluation: a crash is an
error, never a failed episode.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import tyro

from ee_vla.decoding.config import DecodeConfig
from ee_vla.runtime import DECODERS, RuntimeConfig, config_dict
from ee_vla.threads import configure_threads
from ee_vla.timing import LatencyRecorder, environment_info, summarize

if TYPE_CHECKING:
    from ee_vla.decoding.core import DecodeStats

log = logging.getLogger(__name__)

DEFAULT_ENV = "ee_vla/PickCube-v0"
EVAL_INFO_FILE = "eval_info.json"
COMPARE_FILE = "compare.json"
COMPARE_PLOT = "compare.png"


class EvalConfigError(ValueError):
    """An evaluation that cannot run as configured (bad field, unknown env id, incompatible env)."""


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    """Evaluate a policy on Gymnasium envs with one decoder, or compare several on the same seeds."""

    policy: Path
    """Model directory written by `VLA.save_pretrained` (config.json, model.safetensors, ee_vla.json, tokenizer)."""
    env: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Gymnasium env id to evaluate on; repeat the flag (or separate with commas) for several, each
    gets `episodes` episodes. Empty = ee_vla/PickCube-v0."""
    runtime: tyro.conf.OmitArgPrefixes[RuntimeConfig] = field(default_factory=RuntimeConfig)
    """How the policy runs (`ee_vla.runtime.RuntimeConfig`): `--decoder` (used when `compare` is
    empty), its options `--max-iterations`, `--tau`, `--deadline-s`, `--init`, `--window`, and
    `--n-action-steps`, `--device` (auto = cuda when available), `--dtype`, `--engine`,
    `--compile-mode`, `--threads`."""
    compare: list[str] = field(default_factory=list)
    """Decoders to compare on the same seeds, e.g. `ar,jacobi,ceed` (empty = evaluate `decoder` only).
    The decoder options apply to each decoder they are valid for."""
    episodes: int = 10
    """Episodes per env id, with seeds seed, seed+1, ..., seed+episodes-1."""
    num_envs: int = 1
    """Env copies stepped together; their observations are decoded in one batched policy call."""
    vector: Literal["sync", "async"] = "sync"
    """Gymnasium vector env: sync (one process) or async (one subprocess per copy)."""
    seed: int = 0
    """Seed of episode 0 (episode i uses seed + i); also seeds the `prompt` initial guess."""
    max_episode_steps: int | None = None
    """Override of the env spec's max_episode_steps (truncation)."""
    output_dir: Path | None = None
    """Where eval_info.json (and compare.json/png, videos) go; None = outputs/eval/<date>_<time>."""
    videos: int = 0
    """Save videos of the first N episodes of each env id (the policy's `pixels` view)."""
    video_format: Literal["gif", "mp4"] = "gif"
    """gif (Pillow, always available) or mp4 (needs imageio-ffmpeg or PyAV)."""
    warmup: int = 1
    """Untimed decode calls on the first observations of each env id before timing starts. With a
    static engine (static, graph, compiled) the warm-up also decodes once at every smaller batch
    size, so that each batch size's engine, and its prompt bucket for this env's instructions, is
    built (captured, compiled) before timing starts: one-time setup is never timed as decoding."""
    clip_actions: bool = True
    """Clip actions to the env's action-space bounds before stepping."""
    env_modules: list[str] = field(default_factory=lambda: ["sim_envs"])
    """Modules imported before the envs are made (they register env ids with Gymnasium)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keyword arguments of gymnasium.make, e.g. image_size=64."""
    mujoco_gl: Literal["egl", "osmesa", "glfw"] | None = None
    """MuJoCo rendering backend, set as MUJOCO_GL before the envs import MuJoCo. None = keep the
    variable when set, else egl (the GPU's EGL, or Mesa's software EGL on a CPU-only machine)."""
    progress: bool = True
    """Show a tqdm progress bar (stderr)."""
    print_summary: bool = True
    """Print the one-screen summary table to stdout at the end."""

    def __post_init__(self) -> None:
        self.policy = Path(self.policy)
        if isinstance(self.env, str):
            self.env = [self.env]
        self.env = [e.strip() for item in self.env for e in str(item).split(",") if e.strip()] or [DEFAULT_ENV]
        if len(set(self.env)) != len(self.env):
            raise EvalConfigError(f"EvalConfig.env lists an env id twice: {self.env}")
        if isinstance(self.compare, str):
            self.compare = [self.compare]
        self.compare = [d.strip() for item in self.compare for d in str(item).split(",") if d.strip()]
        for name in self.compare:
            if name not in DECODERS:
                raise EvalConfigError(f"EvalConfig.compare: unknown decoder {name!r}, choose from {list(DECODERS)}")
        if len(set(self.compare)) != len(self.compare):
            raise EvalConfigError(f"EvalConfig.compare lists a decoder twice: {self.compare}")
        for name in ("episodes", "num_envs"):
            if getattr(self, name) < 1:
                raise EvalConfigError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("videos", "warmup"):
            if getattr(self, name) < 0:
                raise EvalConfigError(f"EvalConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise EvalConfigError(f"EvalConfig.max_episode_steps must be >= 1 or None, got {self.max_episode_steps}")
        if self.vector not in ("sync", "async"):
            raise EvalConfigError(f"EvalConfig.vector must be sync|async, got {self.vector!r}")
        if self.video_format not in ("gif", "mp4"):
            raise EvalConfigError(f"EvalConfig.video_format must be gif|mp4, got {self.video_format!r}")
        if self.mujoco_gl not in (None, "egl", "osmesa", "glfw"):
            raise EvalConfigError(f"EvalConfig.mujoco_gl must be egl|osmesa|glfw or None, got {self.mujoco_gl!r}")
        self.runtime = self.runtime.resolved()  # device auto -> cuda|cpu; an engine that runs there
        self.decode_configs()  # validates the decoder options against every decoder

    @property
    def decoders(self) -> list[str]:
        """The decoders this evaluation runs, in order."""
        return list(self.compare) if self.compare else [self.runtime.decoder]

    def decode_config(self, name: str) -> DecodeConfig:
        """The preset `name` with the runtime's decoder options (`RuntimeConfig.decode_config`),
        seeded with `seed`: all of them for the one decoder evaluated (an option it does not take is
        an error), each where it is valid in a comparison."""
        single = not self.compare and name == self.runtime.decoder
        return self.runtime.decode_config(None if single else name, seed=self.seed)

    def decode_configs(self) -> dict[str, DecodeConfig]:
        return {name: self.decode_config(name) for name in self.decoders}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a success rate, as fractions in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes,
    which is where small robot evaluations live."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


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


def aggregate(episodes: Sequence[dict], eval_s: float) -> dict[str, Any]:
    """LeRobot's `aggregated` block over per-episode results."""
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    lo, hi = wilson_interval(k, n)
    return {
        "avg_sum_reward": float(np.mean([e["sum_reward"] for e in episodes])) if n else float("nan"),
        "avg_max_reward": float(np.mean([e["max_reward"] for e in episodes])) if n else float("nan"),
        "pc_success": float(np.mean([float(e["success"]) * 100 for e in episodes])) if n else float("nan"),
        "pc_success_ci95": [lo * 100, hi * 100],
        "n_episodes": n,
        "eval_s": eval_s,
        "eval_ep_s": eval_s / n if n else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# envs
# ---------------------------------------------------------------------------------------------
def _import_env_modules(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise EvalConfigError(f"EvalConfig.env_modules: cannot import {name!r} ({e})") from e
            raise


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

    _import_env_modules(env_modules)
    env = gymnasium.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    if expert_horizon:
        from sim_envs.experts import ExpertLabels

        env = ExpertLabels(env, expert_horizon)
    return env


def _setup_mujoco_gl(cfg: EvalConfig) -> None:
    """Choose MuJoCo's GL backend before any env imports MuJoCo (it reads MUJOCO_GL at import).
    Default: egl, which renders on a GPU and, through Mesa, on a CPU-only machine."""
    wanted = cfg.mujoco_gl or os.environ.get("MUJOCO_GL") or "egl"
    if os.environ.get("MUJOCO_GL") == wanted:
        return
    if "mujoco" in sys.modules:  # switching backends after import crashes the renderer: keep it
        log.warning("MuJoCo was already imported with MUJOCO_GL=%s; ignoring %s", os.environ.get("MUJOCO_GL"), wanted)
        return
    os.environ["MUJOCO_GL"] = wanted


def check_env_ids(cfg: EvalConfig) -> None:
    """Fail before any model is loaded if an env id is not registered or has no episode limit."""
    import gymnasium

    registry = gymnasium.registry
    for env_id in cfg.env:
        if env_id not in registry:
            close = difflib.get_close_matches(env_id, list(registry), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise EvalConfigError(
                f"EvalConfig.env: {env_id!r} is not a registered Gymnasium env id "
                f"(env_modules imported: {cfg.env_modules}){hint}"
            )
        if cfg.max_episode_steps is None and registry[env_id].max_episode_steps is None:
            raise EvalConfigError(
                f"EvalConfig.env: {env_id!r} has no max_episode_steps in its spec; set EvalConfig.max_episode_steps"
            )


def check_env_compatible(env_id: str, policy, cfg: EvalConfig, expert_horizon: int = 0) -> None:
    """Fail before any episode runs if the env's spaces do not fit the policy (or, with
    `expert_horizon`, if `ExpertLabels` cannot wrap it: its ValueError)."""
    from gymnasium import spaces

    env = _make_env(env_id, tuple(cfg.env_modules), cfg.max_episode_steps, cfg.env_kwargs, expert_horizon)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, spaces.Dict) or "pixels" not in obs_space.spaces:
        raise EvalConfigError(f"env {env_id!r}: observations must be a Dict with 'pixels', got {obs_space}")
    px = obs_space["pixels"]
    if len(px.shape) != 3 or px.shape[-1] != 3 or px.dtype != np.uint8:
        raise EvalConfigError(f"env {env_id!r}: 'pixels' must be (H, W, 3) uint8, got {px.shape} {px.dtype}")
    if not isinstance(act_space, spaces.Box) or act_space.shape != (policy.action_dim,):
        raise EvalConfigError(
            f"env {env_id!r}: action space {act_space} does not match the policy's action_dim={policy.action_dim}"
        )
    p = policy.vla.proprio_dim
    if p:
        ap = obs_space.spaces.get("agent_pos")
        if ap is None or int(np.prod(ap.shape)) != p:
            raise EvalConfigError(f"env {env_id!r}: the policy needs 'agent_pos' of {p} dims, the env gives {ap}")


def _make_vector_env(env_id: str, n: int, cfg: EvalConfig, expert_horizon: int = 0):
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    fn = functools.partial(
        _make_env, env_id, tuple(cfg.env_modules), cfg.max_episode_steps, dict(cfg.env_kwargs), expert_horizon
    )
    cls = SyncVectorEnv if cfg.vector == "sync" else AsyncVectorEnv
    return cls([fn] * n, autoreset_mode=AutoresetMode.DISABLED)


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


# ---------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------
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

    def result(self) -> dict[str, Any]:
        return {
            "episode_ix": self.episode_ix,
            "sum_reward": self.sum_reward,
            "max_reward": self.max_reward if self.steps else float("nan"),
            "success": self.success,
            "seed": self.seed,
            "steps": self.steps,
            "task_description": self.instruction,
        }


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
        self.log = DecodeLog(policy.vla.n_action_tokens, policy.chunk_size)
        self.video_paths: list[str] = []

    def run(self) -> tuple[list[dict], float]:
        cfg, policy = self.cfg, self.policy
        n = min(cfg.num_envs, cfg.episodes)
        rec = self.recorder
        envs = _make_vector_env(self.env_id, n, cfg, expert_horizon=rec.expert_horizon if rec is not None else 0)
        try:
            t0 = time.perf_counter()
            space = envs.single_action_space
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            hold = np.clip(np.zeros(space.shape), low, high).astype(space.dtype)
            running: list[_Episode | None] = [self._new_episode(i) for i in range(n)]
            next_ix = n
            queues: list[deque[np.ndarray]] = [deque() for _ in range(n)]
            previous: list[Any] = [None] * n  # last chunk's tokens per copy (warm start)
            obs, info = envs.reset(seed=[ep.seed for ep in running])
            instr = _instructions(envs, info, range(n), self.env_id)
            for s, ep in enumerate(running):
                ep.instruction = instr[s]
                self._frame(ep, obs, info, s)
            policy.reset()
            t_warm = time.perf_counter()
            if self.warmup:
                batch = self._batch(obs, list(range(n)), instr)
                for _ in range(self.warmup):
                    policy.predict_action_chunk(batch)
                pool = policy.engine_pool
                if pool is not None:  # copies finish at different steps: every batch size 1..n occurs
                    pool.max_engines = max(pool.max_engines, n)
                    for b in range(1, n):
                        policy.predict_action_chunk(self._batch(obs, list(range(b)), instr))
                policy.reset()
            warm_s = time.perf_counter() - t_warm  # untimed: not part of eval_s (episodes/min)
            done_eps: list[dict] = []
            while any(ep is not None for ep in running):
                need = [s for s, ep in enumerate(running) if ep is not None and not queues[s]]
                if need:
                    for s, chunk in self._decode(obs, need, instr, previous).items():
                        queues[s].extend(chunk[: policy.n_action_steps])
                actions = np.stack([queues[s].popleft() if ep is not None else hold for s, ep in enumerate(running)])
                if cfg.clip_actions:
                    actions = np.clip(actions, low, high)
                obs, reward, terminated, truncated, info = envs.step(actions.astype(space.dtype))
                success = _info_column(info, "is_success", n)
                done = np.asarray(terminated) | np.asarray(truncated)
                reset_seeds: list[int | None] = [None] * n
                new_slots = []
                for s, ep in enumerate(running):
                    if ep is None:
                        continue
                    if success is None or success[s] is None:
                        raise RuntimeError(f"env {self.env_id!r} did not report info['is_success'] at step {ep.steps}")
                    r = float(reward[s])
                    ep.sum_reward += r
                    ep.max_reward = max(ep.max_reward, r)
                    ep.success = ep.success or bool(success[s])
                    ep.steps += 1
                    if rec is not None:
                        rec.step(ep, actions[s], r)
                    self._frame(ep, obs, info, s)
                    if done[s]:
                        done_eps.append(ep.result())
                        if rec is not None:
                            rec.finish(ep)
                        self._save_video(ep)
                        if self.pbar is not None:
                            self.pbar.update(1)
                        queues[s].clear()
                        previous[s] = None
                        more = next_ix < cfg.episodes and (self.stop_at is None or time.perf_counter() < self.stop_at)
                        running[s] = self._new_episode(next_ix) if more else None
                        if running[s] is not None:
                            reset_seeds[s] = running[s].seed
                            new_slots.append(s)
                            next_ix += 1
                if done.any():  # idle copies are reset too (seed None) so that they never step past their end
                    obs, info = envs.reset(seed=reset_seeds, options={"reset_mask": done.copy()})
                    if new_slots:
                        instr.update(_instructions(envs, info, new_slots, self.env_id))
                        for s in new_slots:
                            running[s].instruction = instr[s]
                            self._frame(running[s], obs, info, s)
            eval_s = time.perf_counter() - t0 - warm_s
        finally:
            envs.close()
        return sorted(done_eps, key=lambda e: e["episode_ix"]), eval_s

    def _new_episode(self, ix: int) -> _Episode:
        return _Episode(ix, self.cfg.seed + ix, frames=[] if ix < self.cfg.videos else None)

    def _frame(self, ep: _Episode, obs: dict, info: dict, s: int) -> None:
        if ep.frames is not None:
            ep.frames.append(np.array(obs["pixels"][s], copy=True))
        if self.recorder is not None:
            self.recorder.observe(ep, obs, info, s)

    @staticmethod
    def _batch(obs: dict, slots: list[int], instr: dict[int, str]) -> dict[str, Any]:
        batch: dict[str, Any] = {"pixels": np.asarray(obs["pixels"])[slots], "instruction": [instr[s] for s in slots]}
        if "agent_pos" in obs:
            batch["agent_pos"] = np.asarray(obs["agent_pos"])[slots]
        return batch

    def _decode(self, obs: dict, slots: list[int], instr: dict[int, str], previous: list[Any]) -> dict[int, np.ndarray]:
        """New chunks for `slots`, in one policy call. With a warm start each copy's guess is its
        own previous chunk; a copy that starts an episode has none (a row of -1: the default guess)."""
        import torch

        policy = self.policy
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
        if not ep.frames:
            return
        import imageio.v3 as iio

        folder = self.out_dir / "videos" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.env_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"episode_{ep.episode_ix}.{self.cfg.video_format}"
        fps = 10
        if self.cfg.video_format == "gif":
            iio.imwrite(path, np.stack(ep.frames), duration=1000 / fps, loop=0)
        else:
            iio.imwrite(path, np.stack(ep.frames), fps=fps)
        self.video_paths.append(str(path))
        ep.frames = None


def _check_video_backend(cfg: EvalConfig) -> None:
    if cfg.videos and cfg.video_format == "mp4":
        if importlib.util.find_spec("imageio_ffmpeg") is None and importlib.util.find_spec("av") is None:
            raise EvalConfigError(
                "EvalConfig.video_format=mp4 needs imageio-ffmpeg or PyAV (pip install imageio[ffmpeg]); use gif"
            )


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` describes and write its results.

    Returns the eval_info dict (one decoder) or the comparison dict (`compare`: its `runs` hold each
    decoder's eval_info). All input errors are raised before the model is loaded or an episode runs.
    """
    import gymnasium  # noqa: F401  (fail early when the sim extra is missing)

    decode_cfgs = cfg.decode_configs()
    _check_video_backend(cfg)
    _setup_mujoco_gl(cfg)
    _import_env_modules(cfg.env_modules)
    check_env_ids(cfg)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else Path("outputs/eval") / time.strftime("%Y%m%d_%H%M%S")

    rt = cfg.runtime
    configure_threads(rt.threads)
    policy = rt.load_policy(cfg.policy, decode_cfgs[cfg.decoders[0]])
    for env_id in cfg.env:
        check_env_compatible(env_id, policy, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    env_info = environment_info(rt.device, rt.dtype)

    runs: dict[str, dict] = {}
    for name in cfg.decoders:
        policy.decoder = decode_cfgs[name]
        run_dir = out_dir / name if cfg.compare else out_dir
        runs[name] = _evaluate_decoder(policy, name, cfg, run_dir, env_info)
        if cfg.print_summary and not cfg.compare:
            print(format_summary(runs[name]))
    if not cfg.compare:
        return runs[cfg.decoders[0]]
    result = compare_runs(runs, cfg)
    _write_json(out_dir / COMPARE_FILE, {k: v for k, v in result.items() if k != "runs"})
    result["plot_path"] = str(plot_comparison(result, out_dir / COMPARE_PLOT))
    if cfg.print_summary:
        print(format_comparison(result))
    return result


def _evaluate_decoder(policy, name: str, cfg: EvalConfig, out_dir: Path, env_info: dict) -> dict[str, Any]:
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    dcfg = policy.decoder
    warm = dcfg.init == "warm" and dcfg.method != "ar"
    total = DecodeLog(policy.vla.n_action_tokens, policy.chunk_size)
    per_env: dict[str, dict] = {}
    all_eps: list[dict] = []
    video_paths: list[str] = []
    t0 = time.perf_counter()
    with tqdm(total=len(cfg.env) * cfg.episodes, desc=f"eval {name}", disable=not cfg.progress, unit="ep") as pbar:
        for env_id in cfg.env:
            roll = _Rollout(env_id, policy, cfg, warm, out_dir, pbar, cfg.warmup)
            episodes, eval_s = roll.run()
            if len(episodes) != cfg.episodes:  # a bookkeeping bug, never expected
                raise RuntimeError(f"{env_id}: ran {len(episodes)} episodes, expected {cfg.episodes}")
            total.merge(roll.log)
            per_env[env_id] = {
                "per_episode": episodes,
                "aggregated": aggregate(episodes, eval_s),
                "decode": roll.log.summary(),
                "video_paths": roll.video_paths,
            }
            all_eps += [{"env_id": env_id, **e} for e in episodes]
            video_paths += roll.video_paths
            log.info("%s %s: %.1f%% success", name, env_id, per_env[env_id]["aggregated"]["pc_success"])
    info = {
        "per_episode": all_eps,
        "aggregated": aggregate(all_eps, time.perf_counter() - t0),
        "per_env": per_env,
        "decode": total.summary(),
        "video_paths": video_paths,
        "decoder": name,
        "decode_config": asdict(dcfg),
        "policy": {
            "path": str(cfg.policy),
            "chunk_size": policy.chunk_size,
            "action_dim": policy.action_dim,
            "n_action_steps": policy.n_action_steps,
            "tokens_per_chunk": policy.vla.n_action_tokens,
        },
        "config": _config_dict(cfg),
        "environment": env_info,
    }
    _write_json(out_dir / EVAL_INFO_FILE, info)
    info["path"] = str(out_dir / EVAL_INFO_FILE)
    return info


def compare_runs(runs: dict[str, dict], cfg: EvalConfig) -> dict[str, Any]:
    """Side-by-side metrics of decoders run on the same seeds; speedups are relative to `ar` (or the
    first decoder when ar was not run), measured in the same process on the same device."""
    baseline = "ar" if "ar" in runs else next(iter(runs))
    base = runs[baseline]
    base_eps = [(e["env_id"], e["episode_ix"], e["sum_reward"], e["success"]) for e in base["per_episode"]]
    rows: dict[str, dict] = {}
    for name, info in runs.items():
        agg, dec = info["aggregated"], info["decode"]
        eps = [(e["env_id"], e["episode_ix"], e["sum_reward"], e["success"]) for e in info["per_episode"]]
        k = sum(bool(e["success"]) for e in info["per_episode"])
        rows[name] = {
            "pc_success": agg["pc_success"],
            "pc_success_ci95": agg["pc_success_ci95"],
            "successes": k,
            "n_episodes": agg["n_episodes"],
            "avg_sum_reward": agg["avg_sum_reward"],
            "forward_passes_per_call": dec["forward_passes_per_call"],
            "forward_passes_per_chunk": dec["forward_passes_per_chunk"],
            "iterations_per_chunk": dec["iterations_per_chunk"]["mean"],
            "tokens_per_s": dec["tokens_per_s"],
            "actions_per_s": dec["actions_per_s"],
            "latency_ms_p50": dec["latency_ms"]["p50"],
            "latency_ms_p95": dec["latency_ms"]["p95"],
            "latency_ms_p99": dec["latency_ms"]["p99"],
            "speedup_tokens_per_s": dec["tokens_per_s"] / base["decode"]["tokens_per_s"],
            "speedup_forward_passes": base["decode"]["forward_passes_per_call"] / dec["forward_passes_per_call"],
            "episodes_identical_to_baseline": sum(a == b for a, b in zip(eps, base_eps, strict=True)),
            "setup_s": dec["setup_s"],
            "eval_info": info.get("path"),
        }
    return {
        "baseline": baseline,
        "seeds": [cfg.seed + i for i in range(cfg.episodes)],
        "env": list(cfg.env),
        "decoders": rows,
        "environment": base["environment"],
        "config": _config_dict(cfg),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    """The `config` block of eval_info.json: every option under its command-line name."""
    return config_dict(cfg)


def _write_json(path: Path, data: dict) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot serialise {type(o).__name__}")

    path.write_text(json.dumps(data, indent=2, default=default))
    log.info("wrote %s", path)


def format_summary(info: dict) -> str:
    """One screen: success per env id and overall, then the decode metrics."""
    env, dec = info["environment"], info["decode"]
    lines = [
        f"ee_vla eval | decoder {info['decoder']} | policy {info['policy']['path']} | "
        f"{env['device']} ({env['device_name']}) {env['dtype']}",
        f"{'env':<32} {'episodes':>8} {'success %':>9} {'95% CI':>13} "
        f"{'avg sum_r':>10} {'avg max_r':>10} {'eval_s':>8}",
    ]
    rows = [(k, v["aggregated"]) for k, v in info["per_env"].items()] + [("overall", info["aggregated"])]
    for name, a in rows:
        lo, hi = a["pc_success_ci95"]
        lines.append(
            f"{name:<32} {a['n_episodes']:>8} {a['pc_success']:>9.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} "
            f"{a['avg_sum_reward']:>10.3f} {a['avg_max_reward']:>10.3f} {a['eval_s']:>8.1f}"
        )
    lat = dec["latency_ms"]
    lines.append(
        f"decode: {dec['calls']} calls x {dec['mean_batch_size']:.1f} chunks | latency ms p50 {lat['p50']:.1f} "
        f"p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} | iterations/chunk {dec['iterations_per_chunk']['mean']:.2f} | "
        f"forward passes/call {dec['forward_passes_per_call']:.2f} | {dec['tokens_per_s']:.0f} tokens/s | "
        f"{dec['actions_per_s']:.0f} actions/s"
    )
    if dec.get("setup_s", 0) > 0:
        lines.append(_setup_line({info["decoder"]: dec["setup_s"]}))
    lines.append(f"wrote {info.get('path', EVAL_INFO_FILE)}")
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    """The comparison table of `compare_runs` (speedups vs the baseline, measured in this run)."""
    env = result["environment"]
    b = result["baseline"]
    lines = [
        f"ee_vla eval --compare | {', '.join(result['env'])} | {len(result['seeds'])} seeds per env | "
        f"{env['device']} ({env['device_name']}) {env['dtype']}",
        f"{'decoder':<8} {'success %':>9} {'95% CI':>13} {'fwd/call':>9} {'iter/chunk':>10} {'tokens/s':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8} {f'x{b} tok/s':>11} {f'x{b} fwd':>9} {'same eps':>9}",
    ]
    for name, r in result["decoders"].items():
        lo, hi = r["pc_success_ci95"]
        lines.append(
            f"{name:<8} {r['pc_success']:>9.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} {r['forward_passes_per_call']:>9.2f} "
            f"{r['iterations_per_chunk']:>10.2f} {r['tokens_per_s']:>9.0f} {r['latency_ms_p50']:>8.1f} "
            f"{r['latency_ms_p95']:>8.1f} {r['speedup_tokens_per_s']:>10.2f}x {r['speedup_forward_passes']:>8.2f}x "
            f"{r['episodes_identical_to_baseline']:>4}/{r['n_episodes']}"
        )
    setup = {name: r["setup_s"] for name, r in result["decoders"].items() if r.get("setup_s", 0) > 0}
    if setup:
        lines.append(_setup_line(setup))
    if "plot_path" in result:
        lines.append(f"wrote {Path(result['plot_path']).with_name(COMPARE_FILE)} and {result['plot_path']}")
    return "\n".join(lines)


def _setup_line(setup_s: dict[str, float]) -> str:
    """Say how much one-time engine setup (graph captures, engine builds) fell inside timed calls."""
    per = ", ".join(f"{name} {s:.2f} s" for name, s in setup_s.items())
    return f"one-time engine setup inside timed calls, taken out of their latency: {per}"


def plot_comparison(result: dict, path: Path) -> Path:
    """Bar chart: success rate (Wilson 95% error bars) and speedups vs the baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result["decoders"])
    rows = [result["decoders"][n] for n in names]
    x = np.arange(len(names))
    fig = Figure(figsize=(4 + 1.2 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    pc = np.array([r["pc_success"] for r in rows])
    ci = np.array([r["pc_success_ci95"] for r in rows]).reshape(-1, 2)
    ax1.bar(x, pc, yerr=np.maximum(0.0, np.stack([pc - ci[:, 0], ci[:, 1] - pc])), capsize=4, color="tab:green")
    ax1.set(xticks=x, xticklabels=names, ylim=(0, 100), ylabel="success % (95% Wilson CI)", title="success")
    w = 0.38
    ax2.bar(x - w / 2, [r["speedup_tokens_per_s"] for r in rows], w, label="tokens/s")
    ax2.bar(x + w / 2, [r["speedup_forward_passes"] for r in rows], w, label="forward passes")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xticks=x, xticklabels=names, ylabel=f"speedup vs {result['baseline']}", title="speedup")
    ax2.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m ee_vla.evaluation --policy PATH --env ID [...]` (the same as `ee-vla eval`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return evaluate(tyro.cli(EvalConfig, args=argv))


if __name__ == "__main__":
    main()
