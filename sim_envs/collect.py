"""Record scripted-expert demonstrations to a robomimic-style HDF5 file, and read them back.

`collect(CollectConfig(...))` runs the expert of each env id until it has `episodes` successful
episodes per env id (failed attempts are skipped, counted and logged, never stored), writes
`<out>/demos.hdf5` plus `<out>/stats.json` (the action statistics the action tokenizer needs), and
returns the HDF5 path. Every attempt is saved as it completes (`<out>/demos.hdf5.parts/`, one
file per attempt): a collection that is killed keeps its episodes, and rerunning the same command
continues from them with the same seeds, so its file holds what an uninterrupted run's holds.
`load_dataset(path)` returns the episodes as numpy arrays with their instruction strings. The schema
is documented in docs/sim_envs.md:

    data/                      attrs: env_ids, num_demos, total, action_space, env_args,
                                      creation_args, failed_attempts, action_stats, format_version
    data/demo_<i>/             attrs: instruction, env_id, seed, success, num_samples
    data/demo_<i>/obs/pixels        (T, H, W, 3) uint8, gzip
    data/demo_<i>/obs/agent_pos     (T, D) float32
    data/demo_<i>/obs/wrist_pixels  (T, H, W, 3) uint8, gzip (only with wrist_camera)
    data/demo_<i>/privileged/task_points  (T, 6) float32, target xyz + goal xyz (envs with a
                                    `task_points()`: the ee_vla suite and Meta-World; simulator
                                    ground truth for grounding co-training, never an obs)
    data/demo_<i>/actions           (T, 7) float32, the expert's action after observing obs[t]
    data/demo_<i>/executed_actions  (T, 7) float32, only in on-policy data (`ee-vla dagger`, attr
                                    labels="expert"): what the policy executed; `actions` are then
                                    the expert's labels of the states the policy visited
    data/demo_<i>/expert_chunks     (T, k, 7) float32, on-policy data only: the expert's plan of k
                                    actions from obs[t] (the chunk target of that state)
    data/demo_<i>/rewards, dones    (T,) float32 / uint8
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.util
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATA_FILE = "demos.hdf5"
STATS_FILE = "stats.json"
PARTS_DIR = DATA_FILE + ".parts"
"""Attempts of an unfinished collection, one file each (removed once demos.hdf5 is written)."""
GRIPPER_MASK = [True] * 6 + [False]
"""ActionStats mask: the gripper (already -1/+1) is not normalised."""


@dataclass
class CollectConfig:
    """What to record and where (`ee-vla collect` exposes these fields as flags)."""

    env: tuple[str, ...] = ("ee_vla/PickCube-v0",)
    """Gymnasium ids to record, e.g. ee_vla/PickCube-v0 or ee_vla/MetaWorld-reach-v0."""
    episodes: int = 100
    """Successful demonstrations to record per env id."""
    out: Path = Path("data/demos")
    """Output directory; receives demos.hdf5 and stats.json."""
    seed: int = 0
    """Seed of the first attempt of each env id; attempt i is reset with seed + i."""
    image_size: int = 128
    """Side of the square camera images in pixels."""
    wrist_camera: bool = False
    """Also record the gripper camera (ee_vla suite only) as obs/wrist_pixels."""
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
        if self.wrist_camera and any(e.startswith("ee_vla/MetaWorld") for e in self.env):
            raise ValueError("CollectConfig.wrist_camera is only supported by the ee_vla suite, not Meta-World envs")

    def env_kwargs(self) -> dict:
        """Keyword arguments passed to `gymnasium.make` for every env id."""
        kw: dict = {"image_size": self.image_size}
        if self.wrist_camera:
            kw["wrist_camera"] = True
        return kw


@dataclass
class Episode:
    """One demonstration: T observations and the T actions taken after them."""

    pixels: np.ndarray
    """(T, H, W, 3) uint8."""
    agent_pos: np.ndarray
    """(T, D) float32."""
    actions: np.ndarray
    """(T, 7) float32 in [-1, 1]."""
    instruction: str
    env_id: str
    seed: int
    success: bool
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    wrist_pixels: np.ndarray | None = None
    task_points: np.ndarray | None = None
    """(T, 6) float32: target xyz and goal xyz at each observation (envs with `task_points()`)."""
    executed_actions: np.ndarray | None = None
    """(T, 7) float32: what was executed when it was not `actions` (on-policy data: `actions` are the
    expert's labels, `executed_actions` the policy's)."""
    expert_chunks: np.ndarray | None = None
    """(T, k, 7) float32: on-policy data, the expert's plan of k actions from each observation."""

    def __len__(self) -> int:
        return len(self.actions)


