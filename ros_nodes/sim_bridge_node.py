"""The sim bridge as an rclpy node (Humble and Jazzy): an `ee_vla/*` env standing in for a robot.

    ros2 run ee_vla sim_bridge_node --ros-args -p env_id:=ee_vla/PickCube-v0 -p command_type:=array

Publishes the camera image (sensor-data QoS; the gripper camera's too on `wrist_image_topic` with
`wrist_camera`, or for a policy that reads `wrist_pixels`), the instruction (transient local),
`agent_pos` as JointState and success (std_msgs/Bool); applies the newest command at the env's control rate. All
the stepping logic is `ros_nodes.sim_bridge.SimBridge`. Callbacks are guarded: a failing step or
command is logged once per cause and counted (`guard`), and the node keeps running. Rendering
headless needs MUJOCO_GL=egl (GPU) or osmesa (CPU) in the environment (the sim launch file sets it).
"""

from __future__ import annotations

from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String

from ros_nodes.messages import build_image, build_joint_state
from ros_nodes.params import COMMAND_MSG_TYPES, dataclass_specs
from ros_nodes.rclpy_support import (
    CallbackGuard,
    declare_from_specs,
    msg_class,
    python_logger,
    rclpy_namespace,
    read_values,
    spin_until_shutdown,
)
from ros_nodes.sim_bridge import WRIST_FRAME_ID, SimBridge, SimBridgeParams, SimFrame

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class SimBridgeNode(Node):
    """Steps the env from one timer; commands arrive in the same mutually exclusive group."""

    def __init__(self, node_name: str = "sim_bridge", env: Any | None = None, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self.m = rclpy_namespace()
        self.specs = dataclass_specs(SimBridgeParams)
        declare_from_specs(self, self.specs)
        params = SimBridgeParams(**read_values(self, self.specs))  # invalid parameters: fail loudly at start
        self.params = params
        pylog = python_logger(self)
        self.guard = CallbackGuard(pylog)
        self.bridge = SimBridge(params, env=env, logger=pylog)
        g = self.guard
        group = MutuallyExclusiveCallbackGroup()
        self.image_pub = self.create_publisher(Image, params.image_topic, qos_profile_sensor_data)
        self.wrist_image_pub = (
            self.create_publisher(Image, params.wrist_image_topic, qos_profile_sensor_data)
            if self.bridge.wrist_camera
            else None
        )
        self.instruction_pub = self.create_publisher(String, params.instruction_topic, LATCHED)
        self.joint_pub = self.create_publisher(JointState, params.joint_state_topic, RELIABLE)
        self.success_pub = self.create_publisher(Bool, params.success_topic, RELIABLE)
        self.create_subscription(
            msg_class(self.m, COMMAND_MSG_TYPES[params.command_type]),
            params.resolved_command_topic,
            g.wrap("command", self.bridge.on_command_msg),
            RELIABLE,
            callback_group=group,
        )
        self.create_timer(1.0 / self.bridge.control_hz, g.wrap("step", self._on_step), callback_group=group)
        self.create_timer(1.0, g.wrap("instruction", self._publish_instruction), callback_group=group)
        self.get_logger().info(
            f"{params.env_id} at {self.bridge.control_hz:.1f} Hz; commands ({params.command_type}) on "
            f"{params.resolved_command_topic}; images on {params.image_topic}"
            + (f" and {params.wrist_image_topic}" if self.bridge.wrist_camera else "")
        )

    def _publish_instruction(self) -> None:
        self.instruction_pub.publish(String(data=self.bridge.instruction))

    @property
    def finished(self) -> bool:
        """True once `max_episodes` episodes have ended: the node exits (sim.launch.py then ends)."""
        return self.bridge.done

    def _on_step(self) -> None:
        if self.bridge.done:
            return
        frame: SimFrame = self.bridge.step()
        stamp = self.get_clock().now().seconds_nanoseconds()
        if self.wrist_image_pub is not None and frame.wrist_pixels is not None:
            self.wrist_image_pub.publish(build_image(self.m, frame.wrist_pixels, stamp, WRIST_FRAME_ID))
        self.image_pub.publish(build_image(self.m, frame.pixels, stamp, self.params.frame_id))
        if frame.agent_pos is not None:
            names = [f"agent_pos_{i}" for i in range(frame.agent_pos.size)]
            self.joint_pub.publish(build_joint_state(self.m, names, frame.agent_pos, stamp))
        self.success_pub.publish(Bool(data=bool(frame.success)))
        if frame.reset:
            self._publish_instruction()

    def on_exit(self) -> None:
        b = self.bridge
        if b.episodes_done:
            self.get_logger().info(f"{b.params.env_id}: {b.successes}/{b.episodes_done} episodes successful")
        b.close()


def main(args: list[str] | None = None) -> None:
    """Entry point of `ros2 run ee_vla sim_bridge_node`."""
    # A single-threaded executor: MuJoCo's GL context (EGL, OSMesa) is current in the thread that
    # first rendered, and rendering from another thread fails (EGL_BAD_ACCESS).
    spin_until_shutdown(SimBridgeNode, args, threads=1)


if __name__ == "__main__":
    main()
