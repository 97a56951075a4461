"""The policy runner: one transport-neutral core behind the rclpy node and the Cyclone DDS server.

A transport feeds inputs (`on_image_msg`, `on_instruction`, `on_joint_state`), calls the lifecycle
methods, and on every control-timer tick asks `tick()` what to send (an `Emit`, or None: send
nothing). Everything else is here and in the runner's parts:

* a worker thread decodes the newest valid image (older ones are skipped: the newest image wins)
  with `policy.stream_action_chunk`, pushing each action into `ee_vla.streaming.ChunkSchedule` the
  moment it is final, so `tick()` sends it as soon as it is final *and* due (`ros_nodes.runner_decode`);
* a policy that reads several cameras (`pixels`, `wrist_pixels`: its `cameras`) gets the newest
  image of each; the next decode waits until every camera has delivered an image newer than the
  last decode, and none is older than `image_timeout_s`. The watchdog and the status watch each
  camera and name the topic of the one that is missing or stale;
* the decode deadline: the policy is told when each action must be final (`action_deadline`), and a
  chunk whose first action comes later than `decode_deadline_s` after its image is dropped;
* halting: on deactivate, a stale image stream of any camera (watchdog) or a model error, one stop
  command is emitted and then nothing until the cause clears; every action is clipped to the limits
  first;
* bad inputs and model exceptions are logged once per cause and counted, never raised into the
  transport: the node stays up and says what is wrong on /diagnostics (`ros_nodes.runner_inputs`,
  `ros_nodes.runner_status`). An observation the policy rejects (`ee_vla.policy.ObservationError`,
  e.g. an instruction over its token cap) is bad input, not a model error;
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
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ee_vla.streaming import ChunkSchedule
from ros_nodes.diagnostics import RateMonitor, Window
from ros_nodes.params import CAMERA_TOPIC_PARAMS, LIVE_PARAMS, PolicyParams, with_contract
from ros_nodes.policy_process import ProcessPolicy, load_policy_here
from ros_nodes.runner_decode import RunnerDecode
from ros_nodes.runner_inputs import RunnerInputs
from ros_nodes.runner_status import RunnerStatus
from ros_nodes.runner_types import ActionChunkPolicy, CameraImage, Emit, State
from ros_nodes.safety import ActionLimits, CauseLog, Watchdog

__all__ = ["ActionChunkPolicy", "Emit", "PolicyRunner", "State", "load_policy", "policy_cameras"]

log = logging.getLogger(__name__)


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


def policy_cameras(policy: ActionChunkPolicy) -> tuple[str, ...]:
    """The observation keys of the images `policy` reads (`VLA.cameras`: `pixels`, `wrist_pixels`,
    ...); `("pixels",)` for a policy that does not say."""
    cameras = getattr(getattr(policy, "vla", None), "cameras", None)
    return tuple(cameras) if cameras else ("pixels",)


def shifts_warm_start(params: PolicyParams) -> bool:
    """Whether the runner gives each call the measured warm-start shift (`RunnerDecode._warm_start_shift`):
    only when the decoder warm-starts and runs until it converges. A decode capped at a few
    iterations keeps part of its guess, and a guess aligned with the last plan holds the robot to that
    plan: on PickCube over DDS, ceed_cap with a cap of 1 and the guess in the prefill solved 31 of 40
    episodes with the shift and 40 of 40 without it (docs/ros.md). Capped decoders keep the policy's
    own shift (`n_action_steps`), the setting they were evaluated with."""
    try:
        dc = params.runtime_config().decode_config()
    except ValueError:
        return False
    return dc.method != "ar" and dc.init == "warm" and dc.max_iterations is None


class PolicyRunner(RunnerInputs, RunnerDecode, RunnerStatus):
    """Policy + schedule + safety, driven by a transport. Thread-safe: inputs, the worker and `tick`
    may run on different threads.

    Class attributes `MAX_INSTRUCTION_CHARS` (from `RunnerInputs`) and `STALL_ERROR_FACTOR` (from
    `RunnerStatus`) are the input bound and the stall escalation (see their docstrings).

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
        given = params
        params, rate_warning = with_contract(params)
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
        self.cameras: tuple[str, ...] = ("pixels",)
        """The observation keys of the images the policy reads (set at configure, from the policy)."""
        self.camera_topics: dict[str, str] = params.camera_topics(self.cameras)
        """The image topic of each camera the policy reads (`CAMERA_TOPIC_PARAMS`)."""
        self.watchdog = Watchdog(params.image_timeout_s, clock, inputs=self.cameras)
        self.schedule: ChunkSchedule | None = None
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        if rate_warning:
            self.log.warning(rate_warning)
        if params.use_joint_state and not given.use_joint_state:
            self.log.info(
                "use_joint_state: on, the policy reads agent_pos (JointState positions on %r)", params.joint_state_topic
            )
        self._images: dict[str, CameraImage] = {}  # the newest image of each camera
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
        self.camera_images_received: dict[str, int] = {}
        self._chunk_cv = threading.Condition()
        # stall detection: when the current run of valid images began, when a chunk last finished,
        # the decode in flight (chunk id, image time, first action out?) and the chunk ids whose
        # deadline miss is already counted
        self._inputs_since: float | None = None
        self._last_chunk_t: float | None = None
        # image time of the last chunk decoded to its end: the policy's warm start shifts that chunk
        # by the control periods from it to the next image decoded
        self._decoded_image_t: float | None = None
        self._shift_warm_start = False  # set at configure: see RunnerDecode._warm_start_shift
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
            cameras = policy_cameras(policy)
            topics = self.params.camera_topics(cameras)  # a camera without a topic parameter: refused
            if self.params.warmup:
                self._warm_up(policy, proprio, cameras)
        except BaseException:
            close = getattr(policy, "close", None)  # e.g. the policy's child process
            if close is not None:
                close()
            raise
        self.policy = policy
        with self._lock:
            self.cameras, self.camera_topics = cameras, topics
            self.watchdog.watch(cameras)
            self._images = {c: im for c, im in self._images.items() if c in cameras}
        self._log_cameras()
        p = self.params
        self._shift_warm_start = shifts_warm_start(p)
        self.schedule = ChunkSchedule(p.schedule_config(), clock=self.clock)
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

    WARMUP_INSTRUCTION = "pick up the object"
    """The warm-up's instruction when the `instruction` parameter is empty."""

    def _log_cameras(self) -> None:
        """One line: the topic of each camera the policy reads, and the camera topic parameters
        that are not used (harmless: nothing is subscribed for them)."""
        p = self.params
        parts = [", ".join(f"{c} on {t!r}" for c, t in self.camera_topics.items())]
        parts += [
            f"{name} {getattr(p, name)!r} not subscribed (the policy reads no {c})"
            for c, name in CAMERA_TOPIC_PARAMS.items()
            if c not in self.camera_topics
        ]
        self.log.info("cameras: %s", "; ".join(parts))

    def _warm_up(self, policy: ActionChunkPolicy, proprio: int, cameras: tuple[str, ...] = ("pixels",)) -> None:
        """Two decodes of a blank 64x64 image per camera (zeros for agent_pos), then `reset`: the
        engine of the policy's device is built (compiled, CUDA graphs captured) now rather than in the
        first real chunk; the second call starts warm, as every chunk after an episode's first does
        (with `guess_in_prefill`, another prefill shape). A policy that cannot decode it fails
        configure, with the reason."""
        obs: dict[str, Any] = {c: np.zeros((64, 64, 3), np.uint8) for c in cameras}
        obs["instruction"] = self.params.instruction or self.WARMUP_INSTRUCTION
        if proprio:
            obs["agent_pos"] = np.zeros(proprio, np.float32)
        t = time.perf_counter()
        try:
            n = sum(1 for _ in policy.stream_action_chunk(obs))
            n = min(n, sum(1 for _ in policy.stream_action_chunk(obs)))
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
            self._decoded_image_t = None
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
        params, _ = with_contract(params)  # control_hz 0 compares as the rate it resolves to
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
        self.camera_topics = params.camera_topics(self.cameras)
        return later

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
