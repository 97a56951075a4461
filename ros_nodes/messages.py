"""Building and reading messages, once, for both transports.

Both rclpy's generated classes and `ros_nodes.dds.msgs`' IDL structs take the .msg field names as
keyword arguments, so every builder here takes a *message namespace* `m` (attributes named after the
message types: `m.TwistStamped`, `m.Header`, ...) plus two adapters where the Python types differ:
`m.byte(int)` for `byte` fields (rclpy wants bytes, IDL an int) and `m.u8seq(bytes)` for `uint8[]`
(rclpy wants array('B'), IDL takes bytes). `ros_nodes.policy_node.rclpy_namespace()` and
`ros_nodes.dds.msgs` are the two namespaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ros_nodes.diagnostics import Status
from ros_nodes.images import rgb_to_fields
from ros_nodes.params import PolicyParams
from ros_nodes.runner_types import Emit


def split_seconds(t: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec) as in builtin_interfaces Time/Duration (nanosec in [0, 1e9))."""
    sec = math.floor(t)
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return int(sec), nanosec


def to_seconds(stamp: Any) -> float:
    """builtin_interfaces Time/Duration -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def header(m: Any, stamp: tuple[int, int], frame_id: str = "") -> Any:
    return m.Header(stamp=m.Time(sec=stamp[0], nanosec=stamp[1]), frame_id=frame_id)


def _floats(a: np.ndarray | Sequence[float]) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def build_command(m: Any, emit: Emit, params: PolicyParams, stamp: tuple[int, int]) -> Any | None:
    """The message for an `Emit` under `params.command_type` (None: nothing to send)."""
    kind = params.command_type
    if kind == "twist":
        a = np.asarray(emit.actions, dtype=np.float64)
        lin = a[0:3] * params.linear_scale
        ang = a[3:6] * params.angular_scale
        return m.TwistStamped(
            header=header(m, stamp, params.frame_id),
            twist=m.Twist(
                linear=m.Vector3(x=float(lin[0]), y=float(lin[1]), z=float(lin[2])),
                angular=m.Vector3(x=float(ang[0]), y=float(ang[1]), z=float(ang[2])),
            ),
        )
    if kind == "array":
        return m.Float64MultiArray(layout=m.MultiArrayLayout(dim=[], data_offset=0), data=_floats(emit.actions))
    if kind == "trajectory":
        pts = np.asarray(emit.actions, dtype=np.float64)
        if pts.size == 0:
            return None
        pts = pts.reshape(-1, pts.shape[-1])
        dt = emit.dt or 1.0 / params.control_hz
        points = []
        for i, row in enumerate(pts):
            sec, nanosec = split_seconds((i + 1) * dt)
            # Only positions: the controller interpolates; velocities would have to be consistent.
            points.append(
                m.JointTrajectoryPoint(positions=_floats(row), time_from_start=m.Duration(sec=sec, nanosec=nanosec))
            )
        # A zero stamp means "start now" for joint_trajectory_controller.
        return m.JointTrajectory(
            header=header(m, (0, 0), params.frame_id), joint_names=list(params.joint_names), points=points
        )
    raise ValueError(f"unknown command_type {kind!r}")


def command_to_actions(
    kind: str, msg: Any, linear_scale: float = 0.1, angular_scale: float = 0.5
) -> list[tuple[float, np.ndarray]]:
    """Invert `build_command` (the sim bridge's side): [(seconds from now, action)] with None-free floats.

    twist -> 6 dims (the caller keeps the gripper); array -> all dims; trajectory -> one entry per point.
    """
    if kind == "twist":
        t = msg.twist
        lin = np.array([t.linear.x, t.linear.y, t.linear.z], dtype=np.float64)
        ang = np.array([t.angular.x, t.angular.y, t.angular.z], dtype=np.float64)
        lin = lin / linear_scale if linear_scale > 0 else lin * 0
        ang = ang / angular_scale if angular_scale > 0 else ang * 0
        return [(0.0, np.concatenate([lin, ang]))]
    if kind == "array":
        return [(0.0, np.asarray(list(msg.data), dtype=np.float64))]
    if kind == "trajectory":
        return [(to_seconds(p.time_from_start), np.asarray(list(p.positions), dtype=np.float64)) for p in msg.points]
    raise ValueError(f"unknown command_type {kind!r}")


def build_diagnostics(m: Any, statuses: Sequence[Status], stamp: tuple[int, int]) -> Any:
    """diagnostic_msgs/DiagnosticArray of the statuses."""
    return m.DiagnosticArray(
        header=header(m, stamp),
        status=[
            m.DiagnosticStatus(
                level=m.byte(s.level),
                name=s.name,
                message=s.message,
                hardware_id=s.hardware_id,
                values=[m.KeyValue(key=k, value=v) for k, v in s.values.items()],
            )
            for s in statuses
        ],
    )


def build_image(
    m: Any, rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = "camera", encoding: str = "rgb8"
) -> Any:
    """sensor_msgs/Image of an HxWx3 uint8 RGB array."""
    f = rgb_to_fields(rgb, encoding)
    return m.Image(
        header=header(m, stamp, frame_id),
        height=f["height"],
        width=f["width"],
        encoding=f["encoding"],
        is_bigendian=f["is_bigendian"],
        step=f["step"],
        data=m.u8seq(f["data"]),
    )


def build_joint_state(m: Any, names: Sequence[str], positions: np.ndarray, stamp: tuple[int, int]) -> Any:
    return m.JointState(header=header(m, stamp), name=list(names), position=_floats(positions), velocity=[], effort=[])
