"""ROS 2 message types as Cyclone DDS IDL structs, with ROS 2's DDS type names.

Field names, order and types follow the official .msg files (Humble = Jazzy for all of these):
what rmw_cyclonedds / rmw_fastrtps put on the wire is plain (XCDR1) CDR of exactly these structs, so
a ROS 2 graph reads and writes them. `ROS_TYPES` maps `pkg/msg/T` to the struct. Like rclpy's
classes, every struct takes the fields as keyword arguments, so `ros_nodes.messages` builds both;
`byte` and `u8seq` are this namespace's adapters for `byte` and `uint8[]` fields.
"""

# No `from __future__ import annotations`: cyclonedds resolves the annotations at runtime.
from dataclasses import dataclass, field

import cyclonedds.idl.types as t
from cyclonedds.idl import IdlStruct

# ruff: noqa: N801 - class names are the ROS message names


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: t.int32 = 0
    nanosec: t.uint32 = 0


@dataclass
class Duration(IdlStruct, typename="builtin_interfaces::msg::dds_::Duration_"):
    sec: t.int32 = 0
    nanosec: t.uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str = ""


@dataclass
class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: t.uint32 = 0
    stride: t.uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: t.sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: t.uint32 = 0


@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: t.sequence[t.float64] = field(default_factory=list)


@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header = field(default_factory=Header)
    height: t.uint32 = 0
    width: t.uint32 = 0
    encoding: str = ""
    is_bigendian: t.uint8 = 0
    step: t.uint32 = 0
    data: t.sequence[t.uint8] = field(default_factory=list)


@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header = field(default_factory=Header)
    name: t.sequence[str] = field(default_factory=list)
    position: t.sequence[t.float64] = field(default_factory=list)
    velocity: t.sequence[t.float64] = field(default_factory=list)
    effort: t.sequence[t.float64] = field(default_factory=list)


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: t.float64 = 0.0
    y: t.float64 = 0.0
    z: t.float64 = 0.0


@dataclass
class Twist(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3 = field(default_factory=Vector3)
    angular: Vector3 = field(default_factory=Vector3)


@dataclass
class TwistStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TwistStamped_"):
    header: Header = field(default_factory=Header)
    twist: Twist = field(default_factory=Twist)


@dataclass
class JointTrajectoryPoint(IdlStruct, typename="trajectory_msgs::msg::dds_::JointTrajectoryPoint_"):
    positions: t.sequence[t.float64] = field(default_factory=list)
    velocities: t.sequence[t.float64] = field(default_factory=list)
    accelerations: t.sequence[t.float64] = field(default_factory=list)
    effort: t.sequence[t.float64] = field(default_factory=list)
    time_from_start: Duration = field(default_factory=Duration)


@dataclass
class JointTrajectory(IdlStruct, typename="trajectory_msgs::msg::dds_::JointTrajectory_"):
    header: Header = field(default_factory=Header)
    joint_names: t.sequence[str] = field(default_factory=list)
    points: t.sequence[JointTrajectoryPoint] = field(default_factory=list)


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: t.byte = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: t.sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header = field(default_factory=Header)
    status: t.sequence[DiagnosticStatus] = field(default_factory=list)


ROS_TYPES: dict[str, type[IdlStruct]] = {
    "builtin_interfaces/msg/Time": Time,
    "builtin_interfaces/msg/Duration": Duration,
    "std_msgs/msg/Header": Header,
    "std_msgs/msg/String": String,
    "std_msgs/msg/Bool": Bool,
    "std_msgs/msg/MultiArrayDimension": MultiArrayDimension,
    "std_msgs/msg/MultiArrayLayout": MultiArrayLayout,
    "std_msgs/msg/Float64MultiArray": Float64MultiArray,
    "sensor_msgs/msg/Image": Image,
    "sensor_msgs/msg/JointState": JointState,
    "geometry_msgs/msg/Vector3": Vector3,
    "geometry_msgs/msg/Twist": Twist,
    "geometry_msgs/msg/TwistStamped": TwistStamped,
    "trajectory_msgs/msg/JointTrajectoryPoint": JointTrajectoryPoint,
    "trajectory_msgs/msg/JointTrajectory": JointTrajectory,
    "diagnostic_msgs/msg/KeyValue": KeyValue,
    "diagnostic_msgs/msg/DiagnosticStatus": DiagnosticStatus,
    "diagnostic_msgs/msg/DiagnosticArray": DiagnosticArray,
}
"""ROS type name -> IDL struct."""


def dds_type_name(ros_type: str) -> str:
    """`pkg/msg/T` -> `pkg::msg::dds_::T_` (ROS 2's DDS type name)."""
    pkg, kind, name = ros_type.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def byte(value: int) -> int:
    """Value of a `byte` field (rclpy wants bytes, IDL an int)."""
    return int(value)


def u8seq(data: bytes) -> bytes:
    """Value of a `uint8[]` field from bytes."""
    return bytes(data)