# ---- recording ------------------------------------------------------------------------------
_WORKER_ENVS: dict = {}


def _rollout(env_id: str, env_kwargs: dict, seed: int) -> Episode:
    """One expert episode of `env_id` from `seed` (env and expert cached per process)."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids in worker processes)
    from sim_envs.experts import make_expert

    if env_id not in _WORKER_ENVS:
        env = gym.make(env_id, **env_kwargs)
        _WORKER_ENVS[env_id] = (env, make_expert(env))
    env, expert = _WORKER_ENVS[env_id]
    obs, info = env.reset(seed=seed)
    expert.reset()
    frames, wrist, proprio, actions, rewards, points = [], [], [], [], [], []
    task_points = getattr(env.unwrapped, "task_points", None)
    while True:
        action = expert.act()
        frames.append(obs["pixels"])
        if task_points is not None:
            points.append(task_points())
        proprio.append(obs["agent_pos"])
        if "wrist_pixels" in obs:
            wrist.append(obs["wrist_pixels"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return Episode(
        pixels=np.stack(frames),
        agent_pos=np.stack(proprio).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        instruction=str(info["task_description"]),
        env_id=env_id,
        seed=seed,
        success=bool(info["is_success"]),
        rewards=np.asarray(rewards, dtype=np.float32),
        wrist_pixels=np.stack(wrist) if wrist else None,
        task_points=np.stack(points).astype(np.float32) if points else None,
    )


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
    kwargs = cfg.env_kwargs()
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
        if pool is None:
            results: Iterator[Episode] = (_rollout(env_id, kwargs, s) for s in seeds)
        else:
            results = pool.map(_rollout, [env_id] * n, [kwargs] * n, seeds)
        for ep in results:
            if done == cfg.episodes:
                break
            if ep.success:
                done += 1
                yield ep
            else:
                logger.warning("%s seed %d: expert failed after %d steps; episode skipped", env_id, ep.seed, len(ep))
                yield ep


def _write_demo(group, ep: Episode, level: int) -> None:
    img = {"compression": "gzip", "compression_opts": level} if level > 0 else {}
    obs = group.create_group("obs")
    obs.create_dataset("pixels", data=ep.pixels, chunks=(1, *ep.pixels.shape[1:]), **img)
    obs.create_dataset("agent_pos", data=ep.agent_pos)
    if ep.wrist_pixels is not None:
        obs.create_dataset("wrist_pixels", data=ep.wrist_pixels, chunks=(1, *ep.wrist_pixels.shape[1:]), **img)
    if ep.task_points is not None:
        group.create_group("privileged").create_dataset("task_points", data=ep.task_points)
    group.create_dataset("actions", data=ep.actions)
    if ep.executed_actions is not None:
        group.create_dataset("executed_actions", data=ep.executed_actions)
    if ep.expert_chunks is not None:
        group.create_dataset("expert_chunks", data=ep.expert_chunks)
    group.create_dataset("rewards", data=ep.rewards)
    dones = np.zeros(len(ep), dtype=np.uint8)
    dones[-1] = 1
    group.create_dataset("dones", data=dones)
    group.attrs["instruction"] = ep.instruction
    group.attrs["env_id"] = ep.env_id
    group.attrs["seed"] = ep.seed
    group.attrs["success"] = ep.success
    group.attrs["num_samples"] = len(ep)


def _action_space_description() -> dict:
    from sim_envs.common import ACTION_NAMES, GRIPPER_CONVENTION
    from sim_envs.tabletop import CONTROL_HZ, MAX_ROTATION, MAX_TRANSLATION

    return {
        "dim": len(ACTION_NAMES),
        "names": list(ACTION_NAMES),
        "low": -1.0,
        "high": 1.0,
        "gripper": GRIPPER_CONVENTION,
        "ee_vla_suite": {
            "translation_m_per_step": MAX_TRANSLATION,
            "rotation_rad_per_step": MAX_ROTATION,
            "control_hz": CONTROL_HZ,
        },
        "metaworld": {"translation_m_per_step": 0.01, "rotation": "ignored", "control_hz": 80},
    }


class DemoWriter:
    """Writes episodes to `<out>/demos.hdf5` under a temporary name, renamed when `close()`d without
    an error (so an interrupted run never leaves a truncated file), plus `<out>/stats.json`.

        with DemoWriter(out, env_ids, env_args, creation_args) as w:
            w.add(episode)            # one data/demo_<i> group per call
        w.path                        # the finished file

    `attrs` become extra attributes of the `data` group (e.g. `failed_attempts`, `source`).
    """

    def __init__(self, out: Path, env_ids: Sequence[str], env_args: dict, creation_args: dict, level: int = 4):
        import h5py

        self.out, self.level = Path(out), level
        self.path = self.out / DATA_FILE
        self.out.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out / (DATA_FILE + ".partial")
        self._file = h5py.File(self._tmp, "w")
        self._data = self._file.create_group("data")
        self._actions: list[np.ndarray] = []
        self.attrs: dict = {
            "format_version": FORMAT_VERSION,
            "env_ids": json.dumps(list(env_ids)),
            "action_space": json.dumps(_action_space_description()),
            "env_args": json.dumps(env_args),
            "creation_args": json.dumps(creation_args),
        }
        self.num_demos = self.total = 0

    def add(self, ep: Episode, **attrs) -> None:
        """Append `ep` as data/demo_<i>; `attrs` are extra attributes of its group."""
        group = self._data.create_group(f"demo_{self.num_demos}")
        _write_demo(group, ep, self.level)
        for k, v in attrs.items():
            group.attrs[k] = v
        self._actions.append(ep.actions)
        self.num_demos += 1
        self.total += len(ep)

    def add_copy(self, group) -> None:
        """Append a copy of a data/demo_<i> group of another file (`_write_demo`'s layout) as the
        next data/demo_<i>; chunks are copied as stored, without recompressing."""
        self._file.copy(group, self._data, name=f"demo_{self.num_demos}")
        actions = group["actions"][()]
        self._actions.append(actions)
        self.num_demos += 1
        self.total += len(actions)

    def close(self) -> Path:
        """Write the file-level attributes and the action statistics, and rename the file into place."""
        from ee_vla.action_tokenizer import ActionStats

        if not self.num_demos:
            self.abort()
            raise RuntimeError(f"no episodes were written to {self.path}")
        stats = ActionStats.from_actions(np.concatenate(self._actions), mask=GRIPPER_MASK)
        for k, v in {
            **self.attrs,
            "num_demos": self.num_demos,
            "total": self.total,
            "action_stats": json.dumps(stats.to_dict()),
            "created": datetime.now(timezone.utc).isoformat(),
        }.items():
            self._data.attrs[k] = v
        self._file.close()
        os.replace(self._tmp, self.path)
        stats.save(self.out / STATS_FILE)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._file.id.valid:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class AttemptStore:
    """The attempts of an unfinished collection, saved as they complete: `<parts>/<env id>/<seed>.hdf5`
    (a successful episode, group `demo` in `_write_demo`'s layout) or `<seed>.failed` (its step
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
                        "or pass overwrite=True (--overwrite) to discard them"
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
        """Save an attempt: the episode when it succeeded, its step count when it failed."""
        import h5py

        d = self._dir(ep.env_id)
        d.mkdir(parents=True, exist_ok=True)
        if ep.success:
            final = self.episode_path(ep.env_id, ep.seed)
            tmp = final.with_suffix(".tmp")
            with h5py.File(tmp, "w") as f:
                _write_demo(f.create_group("demo"), ep, level)
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
        raise FileExistsError(f"{path} exists (CollectConfig.out); pass overwrite=True to replace it")
    settings = {"env_kwargs": cfg.env_kwargs(), "compression_level": cfg.compression_level}
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
                saved.append((ep.seed, ep.success))
                if ep.success:
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
    with DemoWriter(cfg.out, cfg.env, {e: cfg.env_kwargs() for e in cfg.env}, creation, cfg.compression_level) as w:
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


# ---- reading --------------------------------------------------------------------------------
class DemoDataset:
    """Read access to a demos.hdf5 file: `len(ds)`, `ds[i] -> Episode`, iteration, `ds.stats`.

    Episodes are read on access (the file is opened per read, which is safe in DataLoader workers).
    """

    def __init__(self, path: Path, demo_keys: list[str], attrs: dict):
        self.path = path
        self.demo_keys = demo_keys
        self.attrs = attrs

    @property
    def env_ids(self) -> list[str]:
        return json.loads(self.attrs["env_ids"])

    @property
    def stats(self):
        """The `ee_vla.action_tokenizer.ActionStats` of all actions in the file."""
        from ee_vla.action_tokenizer import ActionStats

        return ActionStats.from_dict(json.loads(self.attrs["action_stats"]))

    def __len__(self) -> int:
        return len(self.demo_keys)

    def __getitem__(self, i: int) -> Episode:
        import h5py

        key = self.demo_keys[i]
        try:
            with h5py.File(self.path, "r") as f:
                g = f["data"][key]
                wrist = g["obs"]["wrist_pixels"][()] if "wrist_pixels" in g["obs"] else None
                points = g["privileged/task_points"][()] if "privileged/task_points" in g else None
                executed = g["executed_actions"][()] if "executed_actions" in g else None
                chunks = g["expert_chunks"][()] if "expert_chunks" in g else None
                return Episode(
                    pixels=g["obs"]["pixels"][()],
                    agent_pos=g["obs"]["agent_pos"][()],
                    actions=g["actions"][()],
                    instruction=str(g.attrs["instruction"]),
                    env_id=str(g.attrs["env_id"]),
                    seed=int(g.attrs["seed"]),
                    success=bool(g.attrs["success"]),
                    rewards=g["rewards"][()],
                    wrist_pixels=wrist,
                    task_points=points,
                    executed_actions=executed,
                    expert_chunks=chunks,
                )
        except OSError as e:  # h5py names neither the file nor the dataset of a corrupt chunk
            raise ValueError(f"{self.path}: data/{key} cannot be read (corrupt or truncated file?): {e}") from e

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]


def load_dataset(path: str | Path, action_dim: int = 7) -> DemoDataset:
    """Open a demos.hdf5 written by `collect` (or its directory) and check its schema.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file, not in this schema, or actions that are not `action_dim` wide.
    """
    import h5py

    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.exists():
        raise FileNotFoundError(f"no dataset at {p}")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ValueError(f"{p} is not a readable HDF5 file (corrupt or truncated?): {e}") from e
    with f:
        if "data" not in f:
            raise ValueError(f"{p} has no 'data' group: not an ee_vla/robomimic demo file")
        data = f["data"]
        missing = [k for k in ("env_ids", "action_stats", "num_demos") if k not in data.attrs]
        if missing:
            raise ValueError(f"{p}: data group lacks attributes {missing}")
        keys = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if len(keys) != int(data.attrs["num_demos"]):
            raise ValueError(f"{p}: num_demos says {int(data.attrs['num_demos'])} but the file has {len(keys)} demos")
        for k in keys:
            try:
                g = data[k]
                for name in ("actions", "obs/pixels", "obs/agent_pos"):
                    if name not in g:
                        raise ValueError(f"{p}: data/{k} has no {name}")
                shape = g["actions"].shape
                n_obs = (g["obs/pixels"].shape[0], g["obs/agent_pos"].shape[0])
            except OSError as e:
                raise ValueError(f"{p}: data/{k} cannot be read (corrupt or truncated file?): {e}") from e
            if len(shape) != 2 or shape[1] != action_dim:
                raise ValueError(f"{p}: data/{k}/actions has shape {shape}, expected (T, {action_dim})")
            if n_obs != (shape[0], shape[0]):
                raise ValueError(f"{p}: data/{k} has {shape[0]} actions but a different number of observations")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in data.attrs.items()}
    return DemoDataset(p, keys, attrs)
