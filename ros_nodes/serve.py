"""`serve`: the policy node over plain Cyclone DDS, for a GPU box without ROS 2.

It joins the robot's ROS 2 graph on the wire (same domain id, ROS 2 topic/type names and QoS), so
the robot side sees an ordinary node's topics: it subscribes to the camera (one topic per camera
the policy reads: `image_topic`, `wrist_image_topic`), the instruction and optionally joint
states, and publishes commands and /diagnostics exactly like `policy_node`, with the same
`PolicyRunner` logic. There is no lifecycle service: serve configures and activates at
start, and deactivates (sending the stop command) at exit.

    ee-vla serve --transport dds --model-path runs/ceed --no-dry-run --domain-id 0
    python -m ros_nodes.serve --model-path runs/ceed --loopback-only     # same thing, without ee-vla

With `--namespaces robot1 robot2 ...` one process serves many robots from one loaded policy: one
DDS participant, one `PolicyRunner` per namespace (its own timer, schedule, deadlines, safety and
/diagnostics status) on the node's topics under that namespace (`camera/image_raw` ->
`/robot1/camera/image_raw`; absolute names such as `/diagnostics` stay shared, as ROS 2 resolves
them), all decoding through one `ros_nodes.fleet.FleetPolicy`, which batches their calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ros_nodes.diagnostics import OK, Status
from ros_nodes.messages import build_diagnostics, split_seconds
from ros_nodes.output import CommandSink
from ros_nodes.params import COMMAND_MSG_TYPES, PolicyParams, check_namespace
from ros_nodes.runner import ActionChunkPolicy, PolicyRunner, load_policy
from ros_nodes.safety import CauseLog, ShutdownSignals

if TYPE_CHECKING:
    from ros_nodes.dds.periodic import PeriodicThread
    from ros_nodes.dds.transport import DdsGraph
    from ros_nodes.fleet import FleetConfig, FleetPolicy

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
    """Write the final diagnostics (key/values) as JSON here at exit (empty: do not; with
    `namespaces`: one object per namespace, and the fleet's batching statistics under "fleet")."""
    namespaces: tuple[str, ...] = ()
    """Robots served from one loaded policy, one ROS namespace each (robot1 robot2 ...): relative
    topics resolve under /<namespace>/, their decode calls are batched (`ros_nodes.fleet`). Empty:
    one robot at the root namespace."""
    batch_gather_s: float = 0.005
    """namespaces: how long the oldest pending decode call waits for other robots' calls to join
    its batch (seconds; 0: decode what is pending at once)."""
    max_batch: int = 0
    """namespaces: most robots' calls in one batched decode (0: all the namespaces; 1: every call
    alone, one after another)."""
    batch_padding: Literal["auto", "pow2", "step4", "none"] = "auto"
    """namespaces: pad batches to fixed sizes, powers of two up to `max_batch` (pow2), 1, 2, 4 and
    multiples of 4 (step4), or not (none); auto: pow2 for the static/graph/compiled engines (built
    per batch size), none for eager."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.namespaces = tuple(check_namespace(ns) for ns in self.namespaces)
        dup = sorted({ns for ns in self.namespaces if self.namespaces.count(ns) > 1})
        if dup:
            raise ValueError(f"ServeConfig.namespaces: each robot needs a namespace of its own, repeated: {dup}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 0:
            raise ValueError(f"ServeConfig.max_batch: must be an integer >= 0, got {self.max_batch!r}")
        self.fleet_config()  # validates the batching settings
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

    def fleet_config(self) -> FleetConfig:
        """The batching settings of `namespaces` (`ros_nodes.fleet.FleetConfig`)."""
        from ros_nodes.fleet import FleetConfig

        return FleetConfig(
            gather_s=self.batch_gather_s,
            max_batch=self.max_batch or max(1, len(self.namespaces)),
            padding=self.batch_padding,
            decode_nice=self.decode_nice,
        )

    def robot_params(self, namespace: str) -> PolicyParams:
        """The runner parameters of the robot in `namespace`: its topics resolved under it."""
        p = self.policy_params()
        return dataclasses.replace(
            p,
            image_topic=namespaced(p.image_topic, namespace),
            wrist_image_topic=namespaced(p.wrist_image_topic, namespace),
            instruction_topic=namespaced(p.instruction_topic, namespace),
            joint_state_topic=namespaced(p.joint_state_topic, namespace),
            command_topic=namespaced(p.resolved_command_topic, namespace),
            diagnostics_topic=namespaced(p.diagnostics_topic, namespace),
        )

    def dds_xml(self) -> str | None:
        """The Cyclone configuration to create the domain with (None: Cyclone's own defaults)."""
        from ros_nodes.dds.transport import loopback_config

        if self.dds_config:
            return self.dds_config
        return loopback_config(self.domain_id) if self.loopback_only else None


def namespaced(topic: str, namespace: str) -> str:
    """`topic` resolved in `namespace` as ROS 2 does: a relative name goes under /<namespace>/, an
    absolute one (`/diagnostics`) is left as it is."""
    if topic.startswith("~"):
        raise ValueError(f"{topic!r}: private topic names have no meaning without a node")
    return topic if topic.startswith("/") else f"/{namespace}/{topic}"


def wall_stamp() -> tuple[int, int]:
    """Current wall-clock time as (sec, nanosec) (what ROS time is without simulated time)."""
    return split_seconds(time.time())


def serve(
    cfg: ServeConfig,
    policy: ActionChunkPolicy | Any | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run the policy node over DDS until `cfg.duration_s`, `stop` or a signal; returns final diagnostics.

    With `cfg.namespaces`, serves one robot per namespace (`serve_fleet`, which takes the same
    arguments and gives `on_ready` the runners by namespace).

    Args:
        policy: an already-built policy (default: load `cfg.model_path`).
        stop: set it to stop serving (from another thread).
        on_ready: called with the runner once inputs and outputs exist and it is active.
    """
    if cfg.namespaces:
        return serve_fleet(cfg, policy, stop, on_ready)
    runner = PolicyRunner(cfg.policy_params(), (lambda _p: policy) if policy is not None else load_policy, logger=log)
    runner.configure()  # raises with a reason: a CLI should fail loudly before joining the graph

    def stopped(status: Status) -> dict[str, Any]:
        log.info("stopped: %d commands sent, %s", runner.rate.total, status.message)
        return status.values

    return _serve_until_stopped(cfg, _DdsNode(cfg, runner), stop, lambda: on_ready and on_ready(runner), stopped)


def _serve_until_stopped(
    cfg: ServeConfig,
    server: _DdsNode | _FleetServer,
    stop: threading.Event | None,
    ready: Callable[[], object],
    stopped: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """Start `server` with `cfg.switch_interval_s`, call `ready()`, spin until `cfg.duration_s`,
    `stop` or a signal, then close it, restore the switch interval, and return (and write to
    `cfg.stats_path`) `stopped(what close returned)`: the final diagnostics."""
    stop = stop or threading.Event()
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(cfg.switch_interval_s)
    server.start()
    ready()
    t_end = time.monotonic() + cfg.duration_s if cfg.duration_s > 0 else float("inf")
    try:
        with ShutdownSignals(stop):
            server.spin(stop, t_end)
    finally:
        values = stopped(server.close())
        sys.setswitchinterval(old_switch)
        if cfg.stats_path:
            Path(cfg.stats_path).write_text(json.dumps(values, indent=2))
    return values


FLEET_STATUS_NAME = "ee_vla: fleet"
"""The /diagnostics status of a multi-robot server's batching (`serve_fleet`)."""


def robot_status_name(namespace: str) -> str:
    """The /diagnostics status name of the robot in `namespace` (ROS 2 style: it leads with the namespace)."""
    return f"/{namespace}/ee_vla: policy node"


def serve_fleet(
    cfg: ServeConfig,
    policy: Any | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, PolicyRunner]], None] | None = None,
) -> dict[str, Any]:
    """Serve one robot per namespace of `cfg.namespaces` from one policy whose decode calls are
    batched (`ros_nodes.fleet`), on one DDS participant, until `cfg.duration_s`, `stop` or a signal.

    Args:
        policy: an already-built `VLAPolicy` or `FleetPolicy` (default: load `cfg.model_path` in this
            process; `policy_process` does not apply: the fleet's decode thread is the one decoder).
        stop: set it to stop serving (from another thread).
        on_ready: called with the runners by namespace once they are active.

    Returns the final diagnostics of each namespace, and the fleet's statistics under "fleet".
    """
    if not cfg.namespaces:
        raise ValueError("serve_fleet: ServeConfig.namespaces is empty (one robot at the root: serve())")
    fleet = _fleet(cfg, policy)
    runners: dict[str, PolicyRunner] = {}
    try:
        for ns in cfg.namespaces:
            runners[ns] = PolicyRunner(
                cfg.robot_params(ns),
                lambda _p, ns=ns: fleet.robot(ns),
                logger=logging.getLogger(f"{log.name}.{ns.replace('/', '.')}"),
            )
            runners[ns].configure()
        server = _FleetServer(cfg, runners, fleet)
    except BaseException:
        for r in runners.values():
            r.cleanup()
        fleet.close()
        raise

    def stopped(result: dict[str, Any]) -> dict[str, Any]:
        total = sum(r.rate.total for r in runners.values())
        log.info("stopped: %s commands sent by %d robots; fleet: %s", total, len(runners), result["fleet"])
        return result

    return _serve_until_stopped(cfg, server, stop, lambda: on_ready and on_ready(runners), stopped)


