"""The ee_vla policy as an rclpy lifecycle node (Humble and Jazzy): a translator over `PolicyRunner`.

    ros2 run ee_vla policy_node --ros-args --params-file config/ee_vla.yaml -p model_path:=/models/ceed
    ros2 lifecycle set /policy_node configure   # loads the model
    ros2 lifecycle set /policy_node activate    # starts commanding (dry run unless dry_run:=false)

configure loads the policy, activate starts decoding and the command timer's output, deactivate
publishes one stop command and stops, cleanup frees the model. Images, the instruction and joint
states arrive on a reentrant callback group; the command timer has its own group so a burst of
images never delays a tick; inference runs on the runner's worker thread, never in a callback.

Every callback is guarded (`CallbackGuard`): an exception is logged, counted and shown on
/diagnostics, and the node keeps running. The stop command of deactivate, cleanup, shutdown,
SIGINT or SIGTERM is the last command published (`CommandSink.stop`).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from ros_nodes.diagnostics import ERROR, WARN, Status
from ros_nodes.messages import build_diagnostics
from ros_nodes.output import CommandSink
from ros_nodes.params import COMMAND_MSG_TYPES, PolicyParams, cross_check, param_specs, validate_param
from ros_nodes.rclpy_support import (
    CallbackGuard,
    declare_from_specs,
    msg_class,
    plain,
    python_logger,
    rclpy_namespace,
    read_values,
    spin_until_shutdown,
)
from ros_nodes.runner import PolicyRunner, load_policy

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class PolicyNode(LifecycleNode):
    """Lifecycle node: camera images (a topic per camera the policy reads) + instruction (+ joint
    states) in, commands and /diagnostics out."""

    def __init__(self, node_name: str = "policy_node", policy_factory=load_policy, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self.m = rclpy_namespace()
        self.policy_factory = policy_factory
        self.pylog = python_logger(self)
        self.guard = CallbackGuard(self.pylog)
        self.specs = param_specs()
        declare_from_specs(
            self,
            self.specs,
            lambda s: "applies immediately" if s.live else "applies on the next configure",
        )
        self.declare_parameter("autostart", False)
        # Registered after declaring: bad YAML values fail `configure` with a reason instead of
        # killing the node at startup; later `ros2 param set` calls are rejected with the reason.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.runner: PolicyRunner | None = None
        self.sink: CommandSink | None = None
        self._diag_pub: Any = None
        self._entities: list[tuple[str, Any]] = []
        # Held while reading the runner/publishers for /diagnostics and while detaching them for
        # teardown: the diagnostics timer never publishes on a destroyed publisher.
        self._io_lock = threading.Lock()
        self._reported_failures = 0
        self._inputs = ReentrantCallbackGroup()
        self._control = MutuallyExclusiveCallbackGroup()
        self._diag = MutuallyExclusiveCallbackGroup()
        if self.get_parameter("autostart").value:
            self.trigger_configure()
            if self.runner is not None:
                self.trigger_activate()

    # ---- parameters ---------------------------------------------------------------------------
    def _params(self, overrides: dict[str, Any] | None = None) -> PolicyParams:
        values = read_values(self, self.specs)
        values.update(overrides or {})
        return PolicyParams.from_mapping(values)

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        try:
            return self._check_parameters(parameters)
        except Exception as e:  # noqa: BLE001 - rejected with the reason; the node keeps running
            self.guard.failed("parameters", e)
            return SetParametersResult(successful=False, reason=f"could not apply: {type(e).__name__}: {e}")

    def _check_parameters(self, parameters: list[Any]) -> SetParametersResult:
        changes = {}
        for p in parameters:
            if p.name == "autostart" or p.name.startswith("qos_overrides.") or p.name == "use_sim_time":
                continue
            value = plain(p.value)
            reason = validate_param(p.name, value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=f"{p.name}: {reason}")
            changes[p.name] = value
        if not changes:
            return SetParametersResult(successful=True)
        try:
            candidate = self._params(changes)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        reason = cross_check(candidate)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        if self.runner is not None:
            try:
                later = self.runner.update_params(candidate)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            if later:
                self.get_logger().info(f"{later} take effect on the next configure")
        return SetParametersResult(successful=True)

    # ---- lifecycle ----------------------------------------------------------------------------
    # rclpy turns an exception in a transition callback into ERROR without a word; these log it
    # first (ERROR then runs on_error: stop command, teardown).
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            params = self._params()
        except ValueError as e:
            self.get_logger().error(f"configure failed: invalid parameter: {e}")
            return TransitionCallbackReturn.FAILURE
        runner = PolicyRunner(params, self.policy_factory, logger=self.pylog)
        try:
            runner.configure()
        except Exception as e:  # noqa: BLE001 - any load failure is reported, the node stays up
            self.get_logger().error(f"configure failed: could not load policy: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.runner = runner
        try:
            self._create_entities(runner, runner.params)  # control_hz resolved against the policy
        except Exception as e:  # noqa: BLE001 - e.g. a topic name rclpy rejects
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _create_entities(self, runner: PolicyRunner, params: PolicyParams) -> None:
        g = self.guard
        cmd_pub = self.create_publisher(
            msg_class(self.m, COMMAND_MSG_TYPES[params.command_type]), params.resolved_command_topic, RELIABLE
        )
        self._entities.append(("publisher", cmd_pub))
        self.sink = CommandSink(runner, self.m, cmd_pub.publish, self._stamp, logger=self.pylog)
        diag_pub = self.create_publisher(DiagnosticArray, params.diagnostics_topic, RELIABLE)
        self._entities.append(("publisher", diag_pub))
        self._diag_pub = diag_pub
        for camera, topic in runner.camera_topics.items():  # the cameras the policy reads, and no others
            name = "image" if camera == "pixels" else f"image_{camera}"
            self._entities.append(
                (
                    "subscription",
                    self.create_subscription(
                        Image,
                        topic,
                        g.wrap(name, lambda msg, camera=camera: runner.on_image_msg(msg, camera=camera)),
                        qos_profile_sensor_data,
                        callback_group=self._inputs,
                    ),
                )
            )
        self._entities += [
            (
                "subscription",
                self.create_subscription(
                    String,
                    params.instruction_topic,
                    g.wrap("instruction", lambda msg: runner.on_instruction(msg.data)),
                    RELIABLE,
                    callback_group=self._inputs,
                ),
            ),
            (
                "timer",
                self.create_timer(1.0 / params.control_hz, g.wrap("tick", self._on_tick), callback_group=self._control),
            ),
            (
                "timer",
                self.create_timer(
                    1.0 / params.diagnostics_hz, g.wrap("diagnostics", self._on_diagnostics), callback_group=self._diag
                ),
            ),
        ]
        if params.use_joint_state:
            self._entities.append(
                (
                    "subscription",
                    self.create_subscription(
                        JointState,
                        params.joint_state_topic,
                        g.wrap("joint_state", lambda msg: runner.on_joint_state(msg.name, msg.position)),
                        qos_profile_sensor_data,
                        callback_group=self._inputs,
                    ),
                )
            )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            assert self.sink is not None, "activate without a configured policy"
            self.sink.activate()
            return super().on_activate(state)
        except Exception as e:  # noqa: BLE001
            self.guard.failed("activate", e)
            return TransitionCallbackReturn.ERROR

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._stop()
            return super().on_deactivate(state)
        except Exception as e:  # noqa: BLE001
            self.guard.failed("deactivate", e)
            return TransitionCallbackReturn.ERROR

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._teardown()
            return TransitionCallbackReturn.SUCCESS
        except Exception as e:  # noqa: BLE001
            self.guard.failed("cleanup", e)
            return TransitionCallbackReturn.ERROR

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.on_exit()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in lifecycle state {state.label}: stopping and freeing the model")
        self.on_exit()
        return TransitionCallbackReturn.SUCCESS

    def on_exit(self) -> None:
        """Stop commanding (publishing the stop command) and free everything; safe in any state and
        more than once; never raises (failures are logged)."""
        try:
            self._stop()
        except Exception as e:  # noqa: BLE001 - the teardown must still run
            self.guard.failed("stop", e)
        try:
            self._teardown()
        except Exception as e:  # noqa: BLE001
            self.guard.failed("cleanup", e)

    def _stop(self) -> None:
        """Deactivate the runner and publish its stop command as the last command (if active)."""
        sink = self.sink
        if sink is not None and sink.stop():
            self.get_logger().info(
                f"stopped: stop command {'logged (dry run)' if sink.runner.params.dry_run else 'published'}, "
                f"{sink.runner.rate.total} commands sent"
            )

    def _teardown(self) -> None:
        with self._io_lock:
            sink, self.sink = self.sink, None
            runner, self.runner = self.runner, None
            self._diag_pub = None
            entities, self._entities = self._entities, []
        if sink is not None:
            try:
                sink.stop()  # latched: a tick already past `self.sink` publishes nothing from now on
            except Exception as e:  # noqa: BLE001 - free the rest anyway
                self.guard.failed("stop", e)
        for kind, entity in entities:
            try:
                getattr(self, f"destroy_{kind}")(entity)
            except Exception as e:  # noqa: BLE001 - destroy the others anyway
                self.guard.failed("cleanup", e)
        if runner is not None:
            runner.cleanup()

    # ---- timers -------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int]:
        return self.get_clock().now().seconds_nanoseconds()

    def on_undecodable_message(self, error: BaseException) -> None:
        """A message rclpy could not convert (invalid UTF-8 in a string field): counted as bad input."""
        runner = self.runner
        if runner is not None:
            runner.on_bad_sample("a subscription", error)

    def _on_tick(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.tick()

    def _on_diagnostics(self) -> None:
        with self._io_lock:
            runner, pub, sink = self.runner, self._diag_pub, self.sink
            if runner is None or pub is None:
                return
            status = self._with_failures(runner.status(name=self.status_name()), sink)
            pub.publish(build_diagnostics(self.m, [status], self._stamp()))

    def status_name(self) -> str:
        """The node's /diagnostics status name: `<node>: policy`, led by its namespace outside the
        root one (`/robot1/policy_node: policy`), so the robots of one graph tell apart."""
        ns = self.get_namespace().rstrip("/")
        return f"{ns}/{self.get_name()}: policy" if ns else f"{self.get_name()}: policy"

    def _with_failures(self, status: Status, sink: CommandSink | None) -> Status:
        """Add the callback failure counts; a failure since the last message raises the level
        (ERROR for the control tick: commands may not be going out)."""
        counts, last = self.guard.snapshot()
        total = sum(counts.values())
        status.values["callback_errors"] = str(total)
        for name, n in sorted(counts.items()):
            status.values[f"callback_errors_{name}"] = str(n)
        status.values["last_callback_error"] = last
        if sink is not None:
            status.values["commands_dropped_after_stop"] = str(sink.after_stop)
        if total > self._reported_failures:
            level = ERROR if last.startswith("tick:") else WARN
            if level > status.level:
                status.level = level
                status.message = f"{total - self._reported_failures} callback failure(s), last: {last}"
            self._reported_failures = total
        return status


def fleet_nodes(namespaces: list[str], shared: Any, node_name: str = "policy_node") -> list[PolicyNode]:
    """One `PolicyNode` per namespace (`/<ns>/policy_node`, its relative topics under `/<ns>/`),
    whose policies come from `shared` (a `ros_nodes.fleet.SharedFleet`: one loaded policy, their
    decode calls batched)."""
    return [PolicyNode(node_name, policy_factory=shared.factory(ns), namespace=f"/{ns}") for ns in namespaces]


def main(args: list[str] | None = None) -> None:
    """Entry point of `ros2 run ee_vla policy_node [--executor multi|single] [--namespaces NS ...] [--ros-args ...]`.

    `--executor single` spins the node on one thread (rclpy's SingleThreadedExecutor behaviour: the
    command timer then waits for any input callback that runs); the default, `multi`, gives the
    timer, the inputs and the diagnostics threads of their own.

    `--namespaces robot1 robot2 ...` runs one lifecycle node per namespace in this process
    (`/robot1/policy_node`, ...; each configured and activated on its own, the same parameters for
    all), sharing one loaded policy whose decode calls are batched (`ros_nodes.fleet`; the policy
    decodes in this process: `policy_process` does not apply). `--batch-gather-s`, `--max-batch`
    (0: the number of namespaces) and `--batch-padding` are the fleet's settings, as for
    `ee-vla serve --namespaces`."""
    import argparse

    from rclpy.utilities import remove_ros_args

    from ros_nodes.fleet import PADDINGS, FleetConfig, SharedFleet
    from ros_nodes.params import check_namespace

    argv = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog="policy_node", description=main.__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=("multi", "single"), default="multi")
    parser.add_argument("--namespaces", nargs="*", default=[], help="one robot (node) per namespace")
    parser.add_argument("--batch-gather-s", type=float, default=FleetConfig.gather_s)
    parser.add_argument("--max-batch", type=int, default=0, help="0: the number of namespaces")
    parser.add_argument("--batch-padding", choices=PADDINGS, default=FleetConfig.padding)
    options = parser.parse_args(remove_ros_args(argv)[1:])
    threads = 1 if options.executor == "single" else 4
    if not options.namespaces:
        spin_until_shutdown(PolicyNode, argv, threads=threads)
        return
    try:
        namespaces = [check_namespace(ns) for ns in options.namespaces]
        if len(set(namespaces)) != len(namespaces):
            raise ValueError(f"--namespaces: each robot needs a namespace of its own, got {namespaces}")
        config = FleetConfig(
            gather_s=options.batch_gather_s,
            max_batch=options.max_batch or len(namespaces),
            padding=options.batch_padding,
        )
    except ValueError as e:
        parser.error(str(e))
    shared = SharedFleet(config)
    if threads > 1:
        threads = max(threads, 2 * len(namespaces))  # a control timer and inputs per robot
    spin_until_shutdown(lambda: fleet_nodes(namespaces, shared), argv, threads=threads)


if __name__ == "__main__":
    main()
