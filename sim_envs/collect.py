"""Record scripted-expert demonstrations to a robomimic-style HDF5 file.

`collect(CollectConfig(...))` runs the expert of each env id until it has `episodes` successful
episodes per env id (failed attempts are skipped, counted and logged, never stored), writes
`<out>/demos.hdf5` plus `<out>/stats.json` (the action statistics the action tokenizer needs), and
returns the HDF5 path. With `explore_steps` it records the expert's labels of randomly explored
states of fresh scenes instead (`CollectConfig.explore_steps`; from the reset, or with
`explore_lead` from where the expert stopped after a few steps). Every attempt is saved as it
completes (`<out>/demos.hdf5.parts/`, one file per attempt): a collection that is killed keeps its
episodes, and rerunning the same command continues from them with the same seeds, so its file
holds what an uninterrupted run's holds.
The file's schema, its writer and its reader are `sim_envs.demo_file` (docs/sim_envs.md).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.util
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sim_envs.demo_file import DATA_FILE, STATS_FILE, DemoWriter, Episode, write_demo
from sim_envs.instructions import check_training_set

logger = logging.getLogger(__name__)

PARTS_DIR = DATA_FILE + ".parts"
"""Attempts of an unfinished collection, one file each (removed once demos.hdf5 is written)."""


@dataclass
class CollectConfig:
    """What to record and where (`ee-vla collect` exposes these fields as flags)."""

    env: tuple[str, ...] = ("ee_vla/PickCube-v0",)
    """Gymnasium ids to record, e.g. ee_vla/PickCube-v0 or ee_vla/MetaWorld-reach-v0 (on the command
    line: several after one flag, the flag repeated, or commas)."""
    episodes: int = 100
    """Successful demonstrations to record per env id (with `explore_steps`: explored scenes)."""
    out: Path = Path("data/demos")
    """Output directory; receives demos.hdf5 and stats.json."""
    seed: int = 0
    """Seed of the first attempt of each env id; attempt i is reset with seed + i."""
    image_size: int = 128
    """Side of the square camera images in pixels."""
    wrist_camera: bool = False
    """Also record the gripper camera (the ee_vla suite, Meta-World) as obs/wrist_pixels, the images
    a policy trained with `ee-vla train --cameras pixels wrist_pixels` reads."""
    instructions: str = "train"
    """Instruction set of the ee_vla suite's tasks (the envs' `instructions`): train (the task's
    templates) | augmented (the templates and training paraphrases, `sim_envs.instructions.AUGMENT`) |
    augmented_negated (those and the constraint and negation phrasings of `NEGATED`).
    The held-out paraphrases are for evaluation only and are refused here."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keyword arguments of gymnasium.make for every env id, as name value pairs:
    `--env-kwargs observe_goal true` (a Meta-World task's goal in `agent_pos`). The image size, the
    gripper camera and the instruction set have their own fields, not these."""
    num_workers: int = 1
    """Processes that run episodes in parallel (1 = in this process)."""
    max_attempts_factor: float = 2.0
    """Give up (error) after episodes * max_attempts_factor + 10 attempts of one env id."""
    compression_level: int = 4
    """gzip level (0-9) of the image datasets."""
    overwrite: bool = False
    """Replace an existing demos.hdf5 in `out`, and discard the saved attempts of an unfinished
    collection with other image settings (an unfinished collection with the same settings is
    always continued: its episodes are the ones this run would record)."""
    explore_steps: int = 0
    """0: record the expert's demonstrations. K > 0 (ee_vla suite): record the expert's labels of
    explored states instead. Each episode is a fresh scene, reset with its seed, from which the
    gripper takes a random number (0 to K-1) of random steps (`explore_action`); every state on the
    way, the reset's included, is stored with the expert's action as its label, the random step as
    `executed_actions` and the expert's plan from that state (`explore_plan` actions) as
    `expert_chunks`, the chunk `ee-vla train` learns for it. Nothing fails: `episodes` counts
    scenes, and the episodes carry labels="expert" so that training keeps them. Many scenes,
    cheap to label, teach a policy how a scene maps to its first moves (docs/training.md, "Fresh
    scenes")."""
    explore_plan: int = 8
    """With `explore_steps`: actions of the expert's plan stored per state; at least the chunk size
    of the policy that trains on the data."""
    explore_lead: int = 0
    """With `explore_steps`: 0, the random steps start at the reset. L > 0: the expert first acts for
    a random number (0 to L-1) of steps, which are not recorded, and the random steps start where it
    stopped: explored states along the whole task (a push under way, an object in the gripper), not
    only near the start."""

    def __post_init__(self) -> None:
        import sim_envs

        if isinstance(self.env, str):
            self.env = (self.env,)
        self.env = tuple(self.env)
        self.out = Path(self.out)
        if not self.env:
            raise ValueError("CollectConfig.env is empty: name at least one env id")
        known = sim_envs.registered_env_ids()
        for env_id in self.env:
            if env_id not in known:
                raise ValueError(f"CollectConfig.env: unknown env id {env_id!r}; registered: {known}")
        if len(set(self.env)) != len(self.env):
            raise ValueError(f"CollectConfig.env lists an id twice: {list(self.env)}")
        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise ValueError(f"CollectConfig.episodes must be an int >= 1, got {self.episodes!r}")
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024:
            raise ValueError(f"CollectConfig.image_size must be an int in [16, 1024], got {self.image_size!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"CollectConfig.num_workers must be an int >= 1, got {self.num_workers!r}")
        if not self.max_attempts_factor >= 1.0:
            raise ValueError(f"CollectConfig.max_attempts_factor must be >= 1, got {self.max_attempts_factor!r}")
        if not 0 <= self.compression_level <= 9:
            raise ValueError(f"CollectConfig.compression_level must be in 0..9, got {self.compression_level!r}")
        check_training_set(self.instructions, "CollectConfig.instructions", self.env)
        self.env_kwargs = self._typed_env_kwargs()
        if not isinstance(self.explore_steps, int) or self.explore_steps < 0:
            raise ValueError(f"CollectConfig.explore_steps must be an int >= 0, got {self.explore_steps!r}")
        if not isinstance(self.explore_plan, int) or self.explore_plan < 1:
            raise ValueError(f"CollectConfig.explore_plan must be an int >= 1, got {self.explore_plan!r}")
        if not isinstance(self.explore_lead, int) or self.explore_lead < 0:
            raise ValueError(f"CollectConfig.explore_lead must be an int >= 0, got {self.explore_lead!r}")
        if self.explore_lead and not self.explore_steps:
            raise ValueError("CollectConfig.explore_lead needs explore_steps > 0 (it delays the random steps)")
        if self.explore_steps:
            other = [e for e in self.env if e not in sim_envs.SUITE_ENV_IDS]
            if other:
                raise ValueError(
                    f"CollectConfig.explore_steps: the experts of {other} cannot plan from a copy of a state; "
                    f"exploration is for the ee_vla suite {list(sim_envs.SUITE_ENV_IDS)}"
                )
        if self.wrist_camera:
            from sim_envs import check_cameras

            try:
                check_cameras(self.env, ["pixels", "wrist_pixels"])
            except ValueError as e:
                raise ValueError(f"CollectConfig.wrist_camera: {e}") from None

    def _typed_env_kwargs(self) -> dict:
        """`env_kwargs` checked against every env id (`sim_envs.typed_env_kwargs`): a key that has
        its own field, or that an env does not take, is refused; a bool argument given as a word is
        read as a bool."""
        import sim_envs

        kwargs = dict(self.env_kwargs)
        sim_envs.check_extra_env_kwargs(kwargs, "CollectConfig.env_kwargs")
        for env_id in self.env:
            try:
                kwargs = sim_envs.typed_env_kwargs(env_id, kwargs)
            except ValueError as e:
                raise ValueError(f"CollectConfig.env_kwargs, {env_id}: {e}") from None
        return kwargs

    def make_kwargs(self) -> dict:
        """Keyword arguments passed to `gymnasium.make` for every env id."""
        kw: dict = {**self.env_kwargs, "image_size": self.image_size}
        if self.wrist_camera:
            kw["wrist_camera"] = True
        if self.instructions != "train":
            kw["instructions"] = self.instructions
        return kw


# ---- recording ------------------------------------------------------------------------------
_WORKER_ENVS: dict = {}

EXPLORE_XY = 0.7
"""`explore_action`: largest random translation in the table plane, as a fraction of a full step."""
EXPLORE_Z = 0.2
"""`explore_action`: largest random vertical step, as a fraction of a full step."""
EXPLORE_LOW_Z = 0.10
"""`explore_action`: below this TCP height (m) a random step does not go down (clear of the objects)."""


def explore_action(rng: np.random.Generator, tcp_z: float, expert_action: np.ndarray) -> np.ndarray:
    """One random step of `CollectConfig.explore_steps` (ee_vla suite actions): a translation of up
    to `EXPLORE_XY` of a full step in x and y and `EXPLORE_Z` in z (upwards only below
    `EXPLORE_LOW_Z`), a yaw rotation of up to a full step, no roll or pitch, the expert's gripper."""
    from sim_envs.common import ACTION_NAMES

    a = np.zeros(len(ACTION_NAMES), dtype=np.float32)
    a[:2] = rng.uniform(-EXPLORE_XY, EXPLORE_XY, 2)
    a[2] = rng.uniform(0.0 if tcp_z < EXPLORE_LOW_Z else -EXPLORE_Z, EXPLORE_Z)
    a[ACTION_NAMES.index("dyaw")] = rng.uniform(-1.0, 1.0)
    a[-1] = expert_action[-1]
    return a


def _kept(ep: Episode) -> bool:
    """Whether an attempt goes into the file: a successful demonstration, or explored states."""
    return bool(ep.success) or ep.executed_actions is not None


def _worker_env(env_id: str, env_kwargs: dict, horizon: int = 0):
    """The process's env of `env_id` and its expert (`horizon` > 0: wrapped in `ExpertLabels` with
    that plan length, whose expert it is), made once per process."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids in worker processes)
    from sim_envs.experts import ExpertLabels, make_expert

    key = (env_id, horizon)
    if key not in _WORKER_ENVS:
        env = gym.make(env_id, **env_kwargs)
        if horizon:
            env = ExpertLabels(env, horizon=horizon)
        _WORKER_ENVS[key] = (env, env.expert if horizon else make_expert(env))
    return _WORKER_ENVS[key]


def _episode(
    env_id: str, seed: int, observations: list[dict], actions: list, rewards: list, points: list, info: dict, **extra
) -> Episode:
    """The Episode of an attempt: one observation per action (its images, wrist images when the env
    has them, proprio), the task points where recorded; `info` is the last step's; `extra` are
    further Episode fields (success, on-policy arrays)."""
    wrist = [o["wrist_pixels"] for o in observations if "wrist_pixels" in o]
    return Episode(
        pixels=np.stack([o["pixels"] for o in observations]),
        agent_pos=np.stack([o["agent_pos"] for o in observations]).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        instruction=str(info["task_description"]),
        env_id=env_id,
        seed=seed,
        rewards=np.asarray(rewards, dtype=np.float32),
        wrist_pixels=np.stack(wrist) if wrist else None,
        task_points=np.stack(points).astype(np.float32) if points else None,
        **extra,
    )


def _explore(env_id: str, env_kwargs: dict, seed: int, steps: int, plan: int, lead: int = 0) -> Episode:
    """The explored states of one fresh scene (`CollectConfig.explore_steps`), labelled by the expert;
    with `lead` (`CollectConfig.explore_lead`) the expert first takes 0 to lead-1 unrecorded steps."""
    env, _ = _worker_env(env_id, env_kwargs, plan)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    n = int(rng.integers(0, steps))
    for _ in range(int(rng.integers(0, lead)) if lead else 0):
        obs, _, terminated, truncated, info = env.step(info["expert_action"])
        if terminated or truncated:  # the expert finished the task: this last state alone is recorded
            n = 0
            break
    observations, labels, executed, plans, points, rewards = [], [], [], [], [], []
    for t in range(n + 1):
        observations.append(obs)
        labels.append(info["expert_action"])
        plans.append(info["expert_plan"])
        if "task_points" in info:
            points.append(info["task_points"])
        action = explore_action(rng, float(obs["agent_pos"][2]), info["expert_action"])
        executed.append(action)
        if t < n:
            obs, reward, _, _, info = env.step(action)
            rewards.append(reward)
    rewards.append(0.0)  # the last state's step is never taken
    return _episode(
        env_id,
        seed,
        observations,
        labels,
        rewards,
        points,
        info,
        success=bool(info.get("is_success", False)),
        executed_actions=np.stack(executed),
        expert_chunks=np.stack(plans).astype(np.float32),
    )


def _rollout(
    env_id: str, env_kwargs: dict, seed: int, explore_steps: int = 0, explore_plan: int = 1, explore_lead: int = 0
) -> Episode:
    """One expert episode of `env_id` from `seed`, or with `explore_steps` the explored states of
    its scene (env and expert cached per process)."""
    if explore_steps:
        return _explore(env_id, env_kwargs, seed, explore_steps, explore_plan, explore_lead)
    env, expert = _worker_env(env_id, env_kwargs)
    obs, info = env.reset(seed=seed)
    expert.reset()
    observations, actions, rewards, points = [], [], [], []
    task_points = getattr(env.unwrapped, "task_points", None)
    while True:
        action = expert.act()
        observations.append(obs)
        if task_points is not None:
            points.append(task_points())
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return _episode(env_id, seed, observations, actions, rewards, points, info, success=bool(info["is_success"]))


def _close_worker_envs() -> None:
    for env, _ in _WORKER_ENVS.values():
        env.close()
    _WORKER_ENVS.clear()


def _init_worker() -> None:
    """Close a worker's envs (and free its GL context) when the worker process exits."""
    multiprocessing.util.Finalize(None, _close_worker_envs, exitpriority=10)


def _successful_episodes(
    cfg: CollectConfig, env_id: str, pool: ProcessPoolExecutor | None, attempts: int = 0, done: int = 0
) -> Iterator[Episode]:
    """Every attempt (seeds cfg.seed, cfg.seed + 1, ...) in seed order until `cfg.episodes` of them
    succeeded; failures are logged here and skipped by the caller. `attempts` made earlier (`done`
    of them successful) are skipped: the sequence continues at seed cfg.seed + attempts."""
    max_attempts = int(cfg.episodes * cfg.max_attempts_factor) + 10
    kwargs = cfg.make_kwargs()
    batch = 2 * cfg.num_workers
    next_seed = cfg.seed + attempts
    while done < cfg.episodes:
        n = min(batch, max_attempts - attempts)
        if n <= 0:
            raise RuntimeError(
                f"{env_id}: only {done} successful expert episodes in {attempts} attempts "
                f"(CollectConfig.max_attempts_factor={cfg.max_attempts_factor}); the expert is broken"
            )
        seeds = list(range(next_seed, next_seed + n))
        next_seed += n
        attempts += n
        args: list[list] = [[env_id] * n, [kwargs] * n, seeds]
        if cfg.explore_steps:
            args += [[cfg.explore_steps] * n, [cfg.explore_plan] * n, [cfg.explore_lead] * n]
        results: Iterator[Episode] = map(_rollout, *args) if pool is None else pool.map(_rollout, *args)
        for ep in results:
            if done == cfg.episodes:
                break
            if _kept(ep):
                done += 1
                yield ep
            else:
                logger.warning("%s seed %d: expert failed after %d steps; episode skipped", env_id, ep.seed, len(ep))
                yield ep


class AttemptStore:
    """The attempts of an unfinished collection, saved as they complete: `<parts>/<env id>/<seed>.hdf5`
    (a successful episode, group `demo` written by `write_demo`) or `<seed>.failed` (its step
    count). Each file is written under a temporary name and renamed, so it is complete or absent;
    `settings.json` holds what the episodes' content depends on (image settings, compression)."""

    SETTINGS = "settings.json"

    def __init__(self, root: Path, settings: dict, discard_other: bool):
        self.root = Path(root)
        settings = json.loads(json.dumps(settings))
        saved_path = self.root / self.SETTINGS
        if saved_path.is_file():
            try:
                saved = json.loads(saved_path.read_text())
            except ValueError:
                saved = None
            if saved != settings:
                if not discard_other:
                    raise FileExistsError(
                        f"{self.root} holds the attempts of an unfinished collection with other settings "
                        f"({saved} there, {settings} now): rerun that collection's command to finish it, "
                        "or pass --overwrite to discard them"
                    )
                logger.warning("discarding %s: attempts of a collection with other settings", self.root)
                shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = saved_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings))
        os.replace(tmp, saved_path)

    def _dir(self, env_id: str) -> Path:
        return self.root / env_id.replace("/", "__")

    def episode_path(self, env_id: str, seed: int) -> Path:
        return self._dir(env_id) / f"{seed}.hdf5"

    def done(self, env_id: str, first_seed: int, episodes: int) -> list[tuple[int, bool]]:
        """(seed, success) of the attempts saved for `env_id`, in seed order from `first_seed`, up to
        the `episodes`-th success (a run that is asked for fewer episodes uses fewer of them)."""
        out: list[tuple[int, bool]] = []
        seed, successes = first_seed, 0
        while successes < episodes:
            if self.episode_path(env_id, seed).is_file():
                successes += 1
                out.append((seed, True))
            elif (self._dir(env_id) / f"{seed}.failed").is_file():
                out.append((seed, False))
            else:
                break
            seed += 1
        return out

    def save(self, ep: Episode, level: int) -> None:
        """Save an attempt: the episode when it is kept (`_kept`), its step count when it failed."""
        import h5py

        d = self._dir(ep.env_id)
        d.mkdir(parents=True, exist_ok=True)
        if _kept(ep):
            final = self.episode_path(ep.env_id, ep.seed)
            tmp = final.with_suffix(".tmp")
            with h5py.File(tmp, "w") as f:
                group = f.create_group("demo")
                write_demo(group, ep, level)
                if ep.executed_actions is not None:
                    group.attrs["labels"] = "expert"
        else:
            final = d / f"{ep.seed}.failed"
            tmp = final.with_suffix(".tmp")
            tmp.write_text(str(len(ep)))
        os.replace(tmp, final)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def collect(cfg: CollectConfig) -> Path:
    """Record `cfg.episodes` successful expert demonstrations per env id; returns the HDF5 path.

    Each attempt is saved as it completes (`AttemptStore` in `<out>/demos.hdf5.parts/`), and a rerun
    of the same command continues from the saved ones; demos.hdf5 is assembled from them at the end
    under a temporary name and renamed when complete, so it is never truncated.
    """
    import h5py
    from tqdm import tqdm

    path = cfg.out / DATA_FILE
    if path.exists() and not cfg.overwrite:
        raise FileExistsError(f"{path} exists (CollectConfig.out); pass --overwrite to replace it")
    settings = {"env_kwargs": cfg.make_kwargs(), "compression_level": cfg.compression_level}
    if cfg.explore_steps:
        settings["explore"] = [cfg.explore_steps, cfg.explore_plan] + ([cfg.explore_lead] if cfg.explore_lead else [])
    store = AttemptStore(cfg.out / PARTS_DIR, settings, discard_other=cfg.overwrite)
    attempts: dict[str, list[tuple[int, bool]]] = {}
    pool = None
    if cfg.num_workers > 1:
        ctx = multiprocessing.get_context("spawn")  # no GL state inherited through fork
        pool = ProcessPoolExecutor(cfg.num_workers, mp_context=ctx, initializer=_init_worker)
    try:
        for env_id in cfg.env:
            saved = attempts[env_id] = store.done(env_id, cfg.seed, cfg.episodes)
            done = sum(ok for _, ok in saved)
            if saved:
                logger.info("%s: continuing after %d saved attempts (%d successful)", env_id, len(saved), done)
            bar = tqdm(total=cfg.episodes, initial=done, desc=env_id, unit="demo")
            for ep in _successful_episodes(cfg, env_id, pool, len(saved), done):
                store.save(ep, cfg.compression_level)
                kept = _kept(ep)
                saved.append((ep.seed, kept))
                if kept:
                    bar.update(1)
                else:
                    bar.set_postfix(failed=sum(not ok for _, ok in saved))
            bar.close()
    finally:
        if pool is not None:
            pool.shutdown()
        _close_worker_envs()
    failed = {env_id: sum(not ok for _, ok in saved) for env_id, saved in attempts.items()}
    creation = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    with DemoWriter(cfg.out, cfg.env, {e: cfg.make_kwargs() for e in cfg.env}, creation, cfg.compression_level) as w:
        for env_id in cfg.env:
            for seed, ok in attempts[env_id]:
                if ok:
                    with h5py.File(store.episode_path(env_id, seed), "r") as part:
                        w.add_copy(part["demo"])
            logger.info("%s: %d demos, %d failed attempts skipped", env_id, cfg.episodes, failed[env_id])
        w.attrs["failed_attempts"] = json.dumps(failed)
    store.remove()
    logger.info("wrote %s (%d demos, %d samples) and %s", path, w.num_demos, w.total, cfg.out / STATS_FILE)
    return path
