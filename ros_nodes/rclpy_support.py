"""rclpy glue shared by the two ROS nodes (imported only where rclpy exists: Humble and Jazzy).

* `rclpy_namespace()`: the message namespace `ros_nodes.messages` builds with (rclpy classes plus
  the `byte` / `u8seq` adapters);
* `declare_from_specs()` / `read_values()`: ROS parameters from dataclass-derived specs;
* `RclpyLogHandler`: routes the ROS-free modules' `logging` records to the node's rclpy logger, so
  they show up in `ros2 launch` output and /rosout;
* `CallbackGuard`: wraps executor callbacks so that an exception is logged and counted instead of
  ending the process (rclpy re-raises a callback's exception from `spin`);
* `spin_until_shutdown()`: the Humble/Jazzy-safe main loop (MultiThreadedExecutor, try/finally, no
  `with rclpy.init()`, which only newer distros have) that turns SIGINT and SIGTERM into the node's
  `on_exit()` (stop command, cleanup) and a clean exit.
"""

from __future__ import annotations

import array
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter

from ros_nodes.params import ParamSpec
from ros_nodes.safety import CauseLog, ShutdownSignals

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
    doubles and double arrays accept integers from YAML (`control_hz: 20`, `action_low: [-1, -1]`)
    via dynamic typing: rclpy would otherwise reject an integer value of a double parameter when
    declaring it, ending the node. The values are then checked by the node's validation instead.
    """
    for spec in specs:
        ros_type, py_type = _PARAM_TYPES[spec.ros_type]
        descriptor = ParameterDescriptor(
            name=spec.name,
            type=ros_type,
            description=spec.description,
            additional_constraints=extra_note(spec) if extra_note else "",
            dynamic_typing=spec.ros_type in ("double", "double_array"),
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


class CallbackGuard:
    """Executor callbacks that never raise: an exception is logged (once per cause, then at most
    every 30 s with a count) and counted, and the callback returns None.

    rclpy's MultiThreadedExecutor re-raises a callback's exception from `spin`, which would end the
    node without a stop command; a guarded callback fails alone and the node keeps running.
    """

    def __init__(self, logger: logging.Logger):
        self.causes = CauseLog(logger)
        self.counts: Counter[str] = Counter()
        self.last_error = ""
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Failed callbacks so far, all names together."""
        with self._lock:
            return sum(self.counts.values())

    def snapshot(self) -> tuple[dict[str, int], str]:
        """(failures per callback name, the last failure) at one instant, from any thread."""
        with self._lock:
            return dict(self.counts), self.last_error

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` guarded; failures are counted under `name` (e.g. "image", "tick", "diagnostics")."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a callback must never end the executor
                self.failed(name, e)
                return None

        guarded.__name__ = f"guarded_{name}"
        return guarded

    def failed(self, name: str, e: BaseException) -> None:
        """Count and log one failure of callback `name`."""
        text = f"{type(e).__name__}: {e}"
        with self._lock:
            self.counts[name] += 1
            self.last_error = f"{name}: {text}"
        self.causes.log(
            f"callback:{name}:{type(e).__name__}",
            f"{name} callback failed: {text} (skipped; the node keeps running)",
            level=logging.ERROR,
        )


def init_rclpy(args: list[str] | None) -> None:
    """rclpy.init without rclpy's signal handlers where available, so Ctrl-C reaches `finally` with
    a live context and the node can still publish its stop command."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(args=args)


def spin_until_shutdown(
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    threads: int = 4,
    poll_s: float = 0.1,
    max_failures: int = 50,
) -> None:
    """Create a node (or, when `make_node` returns a list, several: one executor spins them all) and
    spin it on a MultiThreadedExecutor of `threads` threads (1: a SingleThreadedExecutor, callbacks
    on the calling thread) until SIGINT, SIGTERM, an external rclpy shutdown or its `finished`
    attribute (if it has one) turns true; then always run its `on_exit()` (the stop command) and
    shut down cleanly.

    The executor is spun `poll_s` at a time, so a signal is acted on within `poll_s` even when no
    callback is due. An exception that still escapes a callback is logged and spinning continues;
    `max_failures` of them in a row (a broken executor rather than one bad callback) end the loop,
    through the same `on_exit()`.
    """
    init_rclpy(args)
    nodes: list[Any] = []
    executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
    log = logging.getLogger("ee_vla.ros")
    with ShutdownSignals() as signals:
        try:
            made = make_node()
            nodes = list(made) if isinstance(made, (list, tuple)) else [made]
            log = python_logger(nodes[0])
            for node in nodes:
                executor.add_node(node)
            failures = 0
            while (
                rclpy.ok()
                and not signals.event.is_set()
                and not any(getattr(node, "finished", False) for node in nodes)
            ):
                try:
                    executor.spin_once(timeout_sec=poll_s)
                    failures = 0
                except (KeyboardInterrupt, ExternalShutdownException):
                    break
                except UnicodeDecodeError as e:
                    # rclpy decodes string fields strictly while taking a message, before any callback
                    # runs: a sender's invalid UTF-8 is bad input, not a failure of the executor
                    # (with several nodes, which one's subscription it was is not known: logged)
                    on_bad = getattr(nodes[0], "on_undecodable_message", None) if len(nodes) == 1 else None
                    if on_bad is not None:
                        on_bad(e)
                    else:
                        log.warning("dropped a message that does not decode: %s", e)
                except Exception as e:  # noqa: BLE001 - one failed callback must not end the node
                    failures += 1
                    log.error("a callback failed: %s: %s (the node keeps running)", type(e).__name__, e)
                    if failures >= max_failures:
                        log.error("%d executor failures in a row: stopping the node", failures)
                        break
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            if signals.received:
                log.info("%s received: stopping", signal.Signals(signals.received[0]).name)
            _exit_nodes(executor, nodes)
            executor.shutdown()
            rclpy.try_shutdown()


def _exit_nodes(executor: Any, nodes: list[Any]) -> None:
    """Each node's `on_exit()` (its stop command) in order, then remove and destroy it; one node's
    failure does not skip the others' (it is re-raised at the end)."""
    error: BaseException | None = None
    for node in nodes:
        try:
            node.on_exit()
        except BaseException as e:  # noqa: BLE001 - the other nodes still stop
            error = error or e
        finally:
            try:
                executor.remove_node(node)
                node.destroy_node()
            except BaseException as e:  # noqa: BLE001
                error = error or e
    if error is not None:
        raise error
