"""The policy runner's vocabulary: what it needs from a policy, what it hands the transport to send,
and the image it decodes. Free of the runner itself, so the runner's parts and the message builders
import it without importing the runner (`ros_nodes.runner` re-exports these names)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ee_vla.streaming import StreamedAction


@runtime_checkable
class ActionChunkPolicy(Protocol):
    """What the runner needs from a policy (`ee_vla.policy.VLAPolicy` satisfies it)."""

    chunk_size: int
    action_dim: int

    def reset(self) -> None: ...

    def stream_action_chunk(
        self, obs: dict[str, Any], action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]: ...


@dataclass(frozen=True)
class Emit:
    """Something to send now, before conversion to a message.

    kind ``action``: `actions` is one (action_dim,) action (already clipped);
    ``trajectory``: (n, action_dim) actions to execute `dt` apart, the first at `dt`;
    ``stop``: (action_dim,) the stop/hold action (zeros, or for trajectories the position to hold);
    an empty `actions` means there is nothing meaningful to hold and no message should be sent.
    """

    kind: Literal["action", "trajectory", "stop"]
    actions: np.ndarray
    source: str
    chunk_id: int | None = None
    dt: float = 0.0


@dataclass
class CameraImage:
    """One received image of a camera: its sequence number (counted over all cameras), HxWx3 uint8
    RGB pixels and arrival time."""

    seq: int
    rgb: np.ndarray
    t: float


@dataclass
class Frame:
    """The images one decode reads: the sequence number of the newest, each camera's HxWx3 uint8 RGB
    image by observation key (`pixels`, `wrist_pixels`, ...) and the arrival time of the oldest: an
    observation is as old as its oldest image, and deadlines and latencies count from it."""

    seq: int
    images: dict[str, np.ndarray]
    t: float


State = Literal["unconfigured", "inactive", "active"]
