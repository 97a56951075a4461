"""How far each decoder's tokens are from AR's on the same observations.

An early exit (`tau`, an iteration cap) bounds how much tokens move between iterations or how many
iterations run, not how far the output is from what AR would decode. This measures that distance
directly: for a set of observations, each decoder decodes the same observation with the same warm
start (AR's previous chunk, as a decoder that agrees with AR would have), and its tokens are
compared with AR's, in bins.

    python -m ee_vla.decoding.agreement --policy ee_vla/checkpoints/default \\
        --env ee_vla/Reach-v0 --env ee_vla/Push-v0 --episodes 5 --seed 100000

The observations come from AR rollouts of the policy (seeds `seed ..`, the held-out seeds of
`ee-vla eval`), one per re-planning step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from ee_vla.decoding.config import DecodeConfig
from ee_vla.decoding.core import token_distance

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """One observation, the warm start a decoder that agrees with AR would have, and AR's tokens."""

    obs: dict
    warm: torch.Tensor | None
    """(1, n) AR's previous chunk in this episode; None at the episode's first call."""
    ar_tokens: torch.Tensor
    """(1, n) AR's tokens for `obs`."""
    env: str = ""
    """The env id the observation came from (results are also given per env)."""


def agreement(policy, frames: Sequence[Frame], decoders: Sequence[str]) -> dict[str, dict]:
    """Decode every frame with each decoder (a preset name or a `PRESET:field=value:...` variant,
    `DecodeConfig.from_spec`) and compare with AR.

    Returns, per decoder: ``frames``, ``tokens`` (counted), ``mean_bins`` / ``p99_bins`` /
    ``max_bins`` (|token - AR token| in bins over all tokens), ``tokens_exact`` and ``chunks_exact``
    (fractions equal to AR), ``forward_passes`` (mean per call), ``first_action_max_bins`` (the
    largest distance within the first action, the one executed first), ``action_mean_bins`` (the
    mean distance of each action of the chunk, first to last) and ``progress``: per snapshot of the
    decode loop (0: after the prefill, k: after iteration k), the mean count of ``final`` tokens
    (the final prefix) and of window tokens ``equal_to_ar`` (final or not); a call that ended
    earlier counts with its last snapshot. When the frames come from several envs, ``per_env``
    holds the same summary for each env's frames."""
    if not frames:
        raise ValueError("agreement needs at least one frame")
    lo, hi = policy.vla.action_range
    D = policy.action_dim
    envs = list(dict.fromkeys(fr.env for fr in frames))
    saved = policy.decoder
    out = {}
    try:
        for name in decoders:
            policy.decoder = DecodeConfig.from_spec(name)
            calls = []
            for fr in frames:
                policy.warm_start_tokens = fr.warm
                snaps = [
                    (int(st.n_final[0]), int((st.tokens == fr.ar_tokens).sum())) for st in policy.decode_states(fr.obs)
                ]
                d = token_distance(policy.warm_start_tokens, fr.ar_tokens, (lo, hi)).double().flatten()
                calls.append((fr.env, d, policy.last_stats.forward_passes, snaps))
            out[name] = _summary(calls, D)
            if len(envs) > 1:
                out[name]["per_env"] = {env: _summary([c for c in calls if c[0] == env], D) for env in envs}
    finally:
        policy.decoder = saved
        policy.reset()
    return out


def _summary(calls: list[tuple[str, torch.Tensor, int, list[tuple[int, int]]]], action_dim: int) -> dict:
    """The statistics of `agreement` over calls of (env, distances (n,), forward passes, snapshots)."""
    dists = torch.stack([c[1] for c in calls])  # (calls, n)
    d = dists.flatten()
    per_action = dists.view(len(calls), -1, action_dim)
    return {
        "frames": len(calls),
        "tokens": int(d.numel()),
        "mean_bins": float(d.mean()),
        "p99_bins": float(torch.quantile(d, 0.99)),
        "max_bins": float(d.max()),
        "tokens_exact": float((d == 0).double().mean()),
        "chunks_exact": float((dists == 0).all(1).double().mean()),
        "forward_passes": float(np.mean([c[2] for c in calls])),
        "first_action_max_bins": float(per_action[:, 0].max()),
        "action_mean_bins": per_action.mean((0, 2)).tolist(),
        "progress": _progress([c[3] for c in calls]),
    }


def _progress(trail: list[list[tuple[int, int]]]) -> dict[str, list[float]]:
    """Mean (final, equal to AR) token counts per snapshot over calls, each call padded with its last."""
    k = max(len(t) for t in trail)
    padded = np.array([t + [t[-1]] * (k - len(t)) for t in trail], dtype=np.float64)  # (calls, k, 2)
    return {"final": padded[:, :, 0].mean(0).tolist(), "equal_to_ar": padded[:, :, 1].mean(0).tolist()}