def _fleet(cfg: ServeConfig, policy: Any | None) -> FleetPolicy:
    """The fleet of `cfg`: around `policy` (a FleetPolicy is used as it is), or around the policy
    of `cfg.model_path` loaded here; warmed up at every batch size when `cfg.warmup`."""
    from ros_nodes.fleet import FleetPolicy, warmed_fleet

    if isinstance(policy, FleetPolicy):
        return policy
    if policy is None:
        from ros_nodes.fleet import load_here

        params = cfg.policy_params()
        if params.policy_process:
            log.info(
                "namespaces: the policy decodes in this process, on the fleet's thread (policy_process does not apply)"
            )
        policy = load_here(params)
    return warmed_fleet(policy, cfg.fleet_config(), cfg.warmup)


def _spin_loop(
    graph: DdsGraph,
    timers: list[PeriodicThread],
    publish_diagnostics: Callable[[], object],
    diagnostics_hz: float,
    stop: threading.Event,
    t_end: float,
) -> None:
    """Take samples and call `publish_diagnostics` at `diagnostics_hz` until `stop` or `t_end`
    (monotonic); an error is logged once per type and the loop goes on (the control timers keep running)."""
    diag_period = 1.0 / diagnostics_hz
    next_diag = time.monotonic()
    loop_errors = CauseLog(log)
    while not stop.is_set() and time.monotonic() < t_end:
        try:
            graph.spin_once(min(0.05, max(0.0, next_diag - time.monotonic())))
            if time.monotonic() >= next_diag:
                next_diag = max(next_diag + diag_period, time.monotonic())
                publish_diagnostics()
        except Exception as e:  # noqa: BLE001 - the control timer keeps running; say why once
            loop_errors.log(f"loop:{type(e).__name__}", f"serve loop: {type(e).__name__}: {e}", level=logging.ERROR)
            time.sleep(0.01)
        for timer in timers:
            if timer.rt_error:
                log.warning("control timer runs without real-time priority: %s", timer.rt_error)
                timer.rt_error = None
            if timer.errors:
                log.error("control tick failed %d times, last: %r", timer.errors, timer.last_error)
                timer.errors = 0


