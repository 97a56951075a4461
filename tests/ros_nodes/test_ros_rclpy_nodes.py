"""The rclpy nodes on a real ROS 2 (Humble/Jazzy) install; skipped where rclpy is absent.

Everything they do is tested ROS-free elsewhere: here only the translation (lifecycle, parameters,
QoS, message classes) is checked, with the fake policy.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_fakes import FakePolicy  # noqa: E402

from ros_nodes.messages import build_image  # noqa: E402
from ros_nodes.rclpy_support import rclpy_namespace  # noqa: E402


@pytest.fixture()
def ros():
    rclpy.init()
    executor = MultiThreadedExecutor(num_threads=4)
    nodes = []
    yield executor, nodes
    for n in nodes:
        executor.remove_node(n)
        n.destroy_node()
    executor.shutdown()
    rclpy.try_shutdown()


def spin_until(executor, cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
        if cond():
            return True
    return False


def test_policy_node_lifecycle_commands_and_parameters(ros):
    from geometry_msgs.msg import TwistStamped
    from rclpy.node import Node

    from ros_nodes.policy_node import PolicyNode

    executor, nodes = ros
    policy = FakePolicy()
    node = PolicyNode(
        policy_factory=lambda p: policy,
        parameter_overrides=[
            Parameter("dry_run", value=False),
            Parameter("instruction", value="pick"),
            Parameter("control_hz", value=50.0),
            Parameter("image_timeout_s", value=5.0),
        ],
    )
    robot = Node("robot")
    nodes += [node, robot]
    executor.add_node(node)
    executor.add_node(robot)
    got = []
    robot.create_subscription(TwistStamped, "servo_node/delta_twist_cmds", got.append, 10)
    img_pub = robot.create_publisher(
        type(build_image(rclpy_namespace(), np.zeros((1, 1, 3), np.uint8), (0, 0))),
        "camera/image_raw",
        qos_profile_sensor_data,
    )
    # An unknown command type is rejected with the reason; the node keeps running.
    result = node.set_parameters([Parameter("command_type", value="joystick")])[0]
    assert not result.successful and "twist|array|trajectory" in result.reason
    assert node.set_parameters([Parameter("action_high", value=[0.5] * 7)])[0].successful
    node.trigger_configure()
    node.trigger_activate()
    img = build_image(rclpy_namespace(), np.zeros((16, 16, 3), np.uint8), (0, 0))
    assert spin_until(executor, lambda: (img_pub.publish(img), len(got) >= 3)[1])
    assert all(abs(m.twist.angular.x) <= 0.5 * 0.5 + 1e-9 for m in got)
    n = len(got)
    node.trigger_deactivate()
    assert spin_until(executor, lambda: len(got) > n)
    assert got[-1].twist.linear.x == 0.0 and got[-1].twist.angular.x == 0.0
    node.trigger_cleanup()
    assert node.runner is None


def test_policy_node_reads_the_wrist_camera_of_a_two_camera_policy(ros):
    """`wrist_image_topic` on a real ROS 2 graph: with only the main camera publishing, nothing is
    commanded and the status names the wrist topic; once it publishes too, commands flow."""
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray

    from ros_nodes.policy_node import PolicyNode

    executor, nodes = ros
    policy = FakePolicy(cameras=("pixels", "wrist_pixels"))
    node = PolicyNode(
        policy_factory=lambda p: policy,
        parameter_overrides=[
            Parameter("dry_run", value=False),
            Parameter("instruction", value="pick"),
            Parameter("command_type", value="array"),
            Parameter("control_hz", value=50.0),
            Parameter("image_timeout_s", value=5.0),
            Parameter("wrist_image_topic", value="hand_camera/image_raw"),
            Parameter("warmup", value=False),  # policy.calls: the decodes of real images only
        ],
    )
    robot = Node("robot")
    nodes += [node, robot]
    executor.add_node(node)
    executor.add_node(robot)
    got = []
    robot.create_subscription(Float64MultiArray, "forward_command_controller/commands", got.append, 10)
    m = rclpy_namespace()
    image_type = type(build_image(m, np.zeros((1, 1, 3), np.uint8), (0, 0)))
    front_pub = robot.create_publisher(image_type, "camera/image_raw", qos_profile_sensor_data)
    hand_pub = robot.create_publisher(image_type, "hand_camera/image_raw", qos_profile_sensor_data)
    assert node.get_parameter("wrist_image_topic").value == "hand_camera/image_raw"
    node.trigger_configure()
    node.trigger_activate()
    front = build_image(m, np.zeros((16, 16, 3), np.uint8), (0, 0))
    hand = build_image(m, np.zeros((12, 12, 3), np.uint8), (0, 0), "wrist_camera")

    def front_only() -> bool:
        front_pub.publish(front)
        return node.runner.images_received >= 5

    assert spin_until(executor, front_only)
    assert node.runner.status().message == "waiting for images on hand_camera/image_raw"
    assert got == [] and policy.calls == []

    def both() -> bool:
        front_pub.publish(front)
        hand_pub.publish(hand)
        return len(got) >= 3

    assert spin_until(executor, both)
    assert set(policy.calls[0]) >= {"pixels", "wrist_pixels"} and policy.calls[0]["wrist_pixels"].shape == (12, 12, 3)
    node.trigger_deactivate()
    node.trigger_cleanup()


def test_policy_node_reports_load_failure_and_stays_up(ros):
    from ros_nodes.policy_node import PolicyNode

    executor, nodes = ros

    def broken(_params):
        raise RuntimeError("no such model")

    node = PolicyNode(policy_factory=broken)
    nodes.append(node)
    executor.add_node(node)
    node.trigger_configure()
    assert node.runner is None  # FAILURE: back to unconfigured, node alive
    executor.spin_once(timeout_sec=0.1)
