"""On-policy data with expert labels (DAgger, Ross et al. 2011): `ee-vla dagger`.

Behaviour cloning learns from the expert's states only; in closed loop a policy drifts to states
the expert never visited and compounds its errors there. This runs the policy in the envs (the
evaluation's batched rollouts, `ee_vla.evaluation`) and labels every observation it visits with
the scripted expert's action for that state (`sim_envs.experts.ExpertLabels`), then writes the
episodes in the demonstrations' HDF5 schema (`sim_envs.demo_file`):

    data/demo_<i>/actions            the expert's labels (what `ee-vla train` learns)
    data/demo_<i>/executed_actions   what the policy did
    data/demo_<i>  attrs             labels="expert", success (the policy's outcome), policy, decoder

Failed episodes are kept: their labels are exactly the corrections BC lacks (`ee-vla train`'s
`success_only` skips only failed episodes whose labels are their executed actions). Train on the
union of the expert demonstrations and this file, e.g.

    ee-vla dagger --policy ee_vla/checkpoints/default --episodes 300 --out data/dagger1 --seed 200000
    ee-vla train --data data/suite data/dagger1 --init-from ee_vla/checkpoints/default ...

Each visited state also gets the expert's own plan for the policy's chunk (`chunk_labels`, stored
as `expert_chunks`): the policy executes a chunk of k actions open loop, so the training target of
a state is the k actions the expert would execute from it, not the labels of the next k visited
states (those correct deviations the policy's own chunk made). A `dagger_info.json` beside the file
records the policy's success rate during collection.

The envs render every camera the policy reads (`sim_envs.camera_kwargs`: `wrist_camera=True` for a
policy that reads `wrist_pixels`), and the file records the gripper camera's images as
`obs/wrist_pixels` whenever the envs observe it, so a two-camera policy trains on its own data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from ee_vla.evaluation.rollout import Recorder
from ee_vla.runtime import RuntimeConfig, config_dict
from ee_vla.threads import configure_threads

log = logging.getLogger(__name__)

INFO_FILE = "dagger_info.json"


class DaggerConfigError(ValueError):
    """An invalid `DaggerConfig` field, raised before the policy is loaded or an env is made."""


@dataclass
class DaggerConfig:
    """Roll a policy out in the sim and record the scripted expert's labels of the states it visits."""

    policy: Path
    """Model directory of the policy that acts (e.g. ee_vla/checkpoints/default)."""
    out: Path = Path("data/dagger")
    """Output directory; receives demos.hdf5, stats.json and dagger_info.json."""
    env: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Env ids (several after one flag, the flag repeated, or commas); empty = the ee_vla suite (Reach,
    PickCube, Push, Place). Each needs a scripted expert (the ee_vla suite, Meta-World)."""
    episodes: int = 100
    """Episodes per env id, with seeds seed, seed+1, ..."""
    seed: int = 200000
    """Seed of episode 0. Keep clear of the demonstrations' seeds (collect: 0...) and of the
    evaluation's (100000...), and use a new one per round."""
    num_envs: int = 10
    """Env copies stepped together (one batched policy call for all)."""
    vector: Literal["sync", "async"] = "async"
    """Gymnasium vector env: sync (one process) or async (one subprocess per copy)."""
    image_size: int = 128
    """Camera image side in pixels; must be what the policy was trained on."""
    wrist_camera: bool = False
    """Also record the gripper camera (`obs/wrist_pixels`: the ee_vla suite, Meta-World) when the
    acting policy does not read it: on-policy data for teaching a policy to read it (`ee-vla train
    --init-from P --cameras pixels wrist_pixels`). A policy that reads it gets it recorded anyway."""
    instructions: str = "train"
    """Instruction set of the ee_vla suite's tasks while the policy acts: train (the task's
    templates) | augmented (the templates and training paraphrases, `sim_envs.instructions.AUGMENT`) |
    augmented_negated (those and the constraint and negation phrasings of `NEGATED`),
    as `ee-vla collect --instructions`. The held-out paraphrases are refused: they never go into
    training data."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keyword arguments of gymnasium.make, as `ee-vla collect --env-kwargs`: `--env-kwargs
    observe_goal true` for a policy trained with a Meta-World task's goal in `agent_pos`. The image
    size, the gripper camera and the instruction set have their own flags, not these."""
    runtime: tyro.conf.OmitArgPrefixes[RuntimeConfig] = field(default_factory=RuntimeConfig)
    """How the policy runs while acting, with `ee-vla eval`'s options (`ee_vla.runtime.RuntimeConfig`):
    `--decoder` (the one it is deployed with), `--max-iterations`, `--tau`, ..., `--device`,
    `--dtype`, `--engine`, `--threads`."""
    max_episode_steps: int | None = None
    """Cut episodes at this many steps (None = the env's limit): a failing policy's long episodes
    otherwise make most of the on-policy samples (docs/training.md, "On-policy data")."""
    chunk_labels: bool = True
    """Also store, for every visited state, the expert's plan for the policy's chunk (its next
    chunk_size actions, simulated on a copy of the state): `ee-vla train` then learns that chunk
    for the state. False: a chunk's targets are the per-step labels of consecutive visited states,
    which correct deviations the policy's own chunk caused (ee_vla suite only; Meta-World: False)."""
    max_minutes: float | None = None
    """Time budget, split evenly between the env ids: no new episode of an env id starts after its
    share (running ones finish), so a machine held for a fixed time gets a complete file. None = run
    all episodes."""
    compression_level: int = 4
    """gzip level (0-9) of the image datasets."""
    overwrite: bool = False
    """Replace an existing demos.hdf5 in `out`."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.policy, self.out = Path(self.policy), Path(self.out)
        if isinstance(self.env, str):
            self.env = [self.env]
        self.env = [e.strip() for item in self.env for e in str(item).split(",") if e.strip()]
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise DaggerConfigError(
                f"DaggerConfig.max_episode_steps must be >= 1 or None, got {self.max_episode_steps}"
            )
        for name in ("episodes", "num_envs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise DaggerConfigError(f"DaggerConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise DaggerConfigError(f"DaggerConfig.max_minutes must be > 0 or None, got {self.max_minutes}")
        if not 0 <= self.compression_level <= 9:
            raise DaggerConfigError(f"DaggerConfig.compression_level must be in 0..9, got {self.compression_level}")
        from sim_envs.instructions import check_training_set

        try:
            check_training_set(self.instructions, "DaggerConfig.instructions", self.env)
        except ValueError as e:
            raise DaggerConfigError(str(e)) from None
        if self.wrist_camera:
            from sim_envs import check_cameras

            try:
                check_cameras(self.env, ["pixels", "wrist_pixels"])
            except ValueError as e:
                raise DaggerConfigError(f"DaggerConfig.wrist_camera: {e}") from None
        from sim_envs import check_extra_env_kwargs

        try:
            check_extra_env_kwargs(self.env_kwargs, "DaggerConfig.env_kwargs")
        except ValueError as e:
            raise DaggerConfigError(str(e)) from None
        if not (self.policy / "config.json").is_file():
            raise DaggerConfigError(f"DaggerConfig.policy: {self.policy} is not a model directory (no config.json)")
        if (self.out / "demos.hdf5").exists() and not self.overwrite:
            raise DaggerConfigError(f"{self.out / 'demos.hdf5'} exists (DaggerConfig.out); pass --overwrite")

    def eval_config(self):
        """The `EvalConfig` of the rollouts (its checks apply: decoder options; `prepare()` adds env
        ids, the policy's files, device and engine)."""
        from ee_vla.evaluation.config import EvalConfig

        return EvalConfig(
            policy=self.policy,
            env=list(self.env),
            runtime=self.runtime,
            episodes=self.episodes,
            num_envs=self.num_envs,
            vector=self.vector,
            seed=self.seed,
            env_kwargs=dict(self.env_kwargs)
            | {"image_size": self.image_size}
            | ({"instructions": self.instructions} if self.instructions != "train" else {})
            | ({"wrist_camera": True} if self.wrist_camera else {}),
            max_episode_steps=self.max_episode_steps,
            progress=self.progress,
            print_summary=False,
        )


def _slot_value(info: dict, key: str, slot: int) -> Any:
    """info[key] of one copy of a vector env (array-valued entries included), None where absent."""
    if key not in info:
        return None
    mask = info.get(f"_{key}")
    if mask is not None and not bool(np.asarray(mask)[slot]):
        return None
    return info[key][slot]


class _Labeller(Recorder):
    """The `Recorder` of `_Rollout` that turns each finished episode into a labelled `Episode`."""

    def __init__(self, env_id: str, writer, attrs: dict, horizon: int):
        self.env_id, self.writer, self.attrs = env_id, writer, attrs
        self.expert_horizon = horizon
        self.buffers: dict[int, dict[str, list]] = {}
        self.outcomes: list[bool] = []
        self.lost: list[bool] = []

    def observe(self, ep, obs: dict, info: dict, slot: int) -> None:
        label = _slot_value(info, "expert_action", slot)
        if label is None:
            raise RuntimeError(f"{self.env_id}: the env gave no info['expert_action'] (not wrapped in ExpertLabels?)")
        keys = ("pixels", "wrist", "pos", "label", "plan", "points", "act", "reward")
        buf = self.buffers.setdefault(ep.episode_ix, {k: [] for k in keys})
        buf["target_lost"] = bool(_slot_value(info, "target_lost", slot))
        buf["pixels"].append(np.array(obs["pixels"][slot], copy=True))
        if "wrist_pixels" in obs:  # the envs render the gripper camera (a policy that reads it)
            buf["wrist"].append(np.array(obs["wrist_pixels"][slot], copy=True))
        if "agent_pos" in obs:
            buf["pos"].append(np.asarray(obs["agent_pos"][slot], dtype=np.float32))
        buf["label"].append(np.asarray(label, dtype=np.float32))
        if self.expert_horizon > 1:
            buf["plan"].append(np.asarray(_slot_value(info, "expert_plan", slot), dtype=np.float32))
        points = _slot_value(info, "task_points", slot)
        if points is not None:
            buf["points"].append(np.asarray(points, dtype=np.float32))

    def step(self, ep, action: np.ndarray, reward: float) -> None:
        buf = self.buffers[ep.episode_ix]
        buf["act"].append(np.asarray(action, dtype=np.float32))
        buf["reward"].append(reward)

    def finish(self, ep) -> None:
        from sim_envs.demo_file import Episode

        buf = self.buffers.pop(ep.episode_ix)
        t = len(buf["act"])  # the last observation (after the last action) has no action
        if t == 0:
            return
        self.outcomes.append(bool(ep.success))
        self.lost.append(buf["target_lost"])
        self.writer.add(
            Episode(
                pixels=np.stack(buf["pixels"][:t]),
                wrist_pixels=np.stack(buf["wrist"][:t]) if buf["wrist"] else None,
                agent_pos=np.stack(buf["pos"][:t]) if buf["pos"] else np.zeros((t, 0), np.float32),
                actions=np.stack(buf["label"][:t]),
                instruction=ep.instruction,
                env_id=self.env_id,
                seed=ep.seed,
                success=bool(ep.success),
                rewards=np.asarray(buf["reward"], dtype=np.float32),
                task_points=np.stack(buf["points"][:t]) if len(buf["points"]) >= t else None,
                executed_actions=np.stack(buf["act"]),
                expert_chunks=np.stack(buf["plan"][:t]) if buf["plan"] else None,
            ),
            labels="expert",
            target_lost=buf["target_lost"],
            **self.attrs,
        )


def _camera_kwargs(policy: Path, env_ids: list[str]) -> dict[str, bool]:
    """The env arguments that make every env of `env_ids` render each camera the policy reads
    (`sim_envs.camera_kwargs`, its cameras read from its directory before it loads); a
    DaggerConfigError names an env that cannot render one."""
    import sim_envs
    from ee_vla.models.contract import read_contract

    cameras = read_contract(policy).cameras
    kwargs: dict[str, bool] = {}
    for env_id in env_ids:
        try:
            kwargs.update(sim_envs.camera_kwargs(env_id, cameras))
        except ValueError as e:
            raise DaggerConfigError(f"DaggerConfig.env {env_id!r}: {e}") from None
    return kwargs


def collect_on_policy(cfg: DaggerConfig) -> Path:
    """Run `cfg.policy` on `cfg.env` and write its expert-labelled episodes; returns the HDF5 path."""
    from tqdm.auto import tqdm

    from ee_vla.evaluation.config import EvalConfigError, import_env_modules, setup_mujoco_gl
    from ee_vla.evaluation.rollout import _Rollout, check_env_compatible, env_kwargs_for

    ecfg = cfg.eval_config()
    setup_mujoco_gl(ecfg)
    import_env_modules(ecfg.env_modules)
    if not cfg.env:
        from sim_envs import SUITE_ENV_IDS

        ecfg.env = list(SUITE_ENV_IDS)
    ecfg.prepare()  # env ids, the policy's files, then the device (torch)
    ecfg.env_kwargs.update(_camera_kwargs(cfg.policy, ecfg.env))  # before the policy loads

    from sim_envs.demo_file import DemoWriter

    dcfg = ecfg.decode_config(ecfg.runtime.decoder)
    configure_threads(ecfg.runtime.threads)
    policy = ecfg.runtime.load_policy(cfg.policy, dcfg)
    horizon = policy.chunk_size if cfg.chunk_labels else 1
    for env_id in ecfg.env:
        try:  # the spaces fit, and the env has an expert, able to plan when chunk labels are asked for
            check_env_compatible(env_id, policy, ecfg, expert_horizon=horizon)
        except EvalConfigError:
            raise
        except ValueError as e:  # from ExpertLabels
            hint = " (pass --no-chunk-labels)" if horizon > 1 else ""
            raise DaggerConfigError(f"DaggerConfig.env {env_id!r}: {e}{hint}") from None
    warm = dcfg.init == "warm" and dcfg.method != "ar"
    creation = config_dict(cfg)
    env_args = {e: env_kwargs_for(e, ecfg, policy) for e in ecfg.env}
    attrs = {"policy": str(cfg.policy), "decoder": cfg.runtime.decoder}
    per_env: dict[str, Any] = {}
    t0 = time.perf_counter()
    with DemoWriter(cfg.out, ecfg.env, env_args, creation, cfg.compression_level) as writer:
        writer.attrs["source"] = "dagger"
        total = len(ecfg.env) * cfg.episodes
        with tqdm(total=total, desc="dagger", disable=not cfg.progress, unit="ep") as pbar:
            for i, env_id in enumerate(ecfg.env):
                labeller = _Labeller(env_id, writer, attrs, horizon)
                roll = _Rollout(env_id, policy, ecfg, warm, cfg.out, pbar, 1 if i == 0 else 0, recorder=labeller)
                if cfg.max_minutes is not None:
                    roll.stop_at = t0 + 60 * cfg.max_minutes * (i + 1) / len(ecfg.env)
                roll.run()
                wins = sum(labeller.outcomes)
                n = len(labeller.outcomes)
                per_env[env_id] = {
                    "episodes": n,
                    "pc_success": 100.0 * wins / max(n, 1),
                    "target_lost": sum(labeller.lost),  # episodes ended by the target leaving the table
                }
                log.info("%s: policy success %.1f%% while collecting", env_id, per_env[env_id]["pc_success"])
        samples = writer.total
    info = {
        "policy": str(cfg.policy),
        "decoder": cfg.runtime.decoder,
        "seed": cfg.seed,
        "per_env": per_env,
        "pc_success": float(np.mean([v["pc_success"] for v in per_env.values()])),
        "samples": samples,
        "seconds": time.perf_counter() - t0,
        "config": creation,
    }
    (cfg.out / INFO_FILE).write_text(json.dumps(info, indent=2))
    log.info(
        "wrote %s (%d episodes, %d samples; policy success %.1f%%)",
        writer.path,
        writer.num_demos,
        samples,
        info["pc_success"],
    )
    return writer.path
