"""Demonstration data for training: episodes read from demonstration files, torch datasets of
(observation, action-chunk tokens) items, batching and statistics.

The files are the HDF5 files `sim_envs` collects (schema, reader: `sim_envs.demo_file`); one file
per task or several tasks in one, and several files make a multi-task set. `scan_dataset`
(`ee_vla.training.dataset_files`, importable from here too) reads and checks everything except the
images, so a bad dataset (missing file, no demonstrations, inconsistent dims) fails before any model
is built or any compute runs. The images are then loaded into memory once (`load_pixels`): datasets
of this project are a few GB at most, and in-memory indexing keeps the training loop simple.

A model may read several cameras (`VLA.cameras`: observation keys such as `pixels` and
`wrist_pixels`); the datasets then take those `cameras`, and a batch carries each camera's images
under its key (`VLA.camera_images(batch)` picks them for the model). `pixels` is always there.

`DemoDataset` item t of an episode carries the chunk target: actions t..t+k-1 (the last action
repeated past the episode end), tokenised by the model's `ActionTokenizer`. `GroundingDataset`
items ask where the instruction's objects are (`GROUNDING_TEMPLATE`) and carry the discretised
task points as the target, padded with `IGNORE` to the chunk length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer

# the reading of the files (`ee_vla.training.dataset_files`); its names are also importable from here
from ee_vla.training.dataset_files import HDF5_SUFFIXES as HDF5_SUFFIXES
from ee_vla.training.dataset_files import DatasetError
from ee_vla.training.dataset_files import check_against_model as check_against_model
from ee_vla.training.dataset_files import check_cameras_recorded as check_cameras_recorded
from ee_vla.training.dataset_files import find_dataset_files as find_dataset_files
from ee_vla.training.dataset_files import load_pixels as load_pixels
from ee_vla.training.dataset_files import scan_dataset as scan_dataset

if TYPE_CHECKING:  # sim_envs (with its simulator) is imported when files are read
    from sim_envs.demo_file import Episode

IGNORE = -100
"""Target id of positions without a label (the tail of a grounding answer)."""


def _model_extra(model_dir: str | Path) -> tuple[Path, dict]:
    """(path, content) of an ee_vla model directory's `ee_vla.json`, read without loading weights."""
    import json

    from ee_vla.models.vla import EE_VLA_FILE, ModelLoadError

    path = Path(model_dir) / EE_VLA_FILE
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} is not an ee_vla model directory (no {EE_VLA_FILE})")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is corrupt: {e}") from e


def model_dims(
    model_dir: str | Path, unnorm_key: str | None = None, chunk_size: int | None = None
) -> tuple[int, int, int]:
    """(action_dim, proprio_dim, chunk_size) of an ee_vla model directory, read from its
    `ee_vla.json` without loading weights (to check data against it before compute); of an
    OpenVLA checkpoint, from its config (the statistics of `unnorm_key`; `chunk_size` or its own)."""
    from ee_vla.models.openvla import is_openvla_dir, read_openvla
    from ee_vla.models.vla import ModelLoadError

    if is_openvla_dir(model_dir):
        fmt = read_openvla(model_dir)
        try:
            return len(fmt.action_stats(unnorm_key)["q01"]), 0, chunk_size or fmt.chunk_size
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
    path, extra = _model_extra(model_dir)
    try:
        a_dim = len(extra["action_tokenizer"]["stats"]["q01"])
        pt = extra.get("proprio_tokenizer")
        return a_dim, len(pt["stats"]["q01"]) if pt else 0, int(extra["chunk_size"])
    except (KeyError, TypeError) as e:
        raise ModelLoadError(f"{path} is corrupt: {e}") from e


def _frames_of(episode: Episode, camera: str) -> tuple[np.ndarray | None, int]:
    """(the array `load_pixels` read `camera`'s images of `episode` into, its first row there)."""
    if camera == "pixels":
        return episode.frames, episode.frame_offset
    return episode.camera_frames.get(camera, (None, 0))


