"""The policy runner's input callbacks: images, instructions and joint states from the transport.

They are cheap and never raise: a rejected input is counted and logged once per cause (`bad_input`)
and the node carries on. `RunnerInputs` is a part of `ros_nodes.runner.PolicyRunner`, which sets the
state these methods use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ros_nodes.images import ImageError, image_msg_to_rgb, image_to_rgb
from ros_nodes.params import CAMERA_TOPIC_PARAMS, PolicyParams
from ros_nodes.runner_types import CameraImage
from ros_nodes.safety import CauseLog, Watchdog


class RunnerInputs:
    """Input callbacks of `PolicyRunner` (inputs may arrive on any thread)."""

    # set by PolicyRunner.__init__
    params: PolicyParams
    clock: Callable[[], float]
    log: logging.Logger
    causes: CauseLog
    watchdog: Watchdog
    _lock: threading.Lock
    _cv: threading.Condition
    cameras: tuple[str, ...]
    camera_topics: dict[str, str]
    camera_images_received: dict[str, int]
    _images: dict[str, CameraImage]
    _frame_seq: int
    _instruction: str
    _joint_pos: np.ndarray | None
    _inputs_since: float | None
    _last_bad_t: float
    last_bad_input: str
    images_received: int

    MAX_INSTRUCTION_CHARS = 2000
    """Longer instructions are rejected on arrival (bad input) without decoding: what a robot is told
    fits in a few sentences, and the prompt's length sets the cost of every decode."""

    def bad_input(self, cause: str, message: str) -> None:
        """Count and log (once per `cause`, a key from a fixed set) one rejected input."""
        self.last_bad_input = message
        self._last_bad_t = self.clock()
        self.causes.log(cause, message)

    BAD_INPUT_CAUSES = ("image:", "instruction:", "joint_state:", "sample:", "obs:")
    """Prefixes of the causes that are rejected inputs (the rest: model errors, deadlines, ticks)."""

    def bad_inputs(self) -> int:
        """Inputs rejected so far (images, instructions, joint states, undecodable samples, observations)."""
        return sum(v for k, v in self.causes.counts.items() if k.startswith(self.BAD_INPUT_CAUSES))

    def on_bad_sample(self, topic: str, error: BaseException) -> None:
        """A sample on `topic` that did not decode (DDS transport): counted as bad input."""
        from ros_nodes.dds.transport import bad_sample_message

        self.bad_input(f"sample:{topic}:{type(error).__name__}", bad_sample_message(topic, error))

    def on_image_msg(self, msg: Any, now: float | None = None, camera: str = "pixels") -> bool:
        """A sensor_msgs/Image (either transport) of `camera` (the policy's observation key: `pixels`
        on `image_topic`, `wrist_pixels` on `wrist_image_topic`); False if rejected (logged once per
        cause)."""
        try:
            rgb = image_msg_to_rgb(msg, (self.params.image_height, self.params.image_width))
        except ImageError as e:
            self.bad_input(f"image:{e.cause}", f"dropping image{self._on_topic(camera)}: {e}")
            return False
        except Exception as e:  # noqa: BLE001 - fields of the wrong type: a malformed message
            self.bad_input(
                "image:malformed",
                f"dropping malformed image{self._on_topic(camera)}: {type(e).__name__}: {str(e)[:160]}",
            )
            return False
        return self.on_image(rgb, now, camera)

    def on_image_fields(
        self,
        height: int,
        width: int,
        encoding: str,
        step: int,
        data: Any,
        now: float | None = None,
        camera: str = "pixels",
    ) -> bool:
        """Like `on_image_msg`, from the fields."""
        try:
            rgb = image_to_rgb(height, width, encoding, step, data, (self.params.image_height, self.params.image_width))
        except ImageError as e:
            self.bad_input(f"image:{e.cause}", f"dropping image{self._on_topic(camera)}: {e}")
            return False
        return self.on_image(rgb, now, camera)

    def on_image(self, rgb: np.ndarray, now: float | None = None, camera: str = "pixels") -> bool:
        """A decoded HxWx3 uint8 RGB image of `camera`: the newest one replaces any of that camera not
        yet decoded. An image of a camera the policy does not read is ignored (False, not counted)."""
        if camera not in self.cameras:
            self.causes.log(
                f"ignored:camera:{camera}" if camera in CAMERA_TOPIC_PARAMS else "ignored:camera",
                f"ignoring an image of camera {camera[:40]!r}: the policy reads {', '.join(self.cameras)}",
                level=logging.INFO,
            )
            return False
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            self.bad_input(
                "image:array", f"dropping image array{self._on_topic(camera)} of shape {rgb.shape} dtype {rgb.dtype}"
            )
            return False
        t = self.clock() if now is None else now
        with self._lock:
            age = self.watchdog.age(t)
            if age is None or age > self.watchdog.timeout_s:
                self._inputs_since = t  # a new run of images of every camera: the stall clock starts here
            self._frame_seq += 1
            self._images[camera] = CameraImage(self._frame_seq, rgb, t)
            self.images_received += 1
            self.camera_images_received[camera] = self.camera_images_received.get(camera, 0) + 1
            self.watchdog.feed(t, camera)
            self._cv.notify_all()
        return True

    def _on_topic(self, camera: str) -> str:
        """' on <topic>' of `camera` for a log line (empty for a camera without a topic)."""
        topic = self.camera_topics.get(camera)
        return f" on {topic}" if topic else ""

    def on_instruction(self, text: Any) -> bool:
        """A new instruction (std_msgs/String data); empty, non-text or over-long ones are rejected
        (the previous one stays in use)."""
        if not isinstance(text, str) or not text.strip():
            self.bad_input("instruction:empty", "ignoring empty instruction (the previous one stays in use)")
            return False
        if len(text) > self.MAX_INSTRUCTION_CHARS:
            self.bad_input(
                "instruction:too-long",
                f"ignoring instruction of {len(text)} characters, over the limit of {self.MAX_INSTRUCTION_CHARS} "
                "(the previous one stays in use)",
            )
            return False
        text = text.strip()
        with self._lock:
            changed = text != self._instruction
            self._instruction = text
        if changed:
            self.log.info("instruction: %r", text)
        return True

    def on_joint_state(self, names: Sequence[str], positions: Sequence[float]) -> bool:
        """A sensor_msgs/JointState; positions with NaN/inf, or missing joints, are rejected."""
        try:
            pos = np.asarray(list(positions), dtype=np.float64)
            names = [str(n) for n in names]
        except (TypeError, ValueError) as e:
            self.bad_input(
                "joint_state:malformed", f"ignoring malformed JointState: {type(e).__name__}: {str(e)[:160]}"
            )
            return False
        if pos.ndim != 1 or pos.size == 0:
            self.bad_input("joint_state:empty", "ignoring JointState without positions")
            return False
        if self.params.joint_names:
            if len(names) != pos.size:
                self.bad_input(
                    "joint_state:names",
                    f"ignoring JointState with {len(names)} names but {pos.size} positions",
                )
                return False
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.params.joint_names if n not in index]
            if missing:
                self.bad_input("joint_state:missing", f"ignoring JointState without joints {missing}")
                return False
            pos = pos[[index[n] for n in self.params.joint_names]]
        if not np.isfinite(pos).all():
            self.bad_input("joint_state:nan", "ignoring JointState with NaN/inf positions")
            return False
        with self._lock:
            self._joint_pos = pos
        return True
