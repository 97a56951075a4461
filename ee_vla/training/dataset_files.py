"""Demonstration files for training: found, read and checked (`scan_dataset`), their images loaded
(`load_pixels`), and `DatasetError`, the refusal of a dataset that cannot be trained on.

The files are the HDF5 files `sim_envs` collects (schema, reader: `sim_envs.demo_file`). `scan_dataset`
reads and checks everything except the images, so a bad dataset (missing file, no demonstrations,
inconsistent dims, a camera the model reads that the files did not record: `check_cameras_recorded`)
fails before any model is built or any compute runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # sim_envs (with its simulator) is imported when files are read
    from sim_envs.demo_file import Episode

log = logging.getLogger(__name__)

HDF5_SUFFIXES = (".hdf5", ".h5")


class DatasetError(ValueError):
    """A demonstration dataset that cannot be trained on (missing, empty, inconsistent)."""


def find_dataset_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and directories (their *.hdf5 / *.h5, sorted) into a list of files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in HDF5_SUFFIXES and f.is_file())
            if not found:
                raise DatasetError(f"dataset directory {p} holds no {'/'.join(HDF5_SUFFIXES)} files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"dataset file {p} does not exist")
    if not files:
        raise DatasetError("no dataset files given")
    return files


def scan_dataset(paths: Sequence[str | Path], success_only: bool = True) -> list[Episode]:
    """Read and check every episode's actions, agent_pos and attributes (not the images).

    Raises:
        DatasetError: a file is missing or not HDF5, has no demonstrations, a demonstration lacks a
            key or an instruction, has NaN actions, or dims differ between demonstrations.
    """
    from sim_envs.demo_file import DemoFile, DemoFileError

    def keep(attrs: dict) -> bool:
        # on-policy data (`ee-vla dagger`): the labels are the expert's whatever the outcome
        failed = "success" in attrs and not bool(attrs["success"])
        return not (success_only and failed and attrs.get("labels") != "expert")

    episodes: list[Episode] = []
    skipped = 0
    for f in find_dataset_files(paths):
        try:
            demo_file = DemoFile(f)
            kept = demo_file.episodes(pixels=False, keep=keep)
        except DemoFileError as e:
            raise DatasetError(str(e)) from e
        skipped += len(demo_file) - len(kept)
        episodes += kept
    if skipped:
        log.info("skipped %d unsuccessful demonstrations (success_only)", skipped)
    if not episodes:
        raise DatasetError(f"no usable demonstrations in {list(map(str, paths))} ({skipped} unsuccessful skipped)")
    _check_consistent(episodes)
    return episodes


def how_to_record(camera: str) -> str:
    """How demonstration files get the images of `camera` (an observation key), for error messages."""
    if camera == "wrist_pixels":
        return (
            "record the gripper camera with `ee-vla collect --wrist-camera` (CollectConfig.wrist_camera; "
            "on-policy data from `ee-vla dagger` has it when the acting policy reads it, or with "
            "`ee-vla dagger --wrist-camera`)"
        )
    return f"record obs/{camera} in every demonstration"


def check_cameras_recorded(episodes: list[Episode], cameras: Sequence[str], what: str = "the model") -> None:
    """Fail before compute when a camera of `cameras` (the observation keys `what` reads) is not
    recorded in every demonstration (`obs/<camera>`), or its images differ in shape between them:
    a `DatasetError` naming the camera, the file and how to record it."""
    for camera in cameras:
        lacking = [e for e in episodes if camera not in e.camera_shapes]
        if lacking:
            files = sorted({str(e.path) for e in lacking})
            more = f" and {len(files) - 1} more files" if len(files) > 1 else ""
            raise DatasetError(
                f"{what} reads camera {camera!r} but {files[0]}{more} has no obs/{camera} ({len(lacking)} of "
                f"{len(episodes)} demonstrations lack it, e.g. {lacking[0].source}): {how_to_record(camera)}, "
                f"or train on cameras the data has ({', '.join(lacking[0].cameras)})"
            )
        shapes = {}
        for e in episodes:
            shapes.setdefault(e.camera_shapes[camera], e)
        if len(shapes) > 1:
            (s0, e0), (s1, e1) = list(shapes.items())[:2]
            raise DatasetError(f"obs/{camera} image shapes differ: {e0.source} has {s0}, {e1.source} has {s1}")


def _check_consistent(episodes: list[Episode]) -> None:
    first = episodes[0]
    for e in episodes[1:]:
        if e.actions.shape[1] != first.actions.shape[1]:
            raise DatasetError(
                f"action dims differ: {first.source} has {first.actions.shape[1]}, {e.source} has {e.actions.shape[1]}"
            )
        if e.image_shape != first.image_shape:
            raise DatasetError(
                f"image shapes differ: {first.source} has {first.image_shape}, {e.source} has {e.image_shape}"
            )
        p0 = None if first.agent_pos is None else first.agent_pos.shape[1]
        p1 = None if e.agent_pos is None else e.agent_pos.shape[1]
        if p0 != p1:
            raise DatasetError(f"agent_pos dims differ: {first.source} has {p0}, {e.source} has {p1}")


def check_against_model(episodes: list[Episode], action_dim: int, proprio_dim: int, what: str = "the policy") -> None:
    """Fail before compute when the data does not fit a model's action/proprio dims."""
    A = episodes[0].actions.shape[1]
    if A != action_dim:
        raise DatasetError(
            f"the dataset's actions have {A} dims but {what} expects {action_dim} ({episodes[0].source})"
        )
    if proprio_dim:
        P = None if episodes[0].agent_pos is None else episodes[0].agent_pos.shape[1]
        if P != proprio_dim:
            raise DatasetError(
                f"{what} uses proprio of {proprio_dim} dims but the dataset's obs/agent_pos has "
                f"{'none' if P is None else P} ({episodes[0].source})"
            )


def load_pixels(episodes: list[Episode], cameras: Sequence[str] = ("pixels",)) -> np.ndarray:
    """Read the `pixels` images of every episode into one (sum T, H, W, 3) uint8 array (returned);
    each episode's `pixels` is a view of it (`frames`, `frame_offset`). Every other camera of
    `cameras` (a model's observation keys, e.g. `wrist_pixels`) is read the same way into an array
    of its own (`Episode.camera_frames`, `Episode.image(camera)`)."""
    from sim_envs.demo_file import DemoFileError, read_pixels

    others = [c for c in cameras if c != "pixels"]
    if others:
        check_cameras_recorded(episodes, others)
    try:
        frames = read_pixels(episodes)
        nbytes = frames.nbytes + sum(read_pixels(episodes, c).nbytes for c in others)
    except DemoFileError as e:
        raise DatasetError(str(e)) from e
    log.info(
        "loaded %d episodes, %d steps, %.1f MB of images%s",
        len(episodes),
        sum(map(len, episodes)),
        nbytes / 2**20,
        f" ({', '.join(['pixels', *others])})" if others else "",
    )
    return frames