def gather_pixels(episodes: list[Episode], ep: np.ndarray, t: np.ndarray, camera: str = "pixels") -> np.ndarray:
    """(B, H, W, 3) images of `camera` at frames t of episodes ep: one fancy index into the shared
    array of that camera when the episodes were loaded together, else a stack."""
    base = _frames_of(episodes[int(ep[0])], camera)[0] if len(ep) else None
    if base is not None and all(_frames_of(episodes[int(i)], camera)[0] is base for i in np.unique(ep)):
        offsets = np.fromiter((_frames_of(episodes[int(i)], camera)[1] for i in ep), dtype=np.int64, count=len(ep))
        return base[offsets + t]
    return np.stack([episodes[int(i)].image(camera)[int(j)] for i, j in zip(ep, t, strict=True)])


def frame_batch(
    episodes: list[Episode], ep_t: np.ndarray, use_proprio: bool, cameras: Sequence[str] = ("pixels",)
) -> dict:
    """The observation fields of frames (episode, t) = rows of `ep_t` (B, 2), collated: ``pixels``,
    ``instruction``, ``proprio`` (None without `use_proprio`), ``episode``, ``t``, and the images
    of every other camera of `cameras` under its key (e.g. ``wrist_pixels``). Datasets add their
    target."""
    ep, t = ep_t[:, 0].tolist(), ep_t[:, 1].tolist()
    batch = {
        "pixels": gather_pixels(episodes, ep_t[:, 0], ep_t[:, 1]),
        "instruction": [episodes[i].instruction for i in ep],
        "proprio": np.stack([episodes[i].agent_pos[j] for i, j in zip(ep, t, strict=True)]) if use_proprio else None,
        "episode": ep_t[:, 0].copy(),
        "t": ep_t[:, 1].copy(),
    }
    for camera in cameras:
        if camera != "pixels":
            batch[camera] = gather_pixels(episodes, ep_t[:, 0], ep_t[:, 1], camera)
    return batch


def _check_images_loaded(cls: str, episodes: list[Episode], cameras: Sequence[str]) -> tuple[str, ...]:
    """`cameras` as a tuple, or ValueError when an episode's images of one of them are not loaded."""
    cameras = tuple(cameras)
    if any(e.pixels is None for e in episodes):
        raise ValueError(f"{cls} needs episodes with pixels loaded (load_pixels)")
    for camera in cameras:
        if any(e.image(camera) is None for e in episodes):
            raise ValueError(f"{cls} needs the {camera} images of every episode loaded (load_pixels with cameras)")
    return cameras


def first_item(batch: dict) -> dict:
    """Item 0 of a collated batch (a dataset's `__getitem__` through its `__getitems__`)."""
    item = {k: None if v is None else v[0] for k, v in batch.items()}
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in item.items()}


def compute_action_stats(episodes: list[Episode], unnormalized_dims: Sequence[int] = (-1,)) -> ActionStats:
    """ActionStats over the actions of all episodes; `unnormalized_dims` are only clipped."""
    actions = np.concatenate([e.actions for e in episodes])
    A = actions.shape[1]
    mask = [True] * A
    for d in unnormalized_dims:
        if not -A <= d < A:
            raise DatasetError(f"unnormalized_dims entry {d} is out of range for {A}-dim actions")
        mask[d] = False
    return ActionStats.from_actions(actions, mask)


def compute_proprio_stats(episodes: list[Episode]) -> ActionStats:
    if any(e.agent_pos is None for e in episodes):
        raise DatasetError("use_proprio needs obs/agent_pos in every demonstration")
    return ActionStats.from_actions(np.concatenate([e.agent_pos for e in episodes]))


