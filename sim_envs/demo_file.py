"""The demonstrations' HDF5 file (robomimic layout): its schema, the `Episode` it holds, the writer
(`DemoWriter`) and the reader (`load_dataset` -> `DemoFile`).

`sim_envs.collect` (scripted experts) and `ee-vla dagger` (on-policy, expert-labelled) write these
files; `ee-vla train` and `ee-vla distill` read them. Schema (docs/sim_envs.md):

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

The reader needs only `actions`, `obs/pixels` and a non-empty `instruction` attribute per
demonstration (attributes may also sit on `data` or the file); the other entries are read when
present. Every (T, H, W, 3) uint8 dataset under `obs/` is a camera, named by its key
(`Episode.camera_shapes`); `read_pixels(episodes, camera)` reads one camera's images of many
episodes at once (training reads every camera its model reads). `<out>/stats.json` next to the
file holds the action statistics (`action_stats`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
DATA_FILE = "demos.hdf5"
STATS_FILE = "stats.json"
GRIPPER_MASK = [True] * 6 + [False]
"""Action statistics mask: the gripper (already -1/+1) is not normalised."""


class DemoFileError(ValueError):
    """A file that is not a readable demonstration file, or a demonstration in it that breaks the schema."""


@dataclass
class Episode:
    """One demonstration: T observations and the T actions taken after them.

    An episode read without images (`DemoFile.episodes(pixels=False)`) has `pixels` None and its
    `image_shape` and `camera_shapes` set; `read_pixels` reads them later, camera by camera.
    """

    actions: np.ndarray
    """(T, A) float32; A = 7 for the ee_vla suite and Meta-World, in [-1, 1]."""
    instruction: str
    pixels: np.ndarray | None = None
    """(T, H, W, 3) uint8."""
    agent_pos: np.ndarray | None = None
    """(T, D) float32 proprio, or None when the file has no obs/agent_pos."""
    env_id: str | None = None
    seed: int | None = None
    success: bool | None = None
    rewards: np.ndarray | None = None
    """(T,) float32."""
    wrist_pixels: np.ndarray | None = None
    """(T, H, W, 3) uint8 gripper camera."""
    task_points: np.ndarray | None = None
    """(T, 6) float32: target xyz and goal xyz at each observation (envs with `task_points()`)."""
    executed_actions: np.ndarray | None = None
    """(T, A) float32: what was executed when it was not `actions` (on-policy data: `actions` are the
    expert's labels, `executed_actions` the policy's)."""
    expert_chunks: np.ndarray | None = None
    """(T, k, A) float32: on-policy data, the expert's plan of k actions from each observation."""
    attrs: dict = field(default_factory=dict)
    """Every attribute of the episode as read: the file's, its data group's and the demo group's
    (the innermost wins)."""
    path: Path | None = None
    """The file the episode was read from (None for an episode not read from a file)."""
    key: str | None = None
    """Its group under data/ in that file (e.g. demo_3)."""
    image_shape: tuple[int, ...] = ()
    """(H, W, 3) of `pixels`, known before they are read."""
    frames: np.ndarray | None = None
    """The array `read_pixels` read several episodes' images into; `pixels` is rows
    frame_offset.. of it (datasets gather a batch from it with one fancy index)."""
    frame_offset: int = 0
    camera_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """(H, W, 3) of the images of every camera of the episode by observation key (`pixels`,
    `wrist_pixels`, ...: the file's (T, H, W, 3) uint8 datasets under obs/), known before they are
    read."""
    camera_frames: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    """Cameras other than `pixels` read by `read_pixels(episodes, camera)`: camera -> (the array
    several episodes' images of it were read into, this episode's first row in it)."""

    def __post_init__(self) -> None:
        if self.pixels is not None and not self.image_shape:
            self.image_shape = tuple(self.pixels.shape[1:])
        if not self.camera_shapes:
            images = {"pixels": self.pixels, "wrist_pixels": self.wrist_pixels}
            self.camera_shapes = {k: tuple(v.shape[1:]) for k, v in images.items() if v is not None}
            if self.image_shape and "pixels" not in self.camera_shapes:
                self.camera_shapes["pixels"] = tuple(self.image_shape)

    @property
    def cameras(self) -> tuple[str, ...]:
        """The observation keys of the episode's cameras (`camera_shapes`), `pixels` first."""
        return tuple(sorted(self.camera_shapes, key=lambda k: (k != "pixels", k)))

    def image(self, camera: str) -> np.ndarray | None:
        """(T, H, W, 3) images of `camera` (an observation key), None when they are not read (or
        the episode has no such camera)."""
        if camera == "pixels":
            return self.pixels
        if camera == "wrist_pixels" and self.wrist_pixels is not None:
            return self.wrist_pixels
        if camera in self.camera_frames:
            frames, offset = self.camera_frames[camera]
            return frames[offset : offset + len(self)]
        return None

    @property
    def source(self) -> str:
        """`<file>:<group>`, naming the episode in error messages."""
        return f"{self.path}:{self.key}"

    def __len__(self) -> int:
        return len(self.actions)


