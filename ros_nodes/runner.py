"""The policy runner: one transport-neutral core behind the rclpy node and the Cyclone DDS server.

A transport feeds inputs (`on_image_msg`, `on_instruction`, `on_joint_state`), calls the lifecycle
methods, and on every control-timer tick asks `tick()` what to send (an `Emit`, or None: send
nothing). Everything else is here:

* a worker thread decodes the newest valid image (older ones are skipped: the newest image wins)
  with `policy.stream_action_chunk`, pushing each action into `ee_vla.streaming.ChunkSchedule` the
  moment it is final, so `tick()` sends it as soon as it is final *and* due;
* the decode deadline: the policy is told when each action must be final (`action_deadline`), and a
  chunk whose first action comes later than `decode_deadline_s` after its image is dropped;
* halting: on deactivate, a stale image stream (watchdog) or a model error, one stop command is
  emitted and then nothing until the cause clears; every action is clipped to the limits first;
* bad inputs and model exceptions are logged once per cause and counted, never raised into the
  transport: the node stays up and says what is wrong on /diagnostics. An observation the policy
  rejects (`ee_vla.policy.ObservationError`, e.g. an instruction over its token cap) is bad input,
  not a model error;
* stall detection: while images arrive and no chunk has finished for longer than
  `decode_deadline_s`, /diagnostics says WARN (ERROR after `STALL_ERROR_FACTOR` times that), and a
  decode still short of its first action at its deadline counts as a deadline miss right then.

`trajectory` mode (JointTrajectory) sends each complete chunk once as timed points instead of one
action per tick.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ee_vla.streaming import ChunkSchedule, ScheduleConfig, StreamedAction
from ros_nodes.diagnostics import ERROR, OK, WARN, RateMonitor, Status, Window, fmt
from ros_nodes.images import ImageError, image_msg_to_rgb, image_to_rgb
from ros_nodes.params import LIVE_PARAMS, PolicyParams, with_control_rate
from ros_nodes.policy_process import ProcessPolicy, load_policy_here
from ros_nodes.safety import ActionLimits, CauseLog, Watchdog, is_bad_input

log = logging.getLogger(__name__)


@runtime_checkable
class ActionChunkPolicy(Protocol):
    """What the runner needs from a policy (`ee_vla.policy.VLAPolicy` satisfies it)."""

    chunk_size: int
    action_dim: int

    def reset(self) -> None: ...

    def stream_action_chunk(
        self, obs: dict[str, Any], action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]: ...


def load_policy(params: PolicyParams) -> ActionChunkPolicy:
    """Load `params.model_path` with the configured decoder and device: in a child process when
    `params.policy_process` (see `ros_nodes.policy_process`), else here."""
    if not params.model_path:
        raise ValueError("model_path is empty: set it to a directory saved by VLAPolicy.save_pretrained")
    from ee_vla.models import check_model_dir

    check_model_dir(params.model_path)  # at once, before a policy process spends seconds importing torch
    if params.policy_process:
        return ProcessPolicy(params)
    from ee_vla.threads import configure_threads

    configure_threads(params.threads)
    return load_policy_here(params)


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
class _Frame:
    seq: int
    rgb: np.ndarray
    t: float


State = Literal["unconfigured", "inactive", "active"]


class PolicyRunner:
    """Policy + schedule + safety, driven by a transport. Thread-safe: inputs, the worker and `tick`
    may run on different threads.

    Class attributes `MAX_INSTRUCTION_CHARS` and `STALL_ERROR_FACTOR` are the input bound and the
    stall escalation (see their docstrings).

    Args:
        params: the node's parameters.
        policy_factory: builds the policy on `configure()` (default: `load_policy`); tests and the
            DDS server inject one.
        clock: monotonic seconds; must be the policy's clock too (the decoder uses
            `time.perf_counter`), since action deadlines are absolute times.
        threaded: run decoding on a worker thread (False: call `process_pending()` yourself; tests).
        worker_nice: niceness added to the worker thread (Linux; default `params.decode_nice`
            for an in-process policy): a loaded CPU then wakes the control timer first.
    """

    def __init__(
        self,
        params: PolicyParams,
        policy_factory: Callable[[PolicyParams], ActionChunkPolicy] = load_policy,
        clock: Callable[[], float] = time.perf_counter,
        logger: logging.Logger | None = None,
        threaded: bool = True,
        worker_nice: int | None = None,
    ):
        params, rate_warning = with_control_rate(params)
        self.params = params
        self.worker_nice = params.decode_nice if worker_nice is None else worker_nice
        self.policy_factory = policy_factory
        self.clock = clock
        self.log = logger or log
        self.threaded = threaded
        self.causes = CauseLog(self.log, clock=clock)
        self.state: State = "unconfigured"
        self.policy: ActionChunkPolicy | None = None
        self.limits = ActionLimits(params.action_low, params.action_high)
        self.watchdog = Watchdog(params.image_timeout_s, clock)
        self.schedule: ChunkSchedule | None = None
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        if rate_warning:
            self.log.warning(rate_warning)
        self._frame: _Frame | None = None
        self._frame_seq = 0
        self._done_seq = 0
        self._instruction = ""
        self._joint_pos: np.ndarray | None = None
        self._chunk_id = 0
        self._trajectory: tuple[int, np.ndarray] | None = None
        self._sent_trajectory: tuple[float, np.ndarray] | None = None
        self._last_sent: np.ndarray | None = None
        self._halted_by: str | None = "inactive"
        self._fault: str | None = None
        self._stop_evt = threading.Event()
        self._worker: threading.Thread | None = None
        # statistics
        self.rate = RateMonitor()
        self.first_action_latency = Window()
        self.decode_latency = Window()
        self.iterations = Window()
        self.chunks_done = 0
        self.chunks_dropped = 0
        self.deadline_misses = 0
        self.model_errors = 0
        self.last_error = ""
        self.last_bad_input = ""
        self._last_bad_t = float("-inf")
        self.images_received = 0
        self._chunk_cv = threading.Condition()
        # stall detection: when the current run of valid images began, when a chunk last finished,
        # the decode in flight (chunk id, image time, first action out?) and the chunk ids whose
        # deadline miss is already counted
        self._inputs_since: float | None = None
        self._last_chunk_t: float | None = None
        self._inflight: tuple[int, float, bool] | None = None
        self._missed_cid = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    def configure(self) -> None:
        """Load the policy and check it against the parameters (raises with a reason on failure)."""
        if self.state != "unconfigured":
            raise RuntimeError(f"configure() in state {self.state}")
        policy = self.policy_factory(self.params)
        try:
            proprio = self._check_policy(policy)
            if self.params.warmup:
                self._warm_up(policy, proprio)
        except BaseException:
            close = getattr(policy, "close", None)  # e.g. the policy's child process
            if close is not None:
                close()
            raise
        self.policy = policy
        p = self.params
        self.schedule = ChunkSchedule(
            ScheduleConfig(
                control_hz=p.control_hz,
                on_new_chunk=p.on_new_chunk,  # type: ignore[arg-type]
                on_empty=p.on_empty,  # type: ignore[arg-type]
                keep_dims_on_zero=p.keep_dims_on_zero,
                max_hold_s=p.max_hold_s if p.max_hold_s > 0 else float("inf"),
            ),
            clock=self.clock,
        )
        self.state = "inactive"
        self.log.info(
            "configured: policy chunk_size=%d action_dim=%d decoder=%s device=%s command_type=%s",
            policy.chunk_size,
            policy.action_dim,
            p.decoder,
            p.device,
            p.command_type,
        )

    def _check_policy(self, policy: ActionChunkPolicy) -> int:
        """The loaded policy against the parameters (raises with the reason); its proprio dims."""
        self.limits.check_dim(int(policy.action_dim))
        proprio = int(getattr(getattr(policy, "vla", None), "proprio_dim", 0) or 0)
        if proprio and not self.params.use_joint_state:
            raise ValueError(
                f"the policy needs agent_pos ({proprio} dims): set use_joint_state=true and publish "
                f"JointState on {self.params.joint_state_topic!r}"
            )
        if self.params.command_type == "trajectory" and len(self.params.joint_names) != policy.action_dim:
            raise ValueError(
                f"joint_names has {len(self.params.joint_names)} names but the policy outputs "
                f"{policy.action_dim}-dim actions (trajectory points need one position per joint)"
            )
        return proprio

    MAX_INSTRUCTION_CHARS = 2000
    """Longer instructions are rejected on arrival (bad input) without decoding: what a robot is told
    fits in a few sentences, and the prompt's length sets the cost of every decode."""

    STALL_ERROR_FACTOR = 5.0
    """/diagnostics goes from WARN to ERROR when no chunk has finished for this many times
    `decode_deadline_s` while images arrive."""

    WARMUP_INSTRUCTION = "pick up the object"
    """The warm-up's instruction when the `instruction` parameter is empty."""

    def _warm_up(self, policy: ActionChunkPolicy, proprio: int) -> None:
        """One decode of a blank 64x64 image (zeros for agent_pos), then `reset`: the engine of the
        policy's device is built (compiled, CUDA graphs captured) now rather than in the first real
        chunk. A policy that cannot decode it fails configure, with the reason."""
        obs: dict[str, Any] = {
            "pixels": np.zeros((64, 64, 3), np.uint8),
            "instruction": self.params.instruction or self.WARMUP_INSTRUCTION,
        }
        if proprio:
            obs["agent_pos"] = np.zeros(proprio, np.float32)
        t = time.perf_counter()
        try:
            n = sum(1 for _ in policy.stream_action_chunk(obs))
        except Exception as e:
            raise RuntimeError(f"warm-up decode failed: {type(e).__name__}: {e}") from e
        policy.reset()
        if n != policy.chunk_size:
            raise RuntimeError(f"warm-up decode gave {n} actions, the policy's chunk_size is {policy.chunk_size}")
        self.log.info("warm-up decode: %d actions in %.2f s", n, time.perf_counter() - t)

    def activate(self) -> None:
        """Start decoding and commanding (the first chunk starts with the next valid image)."""
        if self.state != "inactive":
            raise RuntimeError(f"activate() in state {self.state}")
        assert self.policy is not None and self.schedule is not None
        self.policy.reset()
        self.schedule.reset()
        self.watchdog.reset()
        with self._lock:
            self._done_seq = self._frame_seq  # do not act on an image from before activation
            self._trajectory = None
            self._sent_trajectory = None
            self._fault = None
            self._halted_by = None
            self._inputs_since = None
            self._inflight = None
            self.state = "active"
        self._stop_evt.clear()
        if self.threaded:
            self._worker = threading.Thread(target=self._work, name="ee_vla-policy-worker", daemon=True)
            self._worker.start()
        self.log.info(
            "active: commanding at %.1f Hz (%s)",
            self.params.control_hz,
            "DRY RUN" if self.params.dry_run else "publishing",
        )

    def deactivate(self) -> Emit | None:
        """Stop decoding; returns the stop command to send (None if nothing was ever sent)."""
        if self.state != "active":
            raise RuntimeError(f"deactivate() in state {self.state}")
        with self._lock:
            self.state = "inactive"
            self._cv.notify_all()
        self._stop_evt.set()
        self._join_worker()
        stop = self._stop_emit("deactivate")
        with self._lock:
            self._halted_by = "inactive"
        assert self.schedule is not None
        self.schedule.reset()
        return stop

    def cleanup(self) -> None:
        """Free the policy (and its device memory, or its process)."""
        if self.state == "active":
            self.deactivate()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()
        self.policy = None
        self.schedule = None
        self.state = "unconfigured"
        gc.collect()
        # Only where this process decoded on a GPU is there a cache to give back. A process whose
        # policy ran in a child never imported torch, and importing it just to ask would take seconds
        # of a shutdown that must end within launch's SIGTERM grace.
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def shutdown(self) -> Emit | None:
        """Deactivate (returning the stop command) and clean up, from any state."""
        stop = self.deactivate() if self.state == "active" else None
        self.cleanup()
        return stop

    def _join_worker(self) -> None:
        w, self._worker = self._worker, None
        if w is not None and w is not threading.current_thread():
            w.join(timeout=5.0)
            if w.is_alive():
                self.log.warning("policy worker still decoding after deactivate; it will exit after this chunk")

    def update_params(self, params: PolicyParams) -> list[str]:
        """Apply the live subset of new parameters now; returns the names that wait for reconfigure."""
        old = self.params
        params, _ = with_control_rate(params)  # control_hz 0 compares as the rate it resolves to
        later = [
            f.name
            for f in dataclasses.fields(PolicyParams)
            if f.name not in LIVE_PARAMS and getattr(params, f.name) != getattr(old, f.name)
        ]
        if self.state != "unconfigured" and later:
            # Keep the configured values of the others until the next configure.
            params = dataclasses.replace(old, **{n: getattr(params, n) for n in LIVE_PARAMS})
        limits = ActionLimits(params.action_low, params.action_high)
        if self.policy is not None:
            limits.check_dim(int(self.policy.action_dim))
        self.limits = limits
        self.watchdog.timeout_s = params.image_timeout_s
        self.params = params
        return later

    # ---- inputs (transport callbacks: cheap, never raise) -------------------------------------
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

    def on_image_msg(self, msg: Any, now: float | None = None) -> bool:
        """A sensor_msgs/Image (either transport); False if rejected (logged once per cause)."""
        try:
            rgb = image_msg_to_rgb(msg, (self.params.image_height, self.params.image_width))
        except ImageError as e:
            self.bad_input(f"image:{e.cause}", f"dropping image: {e}")
            return False
        except Exception as e:  # noqa: BLE001 - fields of the wrong type: a malformed message
            self.bad_input("image:malformed", f"dropping malformed image: {type(e).__name__}: {str(e)[:160]}")
            return False
        return self.on_image(rgb, now)

    def on_image_fields(
        self, height: int, width: int, encoding: str, step: int, data: Any, now: float | None = None
    ) -> bool:
        """Like `on_image_msg`, from the fields."""
        try:
            rgb = image_to_rgb(height, width, encoding, step, data, (self.params.image_height, self.params.image_width))
        except ImageError as e:
            self.bad_input(f"image:{e.cause}", f"dropping image: {e}")
            return False
        return self.on_image(rgb, now)

    def on_image(self, rgb: np.ndarray, now: float | None = None) -> bool:
        """A decoded HxWx3 uint8 RGB image: the newest one replaces any not yet decoded."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            self.bad_input("image:array", f"dropping image array of shape {rgb.shape} dtype {rgb.dtype}")
            return False
        t = self.clock() if now is None else now
        with self._lock:
            age = self.watchdog.age(t)
            if age is None or age > self.watchdog.timeout_s:
                self._inputs_since = t  # a new run of images: the stall clock starts here
            self._frame_seq += 1
            self._frame = _Frame(self._frame_seq, rgb, t)
            self.images_received += 1
            self.watchdog.feed(t)
            self._cv.notify_all()
        return True

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

    # ---- decoding -----------------------------------------------------------------------------
    def _work(self) -> None:
        if self.worker_nice:
            try:  # per-thread on Linux: PRIO_PROCESS with a thread id
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except (AttributeError, OSError) as e:
                self.log.debug("could not renice the policy worker: %s", e)
        while not self._stop_evt.is_set():
            with self._lock:
                while self.state == "active" and (self._frame is None or self._frame.seq == self._done_seq):
                    self._cv.wait(timeout=0.2)
                if self.state != "active":
                    return
            self.process_pending()

    def process_pending(self) -> bool:
        """Decode the newest image not decoded yet; False when there was none or it was skipped."""
        with self._lock:
            frame = self._frame
            if self.state != "active" or frame is None or frame.seq == self._done_seq:
                return False
            self._done_seq = frame.seq
            instruction = self._instruction or self.params.instruction
            joint_pos = self._joint_pos
            self._chunk_id += 1
            cid = self._chunk_id
        if not instruction:
            self.bad_input(
                "obs:no-instruction",
                f"not decoding: no instruction yet (publish on {self.params.instruction_topic!r} "
                "or set the `instruction` parameter)",
            )
            return False
        obs: dict[str, Any] = {"pixels": frame.rgb, "instruction": instruction}
        if self.params.use_joint_state:
            if joint_pos is None:
                self.bad_input(
                    "obs:no-joint-state",
                    f"not decoding: use_joint_state is true and no valid JointState arrived on "
                    f"{self.params.joint_state_topic!r} yet",
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
        waited = now - max(since, last if last is not None else since)
        return waited if waited > p.decode_deadline_s else None

    def _decode(self, cid: int, frame: _Frame, obs: dict[str, Any]) -> None:
        policy, schedule = self.policy, self.schedule
        assert policy is not None and schedule is not None
        p = self.params
        dt = 1.0 / p.control_hz
        first_deadline = frame.t + p.decode_deadline_s
        stream = p.command_type != "trajectory"
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
                    return
                now = self.clock()
                a = np.asarray(sa.action, dtype=np.float64)
                if a.shape != (d,) or not np.isfinite(a).all():
                    raise ValueError(
                        f"policy returned action {sa.index} of shape {a.shape} with "
                        f"{'NaN/inf' if a.size and not np.isfinite(a).all() else 'wrong shape'}"
                    )
                if not actions:
                    self.first_action_latency.add(now - frame.t)
                    with self._lock:
                        self._inflight = (cid, frame.t, True)
                    if now > first_deadline:
                        self._count_miss(cid)
                        self.chunks_dropped += 1
                        self.causes.log(
                            "decode:deadline",
                            f"dropping chunk {cid}: first action ready {now - frame.t:.3f}s after its image, "
                            f"over decode_deadline_s={p.decode_deadline_s}",
                        )
                        return
                    if stream:
                        schedule.begin_chunk(cid, int(policy.chunk_size))
                        begun = True
                    with self._lock:
                        self._fault = None  # the policy works again
                actions[sa.index] = a
                max_iteration = max(max_iteration, int(sa.iteration))
                if stream:
                    try:
                        schedule.push(cid, dataclasses.replace(sa, action=a, t=now))
                    except KeyError:  # a halt reset the schedule: this chunk is void
                        return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if not actions:
            raise RuntimeError("policy streamed no actions")
        self.decode_latency.add(self.clock() - frame.t)
        self.iterations.add(max_iteration)
        with self._lock:
            if not stream:
                if len(actions) == policy.chunk_size:
                    self._trajectory = (cid, np.stack([actions[i] for i in range(policy.chunk_size)]))
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

    # ---- control tick -------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> Emit | None:
        """What to send at this control tick (None: send nothing)."""
        now = self.clock() if now is None else now
        if self.state != "active":
            return None
        assert self.schedule is not None
        with self._lock:
            fault = self._fault
        wd = self.watchdog.state(now)
        halt = "stale input" if wd == "stale" else fault
        if halt is not None:
            if self._halted_by is None:
                self._halted_by = halt
                self.log.warning("halting: %s (one stop command, then nothing until it clears)", halt)
                stop = self._stop_emit(halt, now)
                self.schedule.reset()
                with self._lock:
                    self._trajectory = None
                return stop
            return None
        if self._halted_by is not None:
            self.log.info("resuming after %s", self._halted_by)
            self._halted_by = None
        if self.params.command_type == "trajectory":
            with self._lock:
                traj, self._trajectory = self._trajectory, None
            if traj is None:
                return None
            clipped = self.limits.clip(traj[1])
            if clipped is None:
                return None
            self._sent_trajectory = (now, clipped)
            self._last_sent = clipped[-1]
            return Emit("trajectory", clipped, "chunk", traj[0], 1.0 / self.params.control_hz)
        cmd = self.schedule.tick(now)
        if cmd.action is None:
            return None
        a = self.limits.clip(cmd.action)
        if a is None:
            self.causes.log("command:invalid", f"not sending a non-finite or wrong-size command ({cmd.source})")
            return None
        self._last_sent = a
        return Emit("action", a, cmd.source, cmd.chunk_id)

    def _stop_emit(self, why: str, now: float | None = None) -> Emit | None:
        """Zeros (keeping `keep_dims_on_zero`) for streamed commands; for trajectories, hold where the
        arm is (JointState when used, else the point of the last trajectory due now)."""
        if self._last_sent is None and self._sent_trajectory is None:
            return None
        d = self.limits.dim
        if self.params.command_type == "trajectory":
            now = self.clock() if now is None else now
            hold = self._joint_pos if self.params.use_joint_state else None
            if hold is None and self._sent_trajectory is not None:
                t0, pts = self._sent_trajectory
                i = int(np.clip(np.floor((now - t0) * self.params.control_hz), 0, len(pts) - 1))
                hold = pts[i]
            if hold is None:
                return None
            return Emit("stop", np.asarray(hold, dtype=np.float64), f"stop:{why}", dt=1.0 / self.params.control_hz)
        z = np.zeros(d)
        keep = [i for i in self.params.keep_dims_on_zero if i < d]
        if self._last_sent is not None and keep:
            z[keep] = self._last_sent[keep]
        return Emit("stop", z, f"stop:{why}")

    def record_sent(self, now: float | None = None) -> None:
        """The transport sent (or, dry run, would have sent) a command: feeds the publish-rate monitor."""
        self.rate.event(self.clock() if now is None else now)

    # ---- diagnostics --------------------------------------------------------------------------
    def status(self, now: float | None = None, name: str = "ee_vla: policy node") -> Status:
        """The node's DiagnosticStatus: publish rate, decode latency p50/p95, iterations, watchdog."""
        now = self.clock() if now is None else now
        p = self.params
        stalled = self._stall(now)
        wd = self.watchdog.state(now) if self.state == "active" else "inactive"
        rate = self.rate.rate(now)
        age = self.watchdog.age(now)
        values = {
            "state": self.state,
            "dry_run": str(p.dry_run).lower(),
            "command_type": p.command_type,
            "command_topic": p.resolved_command_topic,
            "publish_rate_hz": f"{rate:.1f}",
            "target_rate_hz": f"{p.control_hz:.1f}",
            "commands_sent": str(self.rate.total),
            "decode_latency_p50_ms": fmt(self.decode_latency.percentile(50), 1e3),
            "decode_latency_p95_ms": fmt(self.decode_latency.percentile(95), 1e3),
            "decode_latency_p99_ms": fmt(self.decode_latency.percentile(99), 1e3),
            "first_action_latency_p50_ms": fmt(self.first_action_latency.percentile(50), 1e3),
            "first_action_latency_p95_ms": fmt(self.first_action_latency.percentile(95), 1e3),
            "iterations_per_chunk_mean": fmt(self.iterations.mean()),
            "iterations_per_chunk_last": fmt(self.iterations.last(), digits=0),
            "chunks_done": str(self.chunks_done),
            "chunks_dropped": str(self.chunks_dropped),
            "deadline_misses": str(self.deadline_misses),
            "watchdog": wd,
            "watchdog_trips": str(self.watchdog.trips),
            "image_age_ms": fmt(age, 1e3, 0),
            "images_received": str(self.images_received),
            "bad_inputs": str(self.bad_inputs()),
            "last_bad_input": self.last_bad_input,
            "model_errors": str(self.model_errors),
            "last_error": self.last_error,
            "no_chunk_for_s": fmt(stalled, digits=1),
        }
        if self.schedule is not None:
            for k, v in sorted(self.schedule.counts.items()):
                values[f"ticks_{k}"] = str(v)
        level, message = OK, "commanding" if not p.dry_run else "dry run: logging commands"
        if self.state != "active":
            level, message = OK, self.state
        elif self._fault is not None:
            level, message = ERROR, f"halted: {self._fault}: {self.last_error}"
        elif wd == "stale":
            level, message = WARN, f"halted: no valid image for {fmt(age, digits=2)} s (> {p.image_timeout_s} s)"
        elif wd == "waiting":
            level, message = WARN, f"waiting for images on {p.image_topic}"
        elif stalled is not None:
            level = ERROR if stalled > self.STALL_ERROR_FACTOR * p.decode_deadline_s else WARN
            with self._lock:
                inflight = self._inflight
            why = (
                f"decoding chunk {inflight[0]} for {now - inflight[1]:.1f} s"
                if inflight is not None
                else f"last bad input: {self.last_bad_input}"
                if self._last_bad_t >= now - stalled
                else "no decode running"
            )
            message = f"no chunk finished for {stalled:.1f} s (decode_deadline_s={p.decode_deadline_s}): {why}"
        elif self.rate.total > 1 and rate < 0.9 * p.control_hz and p.command_type != "trajectory":
            level, message = WARN, f"publish rate {rate:.1f} Hz below target {p.control_hz:.1f} Hz"
        return Status(level=level, name=name, message=message, hardware_id=p.model_path or "ee_vla", values=values)