def split_episodes(episodes: list[Episode], val_fraction: float) -> tuple[list[Episode], list[Episode]]:
    """(train, validation): every round(1 / val_fraction)-th episode is held out (deterministic,
    spread over tasks and seeds as the files list them). `val_fraction` 0 = no validation set."""
    if val_fraction <= 0:
        return episodes, []
    every = max(2, round(1 / val_fraction))
    val = episodes[every - 1 :: every]
    train = [e for i, e in enumerate(episodes) if i % every != every - 1]
    if not val or not train:
        raise DatasetError(f"val_fraction {val_fraction} leaves no training or no validation episode")
    return train, val


def compute_point_stats(episodes: list[Episode]) -> ActionStats:
    """Discretisation range of the task points (grounding answers), per coordinate."""
    missing = [e.source for e in episodes if e.task_points is None]
    if missing:
        raise DatasetError(
            f"grounding co-training needs privileged/task_points in every demonstration; {missing[0]} has none "
            f"({len(missing)} of {len(episodes)} lack it). `ee-vla collect` records them for the ee_vla suite and "
            "Meta-World, or train without --grounding-fraction"
        )
    dims = {e.task_points.shape[1] for e in episodes}
    if len(dims) != 1:
        raise DatasetError(f"privileged/task_points dims differ between demonstrations: {sorted(dims)}")
    return ActionStats.from_actions(np.concatenate([e.task_points for e in episodes]))


def model_point_stats(model_dir: str | Path) -> ActionStats | None:
    """The grounding answers' discretisation range a model was trained with (its `ee_vla.json`
    meta.grounding.stats), None when it was trained without grounding questions. Continued training
    keeps it: recomputing it from new data would move every answer's bins under the model."""
    _, extra = _model_extra(model_dir)
    stats = extra.get("meta", {}).get("grounding", {}).get("stats")
    return ActionStats.from_dict(stats) if stats else None


def instruction_corpus(episodes: list[Episode], template: str) -> list[str]:
    """Prompt strings of the distinct instructions, to train the BPE text tokenizer on. The
    instruction is normalised as `VLA.prompt_ids` does before it fills the template."""
    from ee_vla.models.vla import prompt_text

    return sorted({prompt_text(e.instruction, template) for e in episodes})


def chunk_targets(episode: Episode, k: int) -> np.ndarray:
    """(T, k, A) chunk targets of an episode: the file's own (`Episode.expert_chunks`, their first k
    actions) or its actions chunked (`chunk_actions`)."""
    if episode.expert_chunks is None:
        return chunk_actions(episode.actions, k)
    if episode.expert_chunks.shape[1] < k:
        raise DatasetError(
            f"{episode.source}/expert_chunks holds {episode.expert_chunks.shape[1]}-action chunks; the model's "
            f"chunk_size is {k} (collect the on-policy data with this model, or without chunk labels)"
        )
    return episode.expert_chunks[:, :k]


def chunk_actions(actions: np.ndarray, k: int) -> np.ndarray:
    """(T, A) -> (T, k, A): row t holds actions t..t+k-1, the last action repeated past the end."""
    T = len(actions)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(k)[None, :], T - 1)
    return actions[idx]


def all_frames(episodes: list[Episode]) -> np.ndarray:
    """(N, 2) int64 (episode, step) of every frame, episode by episode."""
    return np.array([(i, t) for i, e in enumerate(episodes) for t in range(len(e))], dtype=np.int64)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Up to `k` distinct indices spread evenly over range(n), first and last included (a fixed
    evaluation sample)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).astype(int))


class _FrameDataset(torch.utils.data.Dataset):
    """Items are demonstration frames listed in `self.index` ((episode, step) rows); a subclass's
    `__getitems__` adds its targets to `self.frames(indices)`, and an item is row 0 of a batch."""

    episodes: list[Episode]
    use_proprio: bool
    index: np.ndarray
    cameras: tuple[str, ...] = ("pixels",)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return first_item(self.__getitems__([i]))

    def frames(self, indices: Sequence[int]) -> dict:
        """The observation fields of items `indices` (`frame_batch`)."""
        return frame_batch(
            self.episodes, self.index[np.asarray(indices, dtype=np.int64)], self.use_proprio, self.cameras
        )