# ---- writing --------------------------------------------------------------------------------
def action_stats(actions: np.ndarray, mask: Sequence[bool]) -> dict:
    """Per-dimension statistics of (N, A) actions, the dict `ee_vla.action_tokenizer.ActionStats`
    reads (`from_dict`): q01/q99 (the 1st/99th percentiles the tokenizer maps to -1/+1), `mask`
    (False dims are only clipped), mean, std, min, max."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"actions must be a non-empty (N, action_dim) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("actions contain NaN or inf: cannot compute statistics")
    if len(mask) != a.shape[1]:
        raise ValueError(f"mask has {len(mask)} dims, the actions {a.shape[1]}")
    return {
        "q01": np.quantile(a, 0.01, axis=0).tolist(),
        "q99": np.quantile(a, 0.99, axis=0).tolist(),
        "mask": [bool(m) for m in mask],
        "mean": a.mean(0).tolist(),
        "std": a.std(0).tolist(),
        "min": a.min(0).tolist(),
        "max": a.max(0).tolist(),
    }


def write_demo(group, ep: Episode, level: int) -> None:
    """Write `ep` into the empty HDF5 group `group` (a data/demo_<i>); images gzip at `level` (0 = none)."""
    for name in ("pixels", "agent_pos", "env_id", "seed", "success"):
        if getattr(ep, name) is None:
            raise ValueError(f"Episode.{name} is None: an episode is written with its {name}")
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
    rewards = np.zeros(len(ep), np.float32) if ep.rewards is None else ep.rewards
    group.create_dataset("rewards", data=rewards)
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
        write_demo(group, ep, self.level)
        for k, v in attrs.items():
            group.attrs[k] = v
        self._actions.append(ep.actions)
        self.num_demos += 1
        self.total += len(ep)

    def add_copy(self, group) -> None:
        """Append a copy of a group written by `write_demo` (of another file) as the next
        data/demo_<i>; chunks are copied as stored, without recompressing."""
        self._file.copy(group, self._data, name=f"demo_{self.num_demos}")
        actions = group["actions"][()]
        self._actions.append(actions)
        self.num_demos += 1
        self.total += len(actions)

    def close(self) -> Path:
        """Write the file-level attributes and the action statistics, and rename the file into place."""
        if not self.num_demos:
            self.abort()
            raise RuntimeError(f"no episodes were written to {self.path}")
        stats = action_stats(np.concatenate(self._actions), GRIPPER_MASK)
        for k, v in {
            **self.attrs,
            "num_demos": self.num_demos,
            "total": self.total,
            "action_stats": json.dumps(stats),
            "created": datetime.now(timezone.utc).isoformat(),
        }.items():
            self._data.attrs[k] = v
        self._file.close()
        os.replace(self._tmp, self.path)
        (self.out / STATS_FILE).write_text(json.dumps(stats, indent=2))
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


# ---- reading --------------------------------------------------------------------------------
def _attr(value) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _demo_order(name: str) -> tuple[int, str]:
    """demo_2 before demo_10; names without a numeric suffix last."""
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 62, name)


def _corrupt(where: str, err: OSError) -> DemoFileError:
    # h5py names neither the file nor the dataset of a corrupt chunk
    return DemoFileError(f"{where} cannot be read (corrupt or truncated file?): {err}")


class DemoFile:
    """A demonstration file: `len(f)`, `f[i] -> Episode`, iteration (images included, the file
    opened per read, which is safe in DataLoader workers), `f.episodes(pixels=False)` (all
    episodes in one read, images left for `read_pixels`), `f.attrs` (the attributes of the file and
    its data group; the data group's win), `f.env_ids`, `f.action_stats`.

    Every episode read is checked: a demonstration without `actions`, `obs/pixels` or an
    instruction, with NaN/inf in its arrays, or with arrays of different lengths raises
    `DemoFileError` naming the file and the demo.
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        if p.is_dir():
            p = p / DATA_FILE
        if not p.exists():
            raise FileNotFoundError(f"no demonstration file at {p}")
        self.path = p
        with self._open() as f:
            if "data" not in f or not len(f["data"]):
                raise DemoFileError(f"{p} holds no demonstrations (expected groups data/demo_<i>)")
            data = f["data"]
            self.attrs: dict = {
                **{k: _attr(v) for k, v in f.attrs.items()},
                **{k: _attr(v) for k, v in data.attrs.items()},
            }
            self.keys: list[str] = sorted(data.keys(), key=_demo_order)
        if "num_demos" in self.attrs and int(self.attrs["num_demos"]) != len(self.keys):
            raise DemoFileError(
                f"{p}: num_demos says {self.attrs['num_demos']} but the file has {len(self.keys)} demos"
            )

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as e:
            raise DemoFileError(f"{self.path} is not a readable HDF5 file (corrupt or truncated?): {e}") from e

    @property
    def env_ids(self) -> list[str]:
        """The env ids the file was recorded on (its `env_ids` attribute)."""
        if "env_ids" not in self.attrs:
            raise DemoFileError(f"{self.path} has no env_ids attribute (not written by DemoWriter)")
        return json.loads(self.attrs["env_ids"])

    @property
    def action_stats(self) -> dict:
        """The statistics of all actions in the file (`action_stats`; `ActionStats.from_dict` reads them)."""
        if "action_stats" not in self.attrs:
            raise DemoFileError(f"{self.path} has no action_stats attribute (not written by DemoWriter)")
        return json.loads(self.attrs["action_stats"])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Episode:
        key = self.keys[i]
        with self._open() as f:
            ep = self._read(f["data"], key, pixels=True, keep=None)
        assert ep is not None
        return ep

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def episodes(self, pixels: bool = True, keep: Callable[[dict], bool] | None = None) -> list[Episode]:
        """Every episode, in one read of the file; without `pixels` the images (`pixels`,
        `wrist_pixels`) are left unread. `keep` is called with an episode's `attrs` before its
        arrays are read; the episodes it returns False for are skipped."""
        with self._open() as f:
            read = (self._read(f["data"], key, pixels, keep) for key in self.keys)
            return [ep for ep in read if ep is not None]

    def _read(self, data, key: str, pixels: bool, keep: Callable[[dict], bool] | None) -> Episode | None:
        src = f"{self.path}:{key}"
        try:
            return self._read_group(data[key], src, key, pixels, keep)
        except OSError as e:
            raise _corrupt(src, e) from e

    def _read_group(self, g, src: str, key: str, pixels: bool, keep) -> Episode | None:
        for name in ("actions", "obs/pixels"):
            if name not in g:
                raise DemoFileError(f"{src} has no '{name}'")
        attrs = {**self.attrs, **{k: _attr(v) for k, v in g.attrs.items()}}
        if keep is not None and not keep(attrs):
            return None
        instr = attrs.get("instruction")
        if not isinstance(instr, str) or not instr.strip():
            raise DemoFileError(f"{src} has no 'instruction' attribute (a non-empty string)")
        actions = np.asarray(g["actions"][()], dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise DemoFileError(f"{src}/actions must be a non-empty (T, action_dim) array, got shape {actions.shape}")
        if not np.isfinite(actions).all():
            raise DemoFileError(f"{src}/actions contains NaN or inf")
        T, A = actions.shape
        px = g["obs/pixels"]
        if px.ndim != 4 or px.shape[-1] != 3 or px.dtype != np.uint8:
            raise DemoFileError(f"{src}/obs/pixels must be (T, H, W, 3) uint8, got {px.shape} {px.dtype}")
        if px.shape[0] != T:
            raise DemoFileError(f"{src} has {px.shape[0]} images but {T} actions")
        agent_pos = None
        if "obs/agent_pos" in g:
            agent_pos = np.asarray(g["obs/agent_pos"][()], dtype=np.float32)
            if len(agent_pos) != T:
                raise DemoFileError(f"{src} has {len(agent_pos)} obs/agent_pos rows but {T} actions")
            agent_pos = agent_pos.reshape(T, -1)
            if not np.isfinite(agent_pos).all():
                raise DemoFileError(f"{src}/obs/agent_pos contains NaN or inf")
        points = None
        if "privileged/task_points" in g:
            points = np.asarray(g["privileged/task_points"][()], dtype=np.float32)
            if points.ndim != 2 or len(points) != T or not np.isfinite(points).all():
                raise DemoFileError(
                    f"{src}/privileged/task_points must be a finite ({T}, D) array, got shape {points.shape}"
                )
        chunks = None
        if "expert_chunks" in g:
            chunks = np.asarray(g["expert_chunks"][()], dtype=np.float32)
            if chunks.ndim != 3 or chunks.shape[0] != T or chunks.shape[2] != A:
                raise DemoFileError(f"{src}/expert_chunks must be a ({T}, k, {A}) array, got shape {chunks.shape}")
            if not np.isfinite(chunks).all():
                raise DemoFileError(f"{src}/expert_chunks contains NaN or inf")
        executed = None
        if "executed_actions" in g:
            executed = np.asarray(g["executed_actions"][()], dtype=np.float32)
            if executed.shape != actions.shape:
                raise DemoFileError(f"{src}/executed_actions must be a ({T}, {A}) array, got shape {executed.shape}")
        rewards = g["rewards"][()] if "rewards" in g else None
        cameras = {"pixels": tuple(px.shape[1:])}
        for name, d in g["obs"].items():
            if name == "pixels" or not hasattr(d, "shape") or d.ndim != 4 or d.shape[-1] != 3 or d.dtype != np.uint8:
                continue
            if d.shape[0] != T:
                raise DemoFileError(f"{src} has {d.shape[0]} obs/{name} images but {T} actions")
            cameras[name] = tuple(d.shape[1:])
        wrist = g["obs/wrist_pixels"][()] if pixels and "obs/wrist_pixels" in g else None
        return Episode(
            actions=actions,
            instruction=instr,
            pixels=px[()] if pixels else None,
            agent_pos=agent_pos,
            env_id=str(attrs["env_id"]) if "env_id" in attrs else None,
            seed=int(attrs["seed"]) if "seed" in attrs else None,
            success=bool(attrs["success"]) if "success" in attrs else None,
            rewards=rewards,
            wrist_pixels=wrist,
            task_points=points,
            executed_actions=executed,
            expert_chunks=chunks,
            attrs=attrs,
            path=self.path,
            key=key,
            image_shape=tuple(px.shape[1:]),
            camera_shapes=cameras,
        )


def load_dataset(path: str | Path) -> DemoFile:
    """Open a demonstration file (or the directory holding its demos.hdf5).

    Raises:
        FileNotFoundError: no such file.
        DemoFileError: not an HDF5 file, no demonstrations, or a `num_demos` attribute that does not
            match them.
    """
    return DemoFile(path)


def read_pixels(episodes: Sequence[Episode], camera: str = "pixels") -> np.ndarray:
    """Read the images of camera `camera` (`obs/<camera>`) of episodes read without them
    (`DemoFile.episodes(pixels=False)`) into one (sum T, H, W, 3) uint8 array (returned), each file
    opened once. For `pixels` each episode's `pixels` becomes a view of it (`frames`,
    `frame_offset`); for another camera its `camera_frames[camera]` (and, for `wrist_pixels`, its
    `wrist_pixels`). An episode without that camera is a `DemoFileError` naming it."""
    import h5py

    missing = [e for e in episodes if camera not in e.camera_shapes]
    if missing:
        raise DemoFileError(f"{missing[0].source} has no obs/{camera} ({len(missing)} of {len(episodes)} episodes)")
    shapes = {e.camera_shapes[camera] for e in episodes}
    if len(shapes) != 1:
        raise DemoFileError(f"the obs/{camera} images of the episodes differ in shape: {sorted(shapes)}")
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in episodes])]).astype(np.int64)
    frames = np.empty((int(offsets[-1]), *shapes.pop()), dtype=np.uint8)
    by_file: dict[str, list[int]] = {}
    for i, e in enumerate(episodes):
        if e.path is None:
            raise ValueError(f"episode {i} was not read from a file: its images cannot be read")
        by_file.setdefault(str(e.path), []).append(i)
    for f, idx in by_file.items():
        try:
            h5 = h5py.File(f, "r")
        except OSError as err:
            raise DemoFileError(f"{f} is not a readable HDF5 file (corrupt or truncated?): {err}") from err
        with h5:
            for i in idx:
                e = episodes[i]
                view = frames[offsets[i] : offsets[i + 1]]
                try:
                    view[...] = h5[f"data/{e.key}/obs/{camera}"][()]
                except OSError as err:
                    raise _corrupt(f"{e.source}/obs/{camera}", err) from err
                if camera == "pixels":
                    e.pixels, e.frames, e.frame_offset = view, frames, int(offsets[i])
                else:
                    e.camera_frames[camera] = (frames, int(offsets[i]))
                    if camera == "wrist_pixels":
                        e.wrist_pixels = view
    return frames
