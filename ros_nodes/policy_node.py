"""The ee_vla policy as an rclpy lifecycle node (Humble and Jazzy): a translator over `PolicyRunner`.

    ros2 run ee_vla policy_node --ros-args --params-file config/ee_vla.yaml -p model_path:=/models/ceed
    ros2 lifecycle set /policy_node configure   # loads the model
    ros2 lifecycle set /policy_node activate    # starts commanding (dry run unless dry_run:=false)

configure loads the policy, activate starts decoding and the command timer's output, deactivate
publishes one stop command and stops, cleanup frees the model. Images, the instruction and joint
states arrive on a reentrant callback group; the command timer has its own group so a burst of
images never delays a tick; inference runs on the runner's worker thread, never in a callback.
"""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from ros_nodes.messages import build_diagnostics
from ros_nodes.output import CommandSink
from ros_nodes.params import COMMAND_MSG_TYPES, PolicyParams, cross_check, param_specs, validate_param
from ros_nodes.rclpy_support import (
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
    """Lifecycle node: camera + instruction (+ joint states) in, commands and /diagnostics out."""

    def __init__(self, node_name: str = "policy_node", policy_factory=load_policy, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self.m = rclpy_namespace()
        self.policy_factory = policy_factory
        self.pylog = python_logger(self)
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
        self._entities: list[tuple[str, Any]] = []
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
        cmd_pub = self.create_publisher(
            msg_class(self.m, COMMAND_MSG_TYPES[params.command_type]), params.resolved_command_topic, RELIABLE
        )
        self.sink = CommandSink(runner, self.m, cmd_pub.publish, self._stamp, logger=self.pylog)
        self._diag_pub = self.create_publisher(DiagnosticArray, params.diagnostics_topic, RELIABLE)
        self._entities = [
            ("publisher", cmd_pub),
            ("publisher", self._diag_pub),
            (
                "subscription",
                self.create_subscription(
                    Image, params.image_topic, runner.on_image_msg, qos_profile_sensor_data, callback_group=self._inputs
                ),
            ),
            (
                "subscription",
                self.create_subscription(
                    String,
                    params.instruction_topic,
                    lambda msg: runner.on_instruction(msg.data),
                    RELIABLE,
                    callback_group=self._inputs,
                ),
            ),
            ("timer", self.create_timer(1.0 / params.control_hz, self._on_tick, callback_group=self._control)),
            ("timer", self.create_timer(1.0 / params.diagnostics_hz, self._on_diagnostics, callback_group=self._diag)),
        ]
        if params.use_joint_state:
            self._entities.append(
                (
                    "subscription",
                    self.create_subscription(
                        JointState,
                        params.joint_state_topic,
                        lambda msg: runner.on_joint_state(msg.name, msg.position),
                        qos_profile_sensor_data,
                        callback_group=self._inputs,
                    ),
                )
            )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.runner is not None
        self.runner.activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.on_exit()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in lifecycle state {state.label}: stopping and freeing the model")
        self.on_exit()
        return TransitionCallbackReturn.SUCCESS

    def on_exit(self) -> None:
        """Stop commanding (publishing the stop command) and free everything; safe in any state."""
        if self.runner is not None and self.runner.state == "active":
            self._stop()
        self._teardown()

    def _stop(self) -> None:
        if self.runner is not None and self.runner.state == "active":
            stop = self.runner.deactivate()
            if self.sink is not None:
                self.sink.send(stop)

    def _teardown(self) -> None:
        for kind, entity in self._entities:
            getattr(self, f"destroy_{kind}")(entity)
        self._entities = []
        self.sink = None
        if self.runner is not None:
            self.runner.cleanup()
            self.runner = None

    # ---- timers -------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int]:
        return self.get_clock().now().seconds_nanoseconds()

    def _on_tick(self) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            sink.tick()
        except Exception as e:  # noqa: BLE001 - a failed tick must not kill the executor
            sink.runner.causes.log(f"tick:{type(e).__name__}", f"control tick failed: {e}")

    def _on_diagnostics(self) -> None:
        runner = self.runner
        if runner is None:
            return
        self._diag_pub.publish(
            build_diagnostics(self.m, [runner.status(name=f"{self.get_name()}: policy")], self._stamp())
        )


def main(args: list[str] | None = None) -> None:
    """Entry point of `ros2 run ee_vla policy_node`."""
    spin_until_shutdown(PolicyNode, args)


if __name__ == "__main__":
    main()