class DemoDataset(_FrameDataset):
    """Training samples (episode, step) with their chunk targets as action tokens.

    Item: ``pixels`` (H, W, 3) uint8, ``instruction`` str, ``proprio`` (P,) float32 or None,
    ``target`` (k * A,) int64 token ids, ``episode`` and ``t`` ints, and the (H, W, 3) image of
    every other camera of `cameras` (the model's) under its key.
    """

    def __init__(
        self,
        episodes: list[Episode],
        action_tokenizer: ActionTokenizer,
        chunk_size: int,
        use_proprio: bool,
        cameras: Sequence[str] = ("pixels",),
    ):
        self.cameras = _check_images_loaded("DemoDataset", episodes, cameras)
        self.episodes = episodes
        self.chunk_size = chunk_size
        self.use_proprio = use_proprio
        self.targets = [action_tokenizer.encode_chunk(chunk_targets(e, chunk_size)) for e in episodes]
        self.index = all_frames(episodes)
        self.offsets = np.concatenate([[0], np.cumsum([len(e) for e in episodes])[:-1]]).astype(np.int64)
        """Dataset index of step 0 of each episode (item offsets[e] + t is step t of episode e)."""

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A whole batch at once, already collated (the DataLoader's batched fetch)."""
        batch = self.frames(indices)
        batch["target"] = np.stack([self.targets[i][j] for i, j in zip(batch["episode"], batch["t"], strict=True)])
        return batch


class _GroundingAnswers:
    """What both grounding datasets share: the question template and the answer, task points
    discretised by `tokenizer` into action-block tokens padded with `IGNORE` to `n_tokens`."""

    template: str
    tokenizer: ActionTokenizer
    n_tokens: int

    def _set_answer_format(self, point_tokenizer: ActionTokenizer, n_tokens: int) -> None:
        from ee_vla.models.vla import GROUNDING_TEMPLATE

        D = point_tokenizer.action_dim
        if n_tokens < D:
            raise ValueError(f"a grounding answer has {D} tokens but the chunk only {n_tokens}")
        self.template, self.tokenizer, self.n_tokens = GROUNDING_TEMPLATE, point_tokenizer, n_tokens

    def _answer(self, batch: dict, points: np.ndarray) -> dict:
        """`batch` with ``target`` (the answers to `points`, (B, D)) and ``template`` added."""
        batch["target"] = np.full((len(points), self.n_tokens), IGNORE, dtype=np.int64)
        batch["target"][:, : self.tokenizer.action_dim] = self.tokenizer.encode(points)
        batch["template"] = [self.template] * len(points)
        return batch


class GroundingDataset(_GroundingAnswers, _FrameDataset):
    """Grounding questions on demonstration frames: "where are the objects to <instruction>?"
    answered with the frame's task points (target xyz, goal xyz) discretised by `point_tokenizer`
    into action-block tokens, padded with `IGNORE` to `n_tokens` (the chunk length, so the items
    batch with `DemoDataset`'s). `n_items` frames are drawn once, uniformly over all frames, from
    `seed`. Items have `DemoDataset`'s keys plus ``template``."""

    def __init__(
        self,
        episodes: list[Episode],
        point_tokenizer: ActionTokenizer,
        n_tokens: int,
        use_proprio: bool,
        n_items: int,
        seed: int = 0,
        cameras: Sequence[str] = ("pixels",),
    ):
        self.cameras = _check_images_loaded("GroundingDataset", episodes, cameras)
        self._set_answer_format(point_tokenizer, n_tokens)
        self.episodes = episodes
        self.use_proprio = use_proprio
        frames = all_frames(episodes)
        pick = np.random.default_rng(seed).choice(len(frames), size=n_items, replace=n_items > len(frames))
        self.index = frames[pick]

    def __getitems__(self, indices: Sequence[int]) -> dict:
        batch = self.frames(indices)
        points = np.stack([self.episodes[i].task_points[j] for i, j in zip(batch["episode"], batch["t"], strict=True)])
        return self._answer(batch, points)


def scene_sources(episodes: list[Episode], cameras: Sequence[str] = ("pixels",)) -> tuple[list[str], dict]:
    """(env ids, env kwargs) the demonstrations were recorded with (the demonstration file's ``env_id``
    and ``env_args`` attributes), to render fresh scenes of the same tasks and camera, plus the
    arguments that make the envs render every camera of `cameras` (`sim_envs.camera_kwargs`; a
    camera the envs cannot render is a DatasetError)."""
    import json

    ids = sorted({str(e.attrs.get("env_id", "")) for e in episodes})
    if "" in ids:
        src = next(e.source for e in episodes if not e.attrs.get("env_id"))
        raise DatasetError(
            f"grounding on fresh scenes needs the env_id attribute of every demonstration; {src} has none"
        )
    try:
        from sim_envs import SUITE_ENV_IDS
    except ImportError as e:
        raise DatasetError(f"grounding on fresh scenes renders them with sim_envs, which needs mujoco ({e})") from e
    other = [i for i in ids if i not in SUITE_ENV_IDS]
    if other:
        raise DatasetError(
            f"grounding on fresh scenes needs ee_vla tabletop tasks {list(SUITE_ENV_IDS)}; the data also has {other}"
        )
    kwargs: dict = {}
    for e in episodes:
        args = e.attrs.get("env_args")
        if isinstance(args, str):
            kwargs = json.loads(args).get(str(e.attrs["env_id"]), kwargs)
            break
    H, W, _ = episodes[0].image_shape
    if kwargs.get("image_size", H) != H or H != W:
        raise DatasetError(f"the demonstrations' images are {H}x{W} but their env_args say {kwargs}")
    for camera in cameras:
        shape = episodes[0].camera_shapes.get(camera)
        if shape is not None and tuple(shape) != (H, W, 3):
            raise DatasetError(
                f"grounding on fresh scenes renders every camera at the demonstrations' {H}x{W}, but their "
                f"obs/{camera} images are {shape[0]}x{shape[1]} ({episodes[0].source})"
            )
    kwargs = {**kwargs, "image_size": H}
    if tuple(cameras) != ("pixels",):
        from sim_envs import camera_kwargs

        for env_id in ids:
            try:
                kwargs.update(camera_kwargs(env_id, cameras))
            except ValueError as e:
                raise DatasetError(f"grounding on fresh scenes cannot render every camera the model reads: {e}") from e
    return ids, kwargs


class SceneGroundingDataset(_GroundingAnswers, torch.utils.data.Dataset):
    """Grounding questions on freshly rendered scenes (`sim_envs.scenes`): item i is scene seed
    `first_seed + i` of `env_ids`, answered with its task points like `GroundingDataset`'s items.
    Make `n_items` as large as the run consumes and no scene is seen twice, so the network cannot
    memorise answers: it has to find the named objects. Items have `GroundingDataset`'s keys
    (``episode`` -1, ``t`` 0), the image of every camera of `cameras` included (`env_kwargs` must
    make the envs render them: `scene_sources`). Each process that renders (the main one or a DataLoader worker)
    starts its own renderer process (`SceneRendererProcess`, fork + exec: GL state must not be
    forked).

    With ``all_questions`` a batch of B items asks every question of each scene in turn
    (`SceneRenderer.render_questions`: each object named, 3-4 per scene), from the scenes of the
    batch's first indices: fewer renders, and the same image with answers told apart only by the
    instruction. A batch's items then depend on the batch (still the same for the same indices)."""

    def __init__(
        self,
        env_ids: Sequence[str],
        env_kwargs: dict,
        point_tokenizer: ActionTokenizer,
        n_tokens: int,
        use_proprio: bool,
        n_items: int,
        first_seed: int | None = None,
        all_questions: bool = False,
        cameras: Sequence[str] = ("pixels",),
    ):
        from sim_envs.scenes import SCENE_SEED_BASE

        self._set_answer_format(point_tokenizer, n_tokens)
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.env_ids = list(env_ids)
        self.env_kwargs = dict(env_kwargs)
        self.use_proprio = use_proprio
        self.n_items = n_items
        self.first_seed = SCENE_SEED_BASE if first_seed is None else first_seed
        self.all_questions = all_questions
        self.cameras = tuple(cameras)
        self._renderer = None
        self._pid = None

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> dict:
        return first_item(self.__getitems__([i]))

    def renderer(self):
        import atexit
        import os

        if self._renderer is None or self._pid != os.getpid():
            from sim_envs.scenes import SceneRendererProcess

            self._renderer, self._pid = SceneRendererProcess(self.env_ids, self.env_kwargs), os.getpid()
            atexit.register(self._renderer.close)
        return self._renderer

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_items):
            raise IndexError(f"scene index out of range 0..{self.n_items - 1}")
        seeds = (self.first_seed + idx).tolist()
        if self.all_questions and len(idx):
            scenes = self.renderer().render_questions(seeds, len(idx))
        else:
            scenes = self.renderer().render(seeds)
        batch = {
            "pixels": scenes["pixels"],
            "instruction": scenes["instruction"],
            "proprio": scenes["agent_pos"] if self.use_proprio else None,
            "episode": np.full(len(idx), -1, dtype=np.int64),
            "t": np.zeros(len(idx), dtype=np.int64),
        }
        for camera in self.cameras:
            if camera == "pixels":
                continue
            if camera not in scenes:
                raise DatasetError(
                    f"the scene renderer gave no {camera!r} images (its envs {self.env_ids} were made with "
                    f"{self.env_kwargs}); the model reads {list(self.cameras)}"
                )
            batch[camera] = scenes[camera]
        return self._answer(batch, scenes["task_points"])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_renderer": None, "_pid": None}  # a GL context does not pickle


