"""`serve`: the policy node over plain Cyclone DDS, for a GPU box without ROS 2.

It joins the robot's ROS 2 graph on the wire (same domain id, ROS 2 topic/type names and QoS), so
the robot side sees an ordinary node's topics: it subscribes to the camera, the instruction and
optionally joint states, and publishes commands and /diagnostics exactly like `policy_node`, with
the same `PolicyRunner` logic. There is no lifecycle service: serve configures and activates at
start, and deactivates (sending the stop command) at exit.

    ee-vla serve --transport dds --model-path runs/ceed --no-dry-run --domain-id 0
    python -m ros_nodes.serve --model-path runs/ceed --loopback-only     # same thing, without ee-vla
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ros_nodes.diagnostics import Status
from ros_nodes.messages import build_diagnostics, split_seconds
from ros_nodes.output import CommandSink
from ros_nodes.params import COMMAND_MSG_TYPES, PolicyParams
from ros_nodes.runner import ActionChunkPolicy, PolicyRunner, load_policy
from ros_nodes.safety import CauseLog, ShutdownSignals

if TYPE_CHECKING:
    from ros_nodes.dds.periodic import PeriodicThread

log = logging.getLogger("ee_vla.serve")


@dataclass
class ServeConfig(PolicyParams):
    """The policy node's parameters plus how to reach the ROS 2 graph over DDS."""

    transport: Literal["dds"] = "dds"
    """Middleware: dds (Cyclone DDS with ROS 2 wire names). On a ROS 2 install use
    `ros2 launch ee_vla ee_vla.launch.py` (the rclpy node) instead."""
    domain_id: int = 0
    """DDS domain of the ROS 2 graph (the robot's ROS_DOMAIN_ID)."""
    dds_config: str = ""
    """Cyclone DDS configuration: XML text or a file path (empty: Cyclone's defaults, which honour CYCLONEDDS_URI)."""
    loopback_only: bool = False
    """Stay on 127.0.0.1 (unicast discovery, no multicast) when `dds_config` is empty: a same-machine graph."""
    duration_s: float = 0.0
    """Stop after this many seconds (0: run until Ctrl-C / SIGTERM)."""
    switch_interval_s: float = 0.0005
    """Python thread switch interval while serving: a short one keeps the control timer on time while
    the decoding thread holds the GIL (Python's default is 0.005)."""
    timer_rt_priority: int = 0
    """SCHED_FIFO priority of the control timer thread (Linux; needs CAP_SYS_NICE or an rtprio limit).
    0: normal scheduling. Real-time priority keeps the command rate steady on a loaded CPU."""
    stats_path: str = ""
    """Write the final diagnostics (key/values) as JSON here at exit (empty: do not)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transport != "dds":
            raise ValueError(f"ServeConfig.transport: only 'dds' here (rclpy: ros2 launch), got {self.transport!r}")
        if not isinstance(self.domain_id, int) or not 0 <= self.domain_id <= 232:
            raise ValueError(f"ServeConfig.domain_id: must be an integer in [0, 232], got {self.domain_id!r}")
        if not self.duration_s >= 0:
            raise ValueError(f"ServeConfig.duration_s: must be >= 0, got {self.duration_s}")
        if not isinstance(self.timer_rt_priority, int) or not 0 <= self.timer_rt_priority <= 99:
            raise ValueError(
                f"ServeConfig.timer_rt_priority: must be an integer in [0, 99], got {self.timer_rt_priority!r}"
            )
        if not 0 < self.switch_interval_s <= 0.1:
            raise ValueError(f"ServeConfig.switch_interval_s: must be in (0, 0.1], got {self.switch_interval_s}")

    def policy_params(self) -> PolicyParams:
        """The `PolicyParams` part (what the runner sees)."""
        from dataclasses import fields

        return PolicyParams(**{f.name: getattr(self, f.name) for f in fields(PolicyParams)})

    def dds_xml(self) -> str | None:
        """The Cyclone configuration to create the domain with (None: Cyclone's own defaults)."""
        from ros_nodes.dds.transport import loopback_config

        if self.dds_config:
            return self.dds_config
        return loopback_config(self.domain_id) if self.loopback_only else None


def wall_stamp() -> tuple[int, int]:
    """Current wall-clock time as (sec, nanosec) (what ROS time is without simulated time)."""
    return split_seconds(time.time())


def serve(
    cfg: ServeConfig,
    policy: ActionChunkPolicy | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[PolicyRunner], None] | None = None,
) -> dict[str, str]:
    """Run the policy node over DDS until `cfg.duration_s`, `stop` or a signal; returns final diagnostics.

    Args:
        policy: an already-built policy (default: load `cfg.model_path`).
        stop: set it to stop serving (from another thread).
        on_ready: called with the runner once inputs and outputs exist and it is active.
    """
    stop = stop or threading.Event()
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(cfg.switch_interval_s)
    runner = PolicyRunner(cfg.policy_params(), (lambda _p: policy) if policy is not None else load_policy, logger=log)
    runner.configure()  # raises with a reason: a CLI should fail loudly before joining the graph
    node = _DdsNode(cfg, runner)
    node.start()
    if on_ready is not None:
        on_ready(runner)
    t_end = time.monotonic() + cfg.duration_s if cfg.duration_s > 0 else float("inf")
    try:
        with ShutdownSignals(stop):
            node.spin(stop, t_end)
    finally:
        status = node.close()
        sys.setswitchinterval(old_switch)
        if cfg.stats_path:
            Path(cfg.stats_path).write_text(json.dumps(status.values, indent=2))
        log.info("stopped: %d commands sent, %s", runner.rate.total, status.message)
    return status.values


