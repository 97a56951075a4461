import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.messages import build_command, command_to_actions, split_seconds, to_seconds  # noqa: E402
from ros_nodes.params import PolicyParams  # noqa: E402
from ros_nodes.runner import Emit  # noqa: E402

A = np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 1.0])


def test_split_seconds():
    assert split_seconds(1.5) == (1, 500_000_000)
    assert split_seconds(0.9999999999) == (1, 0)
    assert to_seconds(msgs.Duration(sec=2, nanosec=250_000_000)) == 2.25


def test_twist_scaling_and_inverse():
    p = PolicyParams(linear_scale=0.2, angular_scale=0.5, frame_id="tool0")
    msg = build_command(msgs, Emit("action", A, "chunk"), p, (7, 8))
    assert msg.header.frame_id == "tool0" and msg.header.stamp.sec == 7
    assert msg.twist.linear.x == pytest.approx(0.02) and msg.twist.angular.z == pytest.approx(0.3)
    [(dt, back)] = command_to_actions("twist", msg, 0.2, 0.5)
    assert dt == 0 and np.allclose(back, A[:6])


def test_array_carries_every_dim():
    p = PolicyParams(command_type="array")
    msg = build_command(msgs, Emit("action", A, "chunk"), p, (0, 0))
    assert msg.data == A.tolist() and msg.layout.dim == []
    assert np.allclose(command_to_actions("array", msg)[0][1], A)


def test_trajectory_points_are_timed_at_the_control_period():
    p = PolicyParams(command_type="trajectory", joint_names=tuple("abcdefg"), control_hz=20.0)
    pts = np.stack([A, A * 0.5, A * 0.25])
    msg = build_command(msgs, Emit("trajectory", pts, "chunk", 3, 0.05), p, (5, 0))
    assert msg.header.stamp.sec == 0 and msg.joint_names == list("abcdefg")  # stamp 0: start now
    assert [to_seconds(pt.time_from_start) for pt in msg.points] == pytest.approx([0.05, 0.1, 0.15])
    back = command_to_actions("trajectory", msg)
    assert np.allclose(back[2][1], A * 0.25)
    stop = build_command(msgs, Emit("stop", A, "stop:x", dt=0.05), p, (0, 0))
    assert len(stop.points) == 1 and stop.points[0].positions == A.tolist()
    assert build_command(msgs, Emit("stop", np.zeros(0), "stop:x"), p, (0, 0)) is None
