"""The policy runner's decoding: the worker thread, one chunk's decode and the decode deadline.

The worker decodes the newest valid image (older ones are skipped: the newest image wins) with
`policy.stream_action_chunk`, pushing each action into `ee_vla.streaming.ChunkSchedule` the moment it
is final. The policy is told when each action must be final (`action_deadline`); a chunk whose first
action comes later than `decode_deadline_s` after its image is dropped, and a decode still short of
its first action at its deadline counts as a deadline miss right then (`_stall`). With
`chunk_size_threshold` < 1 the next decode waits until the actions already planned last at most that
fraction of a chunk, so a robot decodes once per chunk instead of once per image. `RunnerDecode` is
a part of `ros_nodes.runner.PolicyRunner`, which sets the state these methods use.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ee_vla.streaming import ChunkSchedule, StreamedAction
from ros_nodes.diagnostics import Window
from ros_nodes.params import PolicyParams
from ros_nodes.runner_types import ActionChunkPolicy, CameraImage, Frame, State
from ros_nodes.safety import CauseLog, Watchdog, is_bad_input


class RunnerDecode:
    """Decoding part of `PolicyRunner` (runs on the worker thread, or in `process_pending` calls)."""

    # set by PolicyRunner.__init__
    params: PolicyParams
    clock: Callable[[], float]
    log: logging.Logger
    causes: CauseLog
    watchdog: Watchdog
    state: State
    policy: ActionChunkPolicy | None
    schedule: ChunkSchedule | None
    worker_nice: int
    _lock: threading.Lock
    _cv: threading.Condition
    _chunk_cv: threading.Condition
    _stop_evt: threading.Event
    cameras: tuple[str, ...]
    camera_topics: dict[str, str]
    _images: dict[str, CameraImage]
    _frame_seq: int
    _done_seq: int
    _instruction: str
    _joint_pos: np.ndarray | None
    _chunk_id: int
    _trajectory: tuple[int, np.ndarray] | None
    _sent_trajectory: tuple[float, np.ndarray] | None
    _fault: str | None
    _inputs_since: float | None
    _last_chunk_t: float | None
    _decoded_image_t: float | None
    _shift_warm_start: bool
    _inflight: tuple[int, float, bool] | None
    _missed_cid: int
    first_action_latency: Window
    decode_latency: Window
    iterations: Window
    chunks_done: int
    chunks_dropped: int
    deadline_misses: int
    model_errors: int
    last_error: str

    if TYPE_CHECKING:

        def bad_input(self, cause: str, message: str) -> None: ...  # RunnerInputs

    def _work(self) -> None:
        if self.worker_nice:
            try:  # per-thread on Linux: PRIO_PROCESS with a thread id
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except (AttributeError, OSError) as e:
                self.log.debug("could not renice the policy worker: %s", e)
        while not self._stop_evt.is_set():
            with self._lock:
                while self.state == "active":
                    if not self._new_images():
                        self._cv.wait(timeout=0.2)
                        continue
                    wait = self._decode_due(self.clock())
                    if wait == 0.0:
                        break
                    self._cv.wait(timeout=min(wait, 0.2))
                if self.state != "active":
                    return
            self.process_pending()

    def _planned_until(self) -> float | None:
        """When the actions already planned run out (None: none planned): the schedule's, or in
        trajectory mode the last trajectory sent (a decoded one not sent yet counts as a whole chunk)."""
        if self.params.command_type != "trajectory":
            return self.schedule.planned_until() if self.schedule is not None else None
        dt = 1.0 / self.params.control_hz
        if self._trajectory is not None:
            return self.clock() + len(self._trajectory[1]) * dt
        sent = self._sent_trajectory
        return None if sent is None else sent[0] + len(sent[1]) * dt

    def _decode_at(self) -> float | None:
        """Clock time from which the next chunk may be decoded under `chunk_size_threshold` (None:
        any time): when the actions still planned last `chunk_size_threshold` chunks."""
        p = self.params
        if p.chunk_size_threshold >= 1.0 or self.policy is None:
            return None
        until = self._planned_until()
        if until is None:
            return None
        return until - p.chunk_size_threshold * int(self.policy.chunk_size) / p.control_hz

    def _decode_due(self, now: float) -> float:
        """Seconds until the next decode is due (0.0: now; a nanosecond of float rounding counts as now)."""
        at = self._decode_at()
        return 0.0 if at is None or at - now <= 1e-9 else at - now

    def _new_images(self) -> bool:
        """Whether every camera the policy reads has an image newer than the last decode (call with
        `_lock` held). One camera: a new image; several: the newest of each, all new, so that one
        decode reads images of one moment rather than one new image beside the last decode's."""
        return all(c in self._images and self._images[c].seq > self._done_seq for c in self.cameras)

    def _old_cameras(self, images: dict[str, CameraImage], now: float) -> list[str]:
        """The cameras whose image in `images` is older than `image_timeout_s` at `now`."""
        return [c for c, im in images.items() if now - im.t > self.params.image_timeout_s]

    def process_pending(self) -> bool:
        """Decode the newest images not decoded yet (one per camera the policy reads); False when a
        camera has none newer than the last decode, one is older than `image_timeout_s` (skipped),
        or the next decode is not due yet (`chunk_size_threshold`)."""
        with self._lock:
            if self.state != "active" or not self._new_images():
                return False
            now = self.clock()
            if self._decode_due(now) > 0.0:
                return False
            images = {c: self._images[c] for c in self.cameras}
            self._done_seq = self._frame_seq
            frame = Frame(
                max(im.seq for im in images.values()),
                {c: im.rgb for c, im in images.items()},
                min(im.t for im in images.values()),
            )
            instruction = self._instruction or self.params.instruction
            joint_pos = self._joint_pos
            old = self._old_cameras(images, now)
            if not old:
                self._chunk_id += 1
            cid = self._chunk_id
        # Waiting for an input that has not arrived yet is how every start looks, not a bad input:
        # logged (INFO, once per 30 s), not counted; a wait that lasts shows as no chunk finishing
        # (the stall warning of /diagnostics).
        if old:  # a camera stopped and this image came in beside its last one: the watchdog's case
            self.causes.log(
                "wait:camera",
                "not decoding: no image newer than image_timeout_s="
                f"{self.params.image_timeout_s} s on {', '.join(self.camera_topics.get(c, c) for c in old)}",
                level=logging.INFO,
            )
            return False
        if not instruction:
            self.causes.log(
                "wait:instruction",
                f"not decoding: no instruction yet (publish on {self.params.instruction_topic!r} "
                "or set the `instruction` parameter)",
                level=logging.INFO,
            )
            return False
        obs: dict[str, Any] = {**frame.images, "instruction": instruction}
        if self.params.use_joint_state:
            if joint_pos is None:
                self.causes.log(
                    "wait:joint-state",
                    f"not decoding: use_joint_state is true and no valid JointState arrived on "
                    f"{self.params.joint_state_topic!r} yet",
                    level=logging.INFO,
                )
                return False
            obs["agent_pos"] = joint_pos
        with self._lock:
            self._inflight = (cid, frame.t, False)
        try:
            self._decode(cid, frame, obs)
        except Exception as e:  # noqa: BLE001 - the node must survive any model failure
            if is_bad_input(e):
                self.bad_input(
                    "obs:rejected",
                    f"the policy rejected the observation of chunk {cid}: {type(e).__name__}: {str(e)[:200]}",
                )
                return False
            self.model_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            with self._lock:
                self._fault = "model error"
            self.causes.log(
                f"model:{type(e).__name__}",
                f"policy failed on chunk {cid}: {self.last_error} (commanding stops until a chunk succeeds)",
                level=logging.ERROR,
            )
            self.log.debug("policy exception", exc_info=True)
            return False
        finally:
            with self._lock:
                self._inflight = None
        return True

    def _count_miss(self, cid: int) -> bool:
        """Count chunk `cid`'s deadline miss once (from the stall check or its late first action)."""
        with self._lock:
            if self._missed_cid >= cid:
                return False
            self._missed_cid = cid
        self.deadline_misses += 1
        return True

    def _stall(self, now: float) -> float | None:
        """Seconds without a finished chunk while valid images arrive (None: not stalled), counting
        the miss of a decode still short of its first action past its deadline."""
        p = self.params
        with self._lock:
            inflight, since, last = self._inflight, self._inputs_since, self._last_chunk_t
        if inflight is not None and not inflight[2] and now - inflight[1] > p.decode_deadline_s:
            if self._count_miss(inflight[0]):
                self.causes.log(
                    "decode:deadline",
                    f"chunk {inflight[0]} has no action {now - inflight[1]:.3f}s after its image, "
                    f"over decode_deadline_s={p.decode_deadline_s}",
                )
        if self.state != "active" or since is None or self.watchdog.state(now) != "ok":
            return None
        # The stall clock starts when a chunk became due: a decode held back by
        # chunk_size_threshold is not a stall.
        due = self._decode_at()
        waited = now - max(since, last if last is not None else since, due if due is not None else since)
        return waited if waited > p.decode_deadline_s else None

    def _warm_start_shift(self, image_t: float) -> int | None:
        """Control periods from the image of the last chunk decoded to `image_t`, at most a chunk
        (None: no chunk yet). The policy predicts a chunk from its image's time on, so the last
        chunk, shifted by this, is the guess of the next. A dropped chunk is not counted; a policy in
        a child process still finishes it, so there the shift then counts from an older image than
        the policy's last chunk (a worse guess, never a wrong action)."""
        with self._lock:
            last = self._decoded_image_t
        if last is None or self.policy is None:
            return None
        steps = round((image_t - last) * self.params.control_hz)
        return int(min(max(steps, 0), int(self.policy.chunk_size)))

    def _decode(self, cid: int, frame: Frame, obs: dict[str, Any]) -> None:
        """Decode chunk `cid` from `frame`: stream its actions, then record the finished chunk."""
        assert self.policy is not None
        if hasattr(self.policy, "warm_start_shift"):  # VLAPolicy, a fleet's robot, the policy process
            self.policy.warm_start_shift = self._warm_start_shift(frame.t) if self._shift_warm_start else None
        chunk_size = int(self.policy.chunk_size)
        stream = self.params.command_type != "trajectory"
        streamed = self._stream_chunk(cid, frame, obs, stream)
        if streamed is None:  # dropped, voided by a halt, or the runner stopped
            return
        actions, max_iteration = streamed
        if not actions:
            raise RuntimeError("policy streamed no actions")
        self._finish_chunk(cid, frame, actions, max_iteration, None if stream else chunk_size)

    def _stream_chunk(
        self, cid: int, frame: Frame, obs: dict[str, Any], stream: bool
    ) -> tuple[dict[int, np.ndarray], int] | None:
        """Run the policy on `obs`, pushing each action into the schedule as it is final (`stream`:
        one action per tick); returns the actions by index and the largest iteration count, or None when
        the chunk ends early (late first action, a halt voided it, or the runner stopped)."""
        policy, schedule = self.policy, self.schedule
        assert policy is not None and schedule is not None
        p = self.params
        dt = 1.0 / p.control_hz
        first_deadline = frame.t + p.decode_deadline_s
        begun = False
        d = int(policy.action_dim)
        actions: dict[int, np.ndarray] = {}
        max_iteration = 0

        def action_deadline(i: int) -> float | None:
            if begun:
                try:
                    t = schedule.deadline(cid, i)
                except KeyError:  # the chunk was dropped (halt, or replaced by a newer one)
                    t = None
                if t is not None:
                    return t
            return first_deadline + i * dt

        it = policy.stream_action_chunk(obs, action_deadline=action_deadline)
        try:
            for sa in it:
                if self._stop_evt.is_set() or self.state != "active":
                    return None
                now = self.clock()
                a = _checked_action(sa, d)
                if not actions:
                    if not self._first_action_on_time(cid, frame, now, first_deadline):
                        return None
                    if stream and self._past_due(cid, frame, now):
                        return None
                    if stream:
                        schedule.begin_chunk(cid, int(policy.chunk_size), observed_at=frame.t)
                        begun = True
                    with self._lock:
                        self._fault = None  # the policy works again
                actions[sa.index] = a
                max_iteration = max(max_iteration, int(sa.iteration))
                if stream:
                    try:
                        schedule.push(cid, dataclasses.replace(sa, action=a, t=now))
                    except KeyError:  # a halt reset the schedule: this chunk is void
                        return None
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return actions, max_iteration

    def _first_action_on_time(self, cid: int, frame: Frame, now: float, first_deadline: float) -> bool:
        """Record chunk `cid`'s first action at `now`; False (the chunk is dropped, its deadline miss
        counted) when it came after `first_deadline`."""
        self.first_action_latency.add(now - frame.t)
        with self._lock:
            self._inflight = (cid, frame.t, True)
        if now <= first_deadline:
            return True
        self._count_miss(cid)
        self.chunks_dropped += 1
        self.causes.log(
            "decode:deadline",
            f"dropping chunk {cid}: first action ready {now - frame.t:.3f}s after its image, "
            f"over decode_deadline_s={self.params.decode_deadline_s}",
        )
        return False

    def _past_due(self, cid: int, frame: Frame, now: float) -> bool:
        """With `chunk_start` observation, True (the chunk is dropped and the cause logged) when its
        first action came after every action of it fell due: the robot could run none of them, so
        the decode stops there (the decoder is free for a newer image) and the log says what to
        change, where the schedule would skip the chunk without a word."""
        p = self.params
        if p.chunk_start != "observation" or self.policy is None:
            return False
        lasts = int(self.policy.chunk_size) / p.control_hz
        if now - frame.t < lasts:
            return False
        self.chunks_dropped += 1
        self.causes.log(
            "decode:past_due",
            f"dropping chunk {cid}: its first action came {now - frame.t:.3f}s after its image, when "
            f"all of its actions had fallen due (a chunk of {int(self.policy.chunk_size)} lasts {lasts:.3f}s "
            f"at control_hz={p.control_hz:g}; chunk_start observation): decode faster, lower control_hz, "
            "or set chunk_start arrival to run late chunks from their first action",
        )
        return True

    def _finish_chunk(
        self, cid: int, frame: Frame, actions: dict[int, np.ndarray], max_iteration: int, trajectory_of: int | None
    ) -> None:
        """Statistics of a chunk decoded to its end; in trajectory mode (`trajectory_of`: the policy's
        chunk size) the chunk to send when it is complete."""
        self.decode_latency.add(self.clock() - frame.t)
        self.iterations.add(max_iteration)
        with self._lock:
            self._decoded_image_t = frame.t
            if trajectory_of is not None:
                if len(actions) == trajectory_of:
                    self._trajectory = (cid, np.stack([actions[i] for i in range(trajectory_of)]))
                else:
                    self.chunks_dropped += 1
        with self._lock:
            self._last_chunk_t = self.clock()
        with self._chunk_cv:
            self.chunks_done += 1
            self._chunk_cv.notify_all()

    def wait_for_chunks(self, n: int, timeout: float) -> bool:
        """Block until `n` chunks completed in total (tests and tools; real time)."""
        with self._chunk_cv:
            return self._chunk_cv.wait_for(lambda: self.chunks_done >= n, timeout=timeout)


def _checked_action(sa: StreamedAction, d: int) -> np.ndarray:
    """The streamed action as a float64 (d,) array; raises if its shape is wrong or it is not finite."""
    a = np.asarray(sa.action, dtype=np.float64)
    if a.shape != (d,) or not np.isfinite(a).all():
        raise ValueError(
            f"policy returned action {sa.index} of shape {a.shape} with "
            f"{'NaN/inf' if a.size and not np.isfinite(a).all() else 'wrong shape'}"
        )
    return a
