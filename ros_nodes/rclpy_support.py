"""rclpy glue shared by the two ROS nodes (imported only where rclpy exists: Humble and Jazzy).

* `rclpy_namespace()`: the message namespace `ros_nodes.messages` builds with (rclpy classes plus
  the `byte` / `u8seq` adapters);
* `declare_from_specs()` / `read_values()`: ROS parameters from dataclass-derived specs;
* `RclpyLogHandler`: routes the ROS-free modules' `logging` records to the node's rclpy logger, so
  they show up in `ros2 launch` output and /rosout;
* `spin_until_shutdown()`: the Humble/Jazzy-safe main loop (MultiThreadedExecutor, try/finally, no
  `with rclpy.init()`, which only newer distros have).
"""

from __future__ import annotations

import array
import logging
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter

from ros_nodes.params import ParamSpec

_PARAM_TYPES = {
    "bool": (ParameterType.PARAMETER_BOOL, Parameter.Type.BOOL),
    "integer": (ParameterType.PARAMETER_INTEGER, Parameter.Type.INTEGER),
    "double": (ParameterType.PARAMETER_DOUBLE, Parameter.Type.DOUBLE),
    "string": (ParameterType.PARAMETER_STRING, Parameter.Type.STRING),
    "double_array": (ParameterType.PARAMETER_DOUBLE_ARRAY, Parameter.Type.DOUBLE_ARRAY),
    "integer_array": (ParameterType.PARAMETER_INTEGER_ARRAY, Parameter.Type.INTEGER_ARRAY),
    "string_array": (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY),
}


def rclpy_namespace() -> SimpleNamespace:
    """rclpy message classes under the names `ros_nodes.messages` expects."""
    from builtin_interfaces.msg import Duration, Time
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import Twist, TwistStamped, Vector3
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float64MultiArray, Header, MultiArrayDimension, MultiArrayLayout, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    classes = dict(
        Duration=Duration,
        Time=Time,
        DiagnosticArray=DiagnosticArray,
        DiagnosticStatus=DiagnosticStatus,
        KeyValue=KeyValue,
        Twist=Twist,
        TwistStamped=TwistStamped,
        Vector3=Vector3,
        Image=Image,
        JointState=JointState,
        Bool=Bool,
        Float64MultiArray=Float64MultiArray,
        Header=Header,
        MultiArrayDimension=MultiArrayDimension,
        MultiArrayLayout=MultiArrayLayout,
        String=String,
        JointTrajectory=JointTrajectory,
        JointTrajectoryPoint=JointTrajectoryPoint,
    )
    # `byte` fields are bytes of length 1 in rclpy; uint8[] is array('B') (bytes is checked per element).
    return SimpleNamespace(**classes, byte=lambda v: bytes([int(v)]), u8seq=lambda b: array.array("B", b))


def msg_class(ns: SimpleNamespace, ros_type: str) -> type:
    """`pkg/msg/T` -> the class in the namespace."""
    return getattr(ns, ros_type.rsplit("/", 1)[-1])


def declare_from_specs(
    node: Any, specs: Iterable[ParamSpec], extra_note: Callable[[ParamSpec], str] | None = None
) -> None:
    """Declare one ROS parameter per spec, typed, with the spec's description.

    Empty-list defaults are declared by type only (rclpy would infer a byte array from `[]`);
    doubles accept integers from YAML (`control_hz: 20`) via dynamic typing.
    """
    for spec in specs:
        ros_type, py_type = _PARAM_TYPES[spec.ros_type]
        descriptor = ParameterDescriptor(
            name=spec.name,
            type=ros_type,
            description=spec.description,
            additional_constraints=extra_note(spec) if extra_note else "",
            dynamic_typing=spec.ros_type == "double",
        )
        default = spec.default
        value = py_type if isinstance(default, list) and not default else default
        node.declare_parameter(spec.name, value, descriptor)


def plain(value: Any) -> Any:
    """A parameter value as plain Python (array.array -> list)."""
    if isinstance(value, (array.array, tuple)):
        return list(value)
    return value


def read_values(node: Any, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Current values of the specs' parameters (a parameter declared by type only and never set -> default)."""
    out: dict[str, Any] = {}
    for spec in specs:
        try:
            value = node.get_parameter(spec.name).value
        except Exception:  # noqa: BLE001 - ParameterUninitializedException: declared by type only
            value = None
        out[spec.name] = spec.default if value is None else plain(value)
    return out


class RclpyLogHandler(logging.Handler):
    """Forward `logging` records to an rclpy logger (RcutilsLogger)."""

    def __init__(self, ros_logger: Any):
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(msg)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(msg)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(msg)
            else:
                self.ros_logger.debug(msg)
        except Exception:  # noqa: BLE001 - logging must never raise into the node
            self.handleError(record)


def python_logger(node: Any) -> logging.Logger:
    """A `logging.Logger` whose records go to the node's rclpy logger."""
    logger = logging.getLogger(f"ee_vla.ros.{node.get_name()}")
    logger.handlers = [RclpyLogHandler(node.get_logger())]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def init_rclpy(args: list[str] | None) -> None:
    """rclpy.init without rclpy's SIGINT handler where available, so Ctrl-C reaches `finally` with a
    live context and the node can still publish its stop command."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(args=args)


def spin_until_shutdown(make_node: Callable[[], Any], args: list[str] | None = None, threads: int = 4) -> None:
    """Create a node, spin it on a MultiThreadedExecutor, and always run its `on_exit()` and shut down."""
    init_rclpy(args)
    node = None
    executor = MultiThreadedExecutor(num_threads=threads)
    try:
        node = make_node()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            try:
                node.on_exit()
            finally:
                executor.remove_node(node)
                node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