class RepeatDataset(torch.utils.data.Dataset):
    """`dataset` repeated `times` times (item i is item i % len(dataset)): lets a long stream of
    fresh scenes sit beside a small demonstration set in one `MixedDataset` epoch at a fixed ratio."""

    def __init__(self, dataset, times: int):
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i % len(self.dataset)]

    def __getitems__(self, indices: Sequence[int]) -> dict:
        return self.dataset.__getitems__([i % len(self.dataset) for i in indices])


class MixedDataset(torch.utils.data.ConcatDataset):
    """Demonstration items followed by grounding items; every item has a ``template`` (None = the
    model's action prompt) so the two kinds batch together."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return item if "template" in item else {**item, "template": None}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        parts = []
        for d, (lo, hi) in zip(
            self.datasets, zip([0, *self.cumulative_sizes[:-1]], self.cumulative_sizes, strict=True), strict=True
        ):
            mine = idx[(idx >= lo) & (idx < hi)] - lo
            if len(mine):
                b = d.__getitems__(mine.tolist())
                parts.append({**b, "template": b.get("template", [None] * len(mine))})
        out = {}
        for k in parts[0]:
            vals = [p[k] for p in parts]
            if all(v is None for v in vals):
                out[k] = None
            elif isinstance(vals[0], list):
                out[k] = [x for v in vals for x in v]
            else:
                out[k] = np.concatenate(vals)
        return out


def collate(items: list[dict] | dict) -> dict:
    """Stack numpy fields, keep strings as lists; a field that is None in every item stays None
    (a string field may hold None entries). A dict is a batch already collated by a dataset's
    `__getitems__` and is returned as is."""
    if isinstance(items, dict):
        return items
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if all(v is None for v in vals):
            out[key] = None
        elif any(isinstance(v, str) for v in vals):
            out[key] = vals
        else:
            out[key] = np.stack([np.asarray(v) for v in vals])
    return out