class _DdsNode:
    """A configured runner on the DDS graph: its readers and writers, the command sink and, once
    started, the control timer. `graph`: a participant shared with other runners (`_FleetServer`,
    which owns it), else one of its own."""

    def __init__(
        self,
        cfg: ServeConfig,
        runner: PolicyRunner,
        graph: DdsGraph | None = None,
        status_name: str = "ee_vla: policy node",
        logger: logging.Logger | None = None,
    ):
        from ros_nodes.dds import msgs
        from ros_nodes.dds.transport import DdsGraph

        self.cfg = cfg
        self.runner = runner
        self.msgs = msgs
        self.status_name = status_name
        self.log = logger or log
        params = self.params = runner.params  # control_hz resolved against the policy's contract
        self.owns_graph = graph is None
        self.graph = graph or DdsGraph(cfg.domain_id, cfg.dds_xml(), on_bad_sample=runner.on_bad_sample)
        cmd_type = msgs.ROS_TYPES[COMMAND_MSG_TYPES[params.command_type]]
        self.cmd_writer = self.graph.writer(params.resolved_command_topic, cmd_type, "default")
        self.diag_writer = self.graph.writer(params.diagnostics_topic, msgs.DiagnosticArray, "default")
        for camera, topic in runner.camera_topics.items():  # the cameras the policy reads, and no others
            self.graph.reader(
                topic, msgs.Image, "sensor_data", callback=lambda m, c=camera: runner.on_image_msg(m, camera=c)
            )
        self.graph.reader(
            params.instruction_topic, msgs.String, "default", callback=lambda s: runner.on_instruction(s.data)
        )
        self.input_topics = [*runner.camera_topics.values(), params.instruction_topic]
        if params.use_joint_state:
            self.graph.reader(
                params.joint_state_topic,
                msgs.JointState,
                "sensor_data",
                callback=lambda s: runner.on_joint_state(s.name, s.position),
            )
            self.input_topics.append(params.joint_state_topic)
        self.sink = CommandSink(runner, msgs, self.cmd_writer.write, wall_stamp, logger=self.log)
        self.timer: PeriodicThread | None = None

    def status(self) -> Status:
        """The runner's status now, under this node's status name."""
        return self.runner.status(name=self.status_name)

    def publish_diagnostics(self, status: Status | None = None) -> Status:
        """Publish `status` (default: the runner's status now) on the diagnostics topic."""
        status = status or self.status()
        self.diag_writer.write(build_diagnostics(self.msgs, [status], wall_stamp()))
        return status

    def start(self) -> None:
        """Activate the runner and start the control timer."""
        from ros_nodes.dds.periodic import PeriodicThread

        p = self.params
        self.log.info(
            "serving over DDS domain %d: %s -> %s (%s, %.1f Hz)%s",
            self.cfg.domain_id,
            " + ".join(self.runner.camera_topics.values()),
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
        _spin_loop(self.graph, [timer], self.publish_diagnostics, self.params.diagnostics_hz, stop, t_end)

    def stop_commanding(self) -> Status:
        """Stop the timer, send the stop command and publish the final diagnostics; returns the final
        status (with the timer's skipped ticks)."""
        timer = self.timer
        assert timer is not None, "start() first"
        timer.stop()
        self.sink.stop()  # deactivates and publishes the stop command, the last command on the topic
        status = self.publish_diagnostics(self.status())
        status.values["timer_skipped_ticks"] = str(timer.skipped)
        return status

    def close(self) -> Status:
        """Stop commanding (the stop command, the final diagnostics), free the policy and leave the
        graph (when it is this node's own); returns the final status."""
        status = self.stop_commanding()
        self.cmd_writer.wait_for_acks(_ms(500))  # let the stop command reach reliable subscribers
        self.runner.cleanup()
        if self.owns_graph:
            self.graph.close()
        return status


class _FleetServer:
    """One DDS participant serving a runner per namespace (a `_DdsNode` each, sharing the graph),
    all decoding through one `FleetPolicy`; publishes the fleet's batching status beside theirs."""

    def __init__(self, cfg: ServeConfig, runners: dict[str, PolicyRunner], fleet: FleetPolicy):
        from ros_nodes.dds import msgs
        from ros_nodes.dds.transport import DdsGraph

        self.cfg = cfg
        self.fleet = fleet
        self.msgs = msgs
        self._owner: dict[str, PolicyRunner] = {}
        self.graph = DdsGraph(cfg.domain_id, cfg.dds_xml(), on_bad_sample=self._on_bad_sample)
        try:
            self.nodes = {ns: _DdsNode(cfg, r, self.graph, robot_status_name(ns), r.log) for ns, r in runners.items()}
            for node in self.nodes.values():
                self._owner.update(dict.fromkeys(node.input_topics, node.runner))
            self.diag_writer = self.graph.writer(cfg.diagnostics_topic, msgs.DiagnosticArray, "default")
        except BaseException:
            self.graph.close()
            raise

    def _on_bad_sample(self, topic: str, error: BaseException) -> None:
        """An undecodable sample: a bad input of the robot whose topic it came on."""
        runner = self._owner.get(topic)
        if runner is not None:
            runner.on_bad_sample(topic, error)
        else:
            self.graph._log_bad_sample(topic, error)

    def fleet_status(self) -> Status:
        """The batching statistics as a DiagnosticStatus (OK; values as strings)."""
        st = self.fleet.stats()
        values = {k: json.dumps(v) if isinstance(v, dict) else fmt_value(v) for k, v in st.items()}
        message = f"{st['robots']} robots, {st['batches']} batches" + (
            f", mean batch {st['mean_batch']:.2f}" if st["mean_batch"] is not None else ""
        )
        return Status(
            level=OK,
            name=FLEET_STATUS_NAME,
            message=message,
            hardware_id=self.cfg.model_path or "ee_vla",
            values=values,
        )

    def publish_diagnostics(self) -> None:
        for node in self.nodes.values():
            node.publish_diagnostics()
        self.diag_writer.write(build_diagnostics(self.msgs, [self.fleet_status()], wall_stamp()))

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    def spin(self, stop: threading.Event, t_end: float) -> None:
        timers = [n.timer for n in self.nodes.values() if n.timer is not None]
        _spin_loop(self.graph, timers, self.publish_diagnostics, self.cfg.diagnostics_hz, stop, t_end)

    def close(self) -> dict[str, Any]:
        """Every robot's stop command and final diagnostics, then free the runners, the fleet and
        the graph; returns the final diagnostics by namespace and the fleet's statistics."""
        for node in self.nodes.values():
            if node.timer is not None:
                node.timer.stop()
        result: dict[str, Any] = {}
        for ns, node in self.nodes.items():
            result[ns] = node.stop_commanding().values
        self.diag_writer.write(build_diagnostics(self.msgs, [self.fleet_status()], wall_stamp()))
        for node in self.nodes.values():
            node.cmd_writer.wait_for_acks(_ms(500))
        for node in self.nodes.values():
            node.runner.cleanup()
        result["fleet"] = self.fleet.stats()
        self.fleet.close()
        self.graph.close()
        return result


def fmt_value(v: Any) -> str:
    """A statistic as a DiagnosticStatus value string."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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