def collect_frames(policy, env_id: str, seeds: Sequence[int], max_frames_per_episode: int | None = None) -> list[Frame]:
    """Roll out the policy with AR on `env_id` (one episode per seed, `n_action_steps` actions per
    call, actions clipped to the action space) and record every re-planning observation."""
    import gymnasium as gym

    import sim_envs

    env = gym.make(env_id, **sim_envs.camera_kwargs(env_id, policy.vla.cameras))
    saved = policy.decoder
    policy.decoder = DecodeConfig.preset("ar")
    frames: list[Frame] = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=int(seed))
            instruction = info["task_description"]
            warm, done, n = None, False, 0
            while not done and (max_frames_per_episode is None or n < max_frames_per_episode):
                o = {**{c: obs[c] for c in policy.vla.cameras}, "instruction": instruction}
                if "agent_pos" in obs:
                    o["agent_pos"] = obs["agent_pos"]
                policy.warm_start_tokens = warm
                chunk = policy.predict_action_chunk(o)
                tokens = policy.warm_start_tokens.clone()
                frames.append(Frame(o, warm, tokens, env_id))
                warm, n = tokens, n + 1
                for a in chunk[: policy.n_action_steps]:
                    a = np.clip(a, env.action_space.low, env.action_space.high)
                    obs, _, terminated, truncated, info = env.step(a)
                    if terminated or truncated:
                        done = True
                        break
    finally:
        env.close()
        policy.decoder = saved
        policy.reset()
    return frames


@dataclass
class AgreementConfig:
    """Compare decoders' tokens with AR's on observations of AR rollouts (held-out seeds)."""

    policy: Path
    """Model directory (`VLA.save_pretrained`)."""
    env: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Gymnasium env id; repeat the flag for several. Empty = ee_vla/PickCube-v0."""
    decoders: list[str] = field(default_factory=lambda: ["jacobi", "ceed", "ceed_cap"])
    """Decoders compared with AR: preset names or variants, `PRESET:field=value:...`."""
    episodes: int = 5
    """Episodes per env id, seeds seed .. seed + episodes - 1."""
    seed: int = 100000
    """Seed of the first episode (100000: the held-out seeds of `ee-vla eval`)."""
    max_frames_per_episode: int | None = None
    """At most this many re-planning steps per episode (None: the whole episode)."""
    output: Path | None = None
    """Write the result as JSON here."""

    def __post_init__(self) -> None:
        if not self.env:
            self.env = ["ee_vla/PickCube-v0"]
        if self.episodes < 1:
            raise ValueError(f"AgreementConfig.episodes must be >= 1, got {self.episodes}")
        for name in self.decoders:
            DecodeConfig.from_spec(name)  # raises naming the known presets or the bad option


def main(cfg: AgreementConfig) -> dict:
    from ee_vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(cfg.policy, decoder="ar")
    frames: list[Frame] = []
    for env_id in cfg.env:
        frames += collect_frames(policy, env_id, range(cfg.seed, cfg.seed + cfg.episodes), cfg.max_frames_per_episode)
        log.info("%s: %d frames so far", env_id, len(frames))
    result = agreement(policy, frames, ["ar", *cfg.decoders])
    w = max(10, *(len(name) for name in result))
    print(
        f"{'decoder':{w}s} {'frames':>6s} {'mean bins':>9s} {'p99':>5s} {'max':>5s} {'tok=AR':>7s} "
        f"{'chunk=AR':>8s} {'fwd/call':>8s}"
    )
    for name, r in result.items():
        print(
            f"{name:{w}s} {r['frames']:6d} {r['mean_bins']:9.3f} {r['p99_bins']:5.0f} {r['max_bins']:5.0f} "
            f"{r['tokens_exact']:7.1%} {r['chunks_exact']:8.1%} {r['forward_passes']:8.2f}"
        )
    if any("per_env" in r for r in result.values()):
        print("\nper env: tokens / chunks equal to AR's, mean bins of each action, forward passes per call")
        for name, r in result.items():
            for env_id, e in r["per_env"].items():
                actions = " ".join(f"{b:.2f}" for b in e["action_mean_bins"])
                print(
                    f"{name:{w}s} {env_id:20s} {e['tokens_exact']:7.1%} {e['chunks_exact']:7.1%}  [{actions}]"
                    f" {e['forward_passes']:6.2f}"
                )
    n = policy.vla.n_action_tokens
    shown = 5
    print(f"\nmean tokens of {n} final / equal to AR's, after the prefill (0) and iterations 1..{shown - 1}")
    print(f"{'decoder':{w}s} " + " ".join(f"{k:>11d}" for k in range(shown)))
    for name, r in result.items():
        final, equal = r["progress"]["final"], r["progress"]["equal_to_ar"]
        last = len(final) - 1  # a decoder that ended earlier shows its last snapshot
        cells = [f"{final[min(k, last)]:5.1f}/{equal[min(k, last)]:5.1f}" for k in range(shown)]
        print(f"{name:{w}s} " + " ".join(cells))
    if cfg.output is not None:
        cfg.output.write_text(
            json.dumps(
                {
                    "config": {k: str(v) for k, v in vars(cfg).items()},
                    "cameras": list(policy.vla.cameras),
                    "result": result,
                },
                indent=2,
            )
        )
    return result


if __name__ == "__main__":
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(tyro.cli(AgreementConfig))