class _DdsNode:
    """A configured runner on the DDS graph: its readers and writers, the command sink and, once
    started, the control timer."""

    def __init__(self, cfg: ServeConfig, runner: PolicyRunner):
        from ros_nodes.dds import msgs
        from ros_nodes.dds.transport import DdsGraph

        self.cfg = cfg
        self.runner = runner
        self.msgs = msgs
        params = self.params = runner.params  # control_hz resolved against the policy's contract
        self.graph = DdsGraph(cfg.domain_id, cfg.dds_xml(), on_bad_sample=runner.on_bad_sample)
        cmd_type = msgs.ROS_TYPES[COMMAND_MSG_TYPES[params.command_type]]
        self.cmd_writer = self.graph.writer(params.resolved_command_topic, cmd_type, "default")
        self.diag_writer = self.graph.writer(params.diagnostics_topic, msgs.DiagnosticArray, "default")
        self.graph.reader(params.image_topic, msgs.Image, "sensor_data", callback=runner.on_image_msg)
        self.graph.reader(
            params.instruction_topic, msgs.String, "default", callback=lambda s: runner.on_instruction(s.data)
        )
        if params.use_joint_state:
            self.graph.reader(
                params.joint_state_topic,
                msgs.JointState,
                "sensor_data",
                callback=lambda s: runner.on_joint_state(s.name, s.position),
            )
        self.sink = CommandSink(runner, msgs, self.cmd_writer.write, wall_stamp, logger=log)
        self.timer: PeriodicThread | None = None

    def publish_diagnostics(self, status: Status | None = None) -> Status:
        """Publish `status` (default: the runner's status now) on the diagnostics topic."""
        status = status or self.runner.status()
        self.diag_writer.write(build_diagnostics(self.msgs, [status], wall_stamp()))
        return status

    def start(self) -> None:
        """Activate the runner and start the control timer."""
        from ros_nodes.dds.periodic import PeriodicThread

        p = self.params
        log.info(
            "serving over DDS domain %d: %s -> %s (%s, %.1f Hz)%s",
            self.cfg.domain_id,
            p.image_topic,
            p.resolved_command_topic,
            p.command_type,
            p.control_hz,
            " [DRY RUN]" if p.dry_run else "",
        )
        self.runner.activate()
        self.timer = PeriodicThread(
            1.0 / p.control_hz, self.sink.tick, name="ee_vla-control", rt_priority=self.cfg.timer_rt_priority
        ).start()

    def spin(self, stop: threading.Event, t_end: float) -> None:
        """Take samples and publish diagnostics at `diagnostics_hz` until `stop` or `t_end` (monotonic);
        an error is logged once per type and the loop goes on (the control timer keeps running)."""
        timer = self.timer
        assert timer is not None, "start() first"
        diag_period = 1.0 / self.params.diagnostics_hz
        next_diag = time.monotonic()
        loop_errors = CauseLog(log)
        while not stop.is_set() and time.monotonic() < t_end:
            try:
                self.graph.spin_once(min(0.05, max(0.0, next_diag - time.monotonic())))
                if time.monotonic() >= next_diag:
                    next_diag = max(next_diag + diag_period, time.monotonic())
                    self.publish_diagnostics()
            except Exception as e:  # noqa: BLE001 - the control timer keeps running; say why once
                loop_errors.log(f"loop:{type(e).__name__}", f"serve loop: {type(e).__name__}: {e}", level=logging.ERROR)
                time.sleep(0.01)
            if timer.rt_error:
                log.warning("control timer runs without real-time priority: %s", timer.rt_error)
                timer.rt_error = None
            if timer.errors:
                log.error("control tick failed %d times, last: %r", timer.errors, timer.last_error)
                timer.errors = 0

    def close(self) -> Status:
        """Stop the timer, send the stop command, publish the final diagnostics, free the policy and
        leave the graph; returns the final status (with the timer's skipped ticks)."""
        timer = self.timer
        assert timer is not None, "start() first"
        timer.stop()
        self.sink.stop()  # deactivates and publishes the stop command, the last command on the topic
        status = self.publish_diagnostics(self.runner.status())
        status.values["timer_skipped_ticks"] = str(timer.skipped)
        self.cmd_writer.wait_for_acks(_ms(500))  # let the stop command reach reliable subscribers
        self.runner.cleanup()
        self.graph.close()
        return status


def _ms(ms: int) -> int:
    from cyclonedds.util import duration

    return duration(milliseconds=ms)


def main(argv: list[str] | None = None) -> None:
    """`python -m ros_nodes.serve --help` (the same options as `ee-vla serve --transport dds`)."""
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = tyro.cli(ServeConfig, args=argv)
    serve(cfg)


if __name__ == "__main__":
    main()
