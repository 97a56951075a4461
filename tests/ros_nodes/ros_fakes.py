"""Test doubles for the ROS layer: a fake policy with controllable timing, a fake clock, a tiny env.

Also imported by the DDS subprocess scripts (they put this directory on sys.path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from ee_vla.streaming import StreamedAction


class FakeClock:
    """A manually advanced clock."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


def wait_until(cond: Callable[[], Any], timeout: float = 60.0, poll: float = 0.002) -> bool:
    """Poll `cond` in real time until it is true (True) or `timeout` seconds pass (its last value)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return bool(cond())


def action_value(chunk: int, index: int, dim: int = 7) -> np.ndarray:
    """The fake policy's action `index` of its `chunk`-th call (1-based): recognisable and in [-1, 1]."""
    a = np.full(dim, 0.01 * chunk + 0.1 * index)
    a[-1] = 0.5
    return a


def commanding_runner(**overrides: Any):
    """A configured, unthreaded `PolicyRunner` of a `FakePolicy` that has something to send at every
    tick once a chunk is decoded: array commands published (no dry run), inputs that never go stale
    and the last action held for ever. `overrides`: other `PolicyParams` values."""
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner

    values: dict[str, Any] = dict(
        policy_process=False,
        warmup=False,
        instruction="pick",
        command_type="array",
        dry_run=False,
        image_timeout_s=1000.0,
        decode_deadline_s=1000.0,
        max_hold_s=0.0,  # 0: hold the last action for ever
    )
    values.update(overrides)
    runner = PolicyRunner(PolicyParams(**values), lambda _p: FakePolicy(), threaded=False)
    runner.configure()
    return runner


class FakePolicy:
    """Streams `chunk_size` actions per call.

    Args:
        delay_s: real sleep before each action (streaming with latency).
        gate: if given, each action waits for a release (`gate.release()`) - deterministic tests.
        fail: exception raised on every call (a broken model), or on calls where fail_when(call) is true.
        clock: timestamps of the StreamedActions.
        values: action generator (call, index) -> (action_dim,) array.
        cameras: the observation keys of the images it reads (`vla.cameras`, as a `VLAPolicy`'s;
            None: no `vla`, which the runner reads as the one camera `pixels`); a call whose
            observation lacks one raises `BadInputError`.
    """

    def __init__(
        self,
        chunk_size: int = 4,
        action_dim: int = 7,
        delay_s: float = 0.0,
        gate: threading.Semaphore | None = None,
        fail: BaseException | None = None,
        fail_when: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        values: Callable[[int, int], np.ndarray] | None = None,
        cameras: list[str] | tuple[str, ...] | None = None,
    ):
        if cameras is not None:
            from types import SimpleNamespace

            self.vla = SimpleNamespace(cameras=tuple(cameras), proprio_dim=0)
        self.chunk_size = chunk_size
        self.action_dim = action_dim
        self.delay_s = delay_s
        self.gate = gate
        self.fail = fail
        self.fail_when = fail_when
        self.clock = clock
        self.values = values or (lambda c, i: action_value(c, i, action_dim))
        self.calls: list[dict[str, Any]] = []
        self.deadlines: list[Callable[[int], float | None] | None] = []
        self.resets = 0
        self.warm_start_shift: int | None = None
        self.shifts: list[int | None] = []  # warm_start_shift at each call

    def reset(self) -> None:
        self.resets += 1

    def stream_action_chunk(self, obs: dict[str, Any], action_deadline=None) -> Iterator[StreamedAction]:
        self.calls.append(obs)
        self.deadlines.append(action_deadline)
        self.shifts.append(self.warm_start_shift)
        call = len(self.calls)
        if self.fail is not None and (self.fail_when is None or self.fail_when(call)):
            raise self.fail
        for camera in getattr(getattr(self, "vla", None), "cameras", ()):
            if camera not in obs:
                from ros_nodes.safety import BadInputError

                raise BadInputError(f"observation has no {camera!r}")
        for i in range(self.chunk_size):
            if self.gate is not None:
                if not self.gate.acquire(timeout=10):
                    raise TimeoutError("fake policy gate never released")
            if self.delay_s:
                time.sleep(self.delay_s)
            a = np.asarray(self.values(call, i), dtype=np.float64)
            yield StreamedAction(i, a, np.zeros(self.action_dim, np.int64), self.clock(), True, i + 1)


class TinyEnv(gym.Env):
    """A 7-dof point 'robot' with a 16x16 camera: success when agent_pos[0] > 0.5 (episodes of 20 steps).
    With `wrist_camera` it also observes a 12x12 `wrist_pixels` image whose green channel counts the
    steps (the main camera's red channel does too)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, render_mode: str | None = "rgb_array", max_steps: int = 20, wrist_camera: bool = False):
        self.render_mode = render_mode
        self.max_steps = max_steps
        self.wrist_camera = wrist_camera
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        spaces = {
            "pixels": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "agent_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
        }
        if wrist_camera:
            spaces["wrist_pixels"] = gym.spaces.Box(0, 255, (12, 12, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.task_description = "move right"
        self.pos = np.zeros(3)
        self.t = 0
        self.actions: list[np.ndarray] = []

    def _obs(self) -> dict[str, Any]:
        px = np.zeros((16, 16, 3), np.uint8)
        px[..., 0] = min(255, self.t * 10)
        obs = {"pixels": px, "agent_pos": self.pos.copy()}
        if self.wrist_camera:
            wrist = np.zeros((12, 12, 3), np.uint8)
            wrist[..., 1] = min(255, self.t * 10)
            obs["wrist_pixels"] = wrist
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(3)
        self.t = 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        self.actions.append(action)
        self.pos = self.pos + 0.1 * action[:3]
        self.t += 1
        success = bool(self.pos[0] > 0.5)
        return self._obs(), float(success), success, self.t >= self.max_steps, {"is_success": success}


# ---- a fake rclpy ---------------------------------------------------------------------------------
# Just enough of rclpy (Humble/Jazzy API) for the nodes in ros_nodes to run without ROS 2: parameters
# typed the way rclpy types them (a statically typed parameter rejects an override of another type at
# declaration), lifecycle transitions (an exception in a transition callback becomes ERROR, then
# on_error), publishers that raise once destroyed (like rclpy's InvalidHandle), and an executor whose
# spin_once runs due timers and queued messages on a thread pool and re-raises a callback's exception
# from spin_once, as rclpy's MultiThreadedExecutor does. Message classes are ros_nodes.dds.msgs'.


class UndecodableMessage:
    """Queue this on a fake subscription to get what rclpy does with a string field that is not valid
    UTF-8: its generated converter decodes strictly while the executor takes the message, so
    `spin_once` raises UnicodeDecodeError outside every callback of the node."""

    def __init__(self, raw: bytes = b"pick \xff\xfe"):
        self.raw = raw

    def error(self) -> UnicodeDecodeError:
        try:
            self.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return e
        raise ValueError(f"{self.raw!r} is valid UTF-8")


ROS_MODULES = (
    "rclpy",
    "rclpy.node",
    "rclpy.lifecycle",
    "rclpy.callback_groups",
    "rclpy.qos",
    "rclpy.executors",
    "rclpy.parameter",
    "rclpy.signals",
    "rclpy.exceptions",
    "rcl_interfaces",
    "rcl_interfaces.msg",
    "builtin_interfaces",
    "builtin_interfaces.msg",
    "diagnostic_msgs",
    "diagnostic_msgs.msg",
    "geometry_msgs",
    "geometry_msgs.msg",
    "sensor_msgs",
    "sensor_msgs.msg",
    "std_msgs",
    "std_msgs.msg",
    "trajectory_msgs",
    "trajectory_msgs.msg",
)
"""Modules `install_fake_ros` puts into sys.modules."""

ROS_USERS = ("ros_nodes.rclpy_support", "ros_nodes.policy_node", "ros_nodes.sim_bridge_node")
"""Modules importing rclpy: dropped from sys.modules with the fakes so each test imports them afresh."""


def install_fake_ros() -> Any:
    """Register the fake rclpy and message packages in sys.modules; returns the fake `rclpy` module
    (its `graph` records every publisher, subscription and timer)."""
    import enum
    import logging
    import sys
    import types
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import dataclass

    from ros_nodes.dds import msgs

    mods = {name: types.ModuleType(name) for name in ROS_MODULES}

    # -- messages
    for pkg, names in {
        "builtin_interfaces": ["Time", "Duration"],
        "diagnostic_msgs": ["DiagnosticArray", "DiagnosticStatus", "KeyValue"],
        "geometry_msgs": ["Twist", "TwistStamped", "Vector3"],
        "sensor_msgs": ["Image", "JointState"],
        "std_msgs": ["Bool", "Float64MultiArray", "Header", "MultiArrayDimension", "MultiArrayLayout", "String"],
        "trajectory_msgs": ["JointTrajectory", "JointTrajectoryPoint"],
    }.items():
        for n in names:
            setattr(mods[f"{pkg}.msg"], n, getattr(msgs, n))
        mods[pkg].msg = mods[f"{pkg}.msg"]

    # -- rcl_interfaces
    class ParameterType:
        PARAMETER_NOT_SET, PARAMETER_BOOL, PARAMETER_INTEGER, PARAMETER_DOUBLE, PARAMETER_STRING = range(5)
        PARAMETER_BYTE_ARRAY, PARAMETER_BOOL_ARRAY, PARAMETER_INTEGER_ARRAY = 5, 6, 7
        PARAMETER_DOUBLE_ARRAY, PARAMETER_STRING_ARRAY = 8, 9

    @dataclass
    class ParameterDescriptor:
        name: str = ""
        type: int = 0
        description: str = ""
        additional_constraints: str = ""
        read_only: bool = False
        dynamic_typing: bool = False

    @dataclass
    class SetParametersResult:
        successful: bool = False
        reason: str = ""

    rcl = mods["rcl_interfaces.msg"]
    rcl.ParameterType, rcl.ParameterDescriptor, rcl.SetParametersResult = (
        ParameterType,
        ParameterDescriptor,
        SetParametersResult,
    )
    mods["rcl_interfaces"].msg = rcl

    # -- rclpy.exceptions
    class InvalidParameterTypeException(Exception):
        pass

    class InvalidParameterValueException(Exception):
        pass

    class ParameterNotDeclaredException(Exception):
        pass

    class ParameterUninitializedException(Exception):
        pass

    class InvalidHandle(Exception):
        """What rclpy raises when a destroyed entity is used."""

    exc = mods["rclpy.exceptions"]
    for c in (
        InvalidParameterTypeException,
        InvalidParameterValueException,
        ParameterNotDeclaredException,
        ParameterUninitializedException,
        InvalidHandle,
    ):
        setattr(exc, c.__name__, c)

    # -- rclpy.parameter
    class Parameter:
        class Type(enum.IntEnum):
            NOT_SET = 0
            BOOL = 1
            INTEGER = 2
            DOUBLE = 3
            STRING = 4
            BYTE_ARRAY = 5
            BOOL_ARRAY = 6
            INTEGER_ARRAY = 7
            DOUBLE_ARRAY = 8
            STRING_ARRAY = 9

            @classmethod
            def from_parameter_value(cls, v: Any) -> Parameter.Type:
                T = cls
                if v is None:
                    return T.NOT_SET
                if isinstance(v, bool):
                    return T.BOOL
                if isinstance(v, int):
                    return T.INTEGER
                if isinstance(v, float):
                    return T.DOUBLE
                if isinstance(v, str):
                    return T.STRING
                if isinstance(v, (list, tuple)):
                    if not v:
                        return T.BYTE_ARRAY  # rclpy cannot tell an empty list's element type
                    for py, t in ((bool, T.BOOL_ARRAY), (int, T.INTEGER_ARRAY), (float, T.DOUBLE_ARRAY)):
                        if all(isinstance(x, py) for x in v) and not (
                            py is int and any(isinstance(x, bool) for x in v)
                        ):
                            return t
                    if all(isinstance(x, str) for x in v):
                        return T.STRING_ARRAY
                raise TypeError(f"the parameter value {v!r} is not a valid parameter type")

        def __init__(self, name: str, type_: Any = None, value: Any = None):
            self.name = name
            self.value = value
            self.type_ = type_ if type_ is not None else Parameter.Type.from_parameter_value(value)

    mods["rclpy.parameter"].Parameter = Parameter

    # -- rclpy.callback_groups, rclpy.qos, rclpy.signals
    class _Group:
        pass

    mods["rclpy.callback_groups"].MutuallyExclusiveCallbackGroup = type("MutuallyExclusiveCallbackGroup", (_Group,), {})
    mods["rclpy.callback_groups"].ReentrantCallbackGroup = type("ReentrantCallbackGroup", (_Group,), {})

    class ReliabilityPolicy(enum.Enum):
        RELIABLE = 1
        BEST_EFFORT = 2

    class DurabilityPolicy(enum.Enum):
        TRANSIENT_LOCAL = 1
        VOLATILE = 2

    @dataclass
    class QoSProfile:
        depth: int = 10
        reliability: Any = ReliabilityPolicy.RELIABLE
        durability: Any = DurabilityPolicy.VOLATILE

    qos = mods["rclpy.qos"]
    qos.ReliabilityPolicy, qos.DurabilityPolicy, qos.QoSProfile = ReliabilityPolicy, DurabilityPolicy, QoSProfile
    qos.qos_profile_sensor_data = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)

    class SignalHandlerOptions(enum.Enum):
        NO = 0
        SIGINT = 1
        SIGTERM = 2
        ALL = 3

    mods["rclpy.signals"].SignalHandlerOptions = SignalHandlerOptions

    # -- graph and entities
    class Graph:
        def __init__(self):
            self.publishers: list[Publisher] = []
            self.subscriptions: list[Subscription] = []
            self.timers: list[Timer] = []
            self.signal_handler_options: Any = None
            self.shut_down = False
            self.initialized = False

        def messages(self, topic: str) -> list[Any]:
            """Everything published on `topic` (by any publisher, destroyed ones included)."""
            return [m for p in self.publishers if p.topic == topic for m in p.messages]

    graph = Graph()

    class Publisher:
        def __init__(self, msg_type: type, topic: str, qos: Any):
            self.msg_type, self.topic, self.qos = msg_type, topic, qos
            self.messages: list[Any] = []
            self.destroyed = False
            self.lock = threading.Lock()

        def publish(self, msg: Any) -> None:
            with self.lock:
                if self.destroyed:
                    raise InvalidHandle(f"publisher on {self.topic} was destroyed")
                if not isinstance(msg, self.msg_type):
                    raise TypeError(f"Expected {self.msg_type}, got {type(msg)}")
                self.messages.append(msg)
            for s in list(graph.subscriptions):
                if s.topic == self.topic and not s.destroyed:
                    s.queue.append(msg)

        def destroy(self) -> None:
            with self.lock:
                self.destroyed = True

    class Subscription:
        def __init__(self, msg_type: type, topic: str, callback: Callable, qos: Any, group: Any):
            self.msg_type, self.topic, self.callback, self.qos, self.group = msg_type, topic, callback, qos, group
            self.queue: deque = deque()
            self.destroyed = False

    class Timer:
        def __init__(self, period: float, callback: Callable, group: Any):
            self.period, self.callback, self.group = period, callback, group
            self.next_due = time.monotonic() + period
            self.destroyed = False

    class _Logger:
        def __init__(self, name: str):
            self._log = logging.getLogger(f"fake_rclpy.{name}")

        def debug(self, msg: str) -> None:
            self._log.debug(msg)

        def info(self, msg: str) -> None:
            self._log.info(msg)

        def warning(self, msg: str) -> None:
            self._log.warning(msg)

        warn = warning

        def error(self, msg: str) -> None:
            self._log.error(msg)

        def fatal(self, msg: str) -> None:
            self._log.critical(msg)

    class _Time:
        def __init__(self, ns: int):
            self.nanoseconds = ns

        def seconds_nanoseconds(self) -> tuple[int, int]:
            return divmod(self.nanoseconds, 10**9)

    class _Clock:
        def now(self) -> _Time:
            return _Time(time.time_ns())

    class Node:
        def __init__(
            self,
            node_name: str,
            *,
            namespace: str | None = None,
            parameter_overrides: list[Parameter] | None = None,
            **_kwargs: Any,
        ):
            self._name = node_name
            self._namespace = namespace or "/"
            self._overrides = {p.name: p for p in parameter_overrides or []}
            self._parameters: dict[str, Parameter] = {}
            self._descriptors: dict[str, Any] = {}
            self._set_callbacks: list[Callable] = []
            self.publishers: list[Publisher] = []
            self.subscriptions: list[Subscription] = []
            self.timers: list[Timer] = []
            self._logger = _Logger(node_name)
            self._clock = _Clock()

        def get_name(self) -> str:
            return self._name

        def get_namespace(self) -> str:
            return self._namespace

        def get_logger(self) -> _Logger:
            return self._logger

        def get_clock(self) -> _Clock:
            return self._clock

        # parameters
        def declare_parameter(self, name: str, value: Any = None, descriptor: Any = None, ignore_override=False):
            descriptor = descriptor if descriptor is not None else ParameterDescriptor()
            if isinstance(value, Parameter.Type):
                descriptor.type, value = int(value), None
            elif not descriptor.dynamic_typing and value is not None:
                descriptor.type = int(Parameter.Type.from_parameter_value(value))
            if not ignore_override and name in self._overrides:
                value = self._overrides[name].value
            if name in self._parameters:
                raise RuntimeError(f"parameter {name!r} already declared")
            p = Parameter(name, value=value)
            if not descriptor.dynamic_typing and value is not None and int(p.type_) != descriptor.type:
                raise InvalidParameterTypeException(
                    f"Trying to set parameter '{name}' to '{value}' of type '{p.type_.name}', "
                    f"expecting type '{Parameter.Type(descriptor.type).name}'"
                )
            for cb in self._set_callbacks:
                r = cb([p])
                if not r.successful:
                    raise InvalidParameterValueException(name, value, r.reason)
            self._parameters[name] = p
            self._descriptors[name] = descriptor
            return p

        def get_parameter(self, name: str) -> Parameter:
            if name not in self._parameters:
                raise ParameterNotDeclaredException(name)
            p = self._parameters[name]
            if p.value is None:
                raise ParameterUninitializedException(name)
            return p

        def has_parameter(self, name: str) -> bool:
            return name in self._parameters

        def add_on_set_parameters_callback(self, cb: Callable) -> None:
            self._set_callbacks.insert(0, cb)

        def set_parameters(self, parameters: list[Parameter]) -> list[Any]:
            results = []
            for p in parameters:
                if p.name not in self._parameters:
                    raise ParameterNotDeclaredException(p.name)
                d = self._descriptors[p.name]
                if not d.dynamic_typing and int(p.type_) != d.type:
                    results.append(SetParametersResult(False, f"Wrong parameter type, expected '{d.type}'"))
                    continue
                r = SetParametersResult(True)
                for cb in self._set_callbacks:
                    r = cb([p])
                    if not r.successful:
                        break
                if r.successful:
                    self._parameters[p.name] = p
                results.append(r)
            return results

        # entities
        def create_publisher(self, msg_type: type, topic: str, qos: Any, **_kwargs: Any) -> Publisher:
            p = Publisher(msg_type, topic, qos)
            self.publishers.append(p)
            graph.publishers.append(p)
            return p

        def create_subscription(self, msg_type, topic, callback, qos, *, callback_group=None, **_kw):
            s = Subscription(msg_type, topic, callback, qos, callback_group)
            self.subscriptions.append(s)
            graph.subscriptions.append(s)
            return s

        def create_timer(self, period: float, callback: Callable, callback_group: Any = None, **_kw) -> Timer:
            t = Timer(period, callback, callback_group)
            self.timers.append(t)
            graph.timers.append(t)
            return t

        def destroy_publisher(self, p: Publisher) -> bool:
            p.destroy()
            return True

        def destroy_subscription(self, s: Subscription) -> bool:
            s.destroyed = True
            return True

        def destroy_timer(self, t: Timer) -> bool:
            t.destroyed = True
            return True

        def destroy_node(self) -> None:
            for p in self.publishers:
                p.destroy()
            for e in self.subscriptions + self.timers:
                e.destroyed = True

    mods["rclpy.node"].Node = Node

    # -- lifecycle
    class TransitionCallbackReturn(enum.Enum):
        SUCCESS = 97
        FAILURE = 98
        ERROR = 99

    @dataclass
    class LifecycleState:
        label: str
        state_id: int = 0

    class LifecycleNode(Node):
        def __init__(self, node_name: str, **kwargs: Any):
            self.lifecycle_state = "unconfigured"
            super().__init__(node_name, **kwargs)

        def on_configure(self, state):
            return TransitionCallbackReturn.SUCCESS

        def on_activate(self, state):
            return TransitionCallbackReturn.SUCCESS

        def on_deactivate(self, state):
            return TransitionCallbackReturn.SUCCESS

        def on_cleanup(self, state):
            return TransitionCallbackReturn.SUCCESS

        def on_shutdown(self, state):
            return TransitionCallbackReturn.SUCCESS

        def on_error(self, state):
            return TransitionCallbackReturn.SUCCESS

        def _run(self, cb: Callable, state: str) -> Any:
            try:
                return cb(LifecycleState(state))
            except Exception:  # rclpy turns an exception in a transition callback into ERROR, silently
                return TransitionCallbackReturn.ERROR

        def _transition(self, allowed: tuple[str, ...], cb: Callable, ok: str, fail: str) -> Any:
            if self.lifecycle_state not in allowed:
                raise RuntimeError(f"transition not allowed in state {self.lifecycle_state}")
            before = self.lifecycle_state
            ret = self._run(cb, before)
            if ret == TransitionCallbackReturn.SUCCESS:
                self.lifecycle_state = ok
            elif ret == TransitionCallbackReturn.FAILURE:
                self.lifecycle_state = fail
            else:
                err = self._run(self.on_error, before)
                self.lifecycle_state = "unconfigured" if err == TransitionCallbackReturn.SUCCESS else "finalized"
            return ret

        def trigger_configure(self):
            return self._transition(("unconfigured",), self.on_configure, "inactive", "unconfigured")

        def trigger_activate(self):
            return self._transition(("inactive",), self.on_activate, "active", "inactive")

        def trigger_deactivate(self):
            return self._transition(("active",), self.on_deactivate, "inactive", "active")

        def trigger_cleanup(self):
            return self._transition(("inactive",), self.on_cleanup, "unconfigured", "inactive")

        def trigger_shutdown(self):
            return self._transition(
                ("unconfigured", "inactive", "active"), self.on_shutdown, "finalized", self.lifecycle_state
            )

    lc = mods["rclpy.lifecycle"]
    lc.LifecycleNode, lc.LifecycleState, lc.TransitionCallbackReturn = (
        LifecycleNode,
        LifecycleState,
        TransitionCallbackReturn,
    )

    # -- executors
    class ExternalShutdownException(Exception):
        pass

    class MultiThreadedExecutor:
        def __init__(self, num_threads: int | None = None, **_kw: Any):
            self._nodes: list[Node] = []
            self._pool = ThreadPoolExecutor(num_threads or 4)
            self._futures: list[Any] = []
            self._running: set[int] = set()
            self._is_shutdown = False

        def add_node(self, node: Node) -> bool:
            self._nodes.append(node)
            return True

        def remove_node(self, node: Node) -> None:
            if node in self._nodes:
                self._nodes.remove(node)

        def wake(self) -> None:
            pass

        def _ready(self) -> tuple[Callable, tuple, int] | None:
            now = time.monotonic()
            for n in list(self._nodes):
                for s in list(n.subscriptions):
                    if not s.destroyed and s.queue:
                        msg = s.queue.popleft()
                        if isinstance(msg, UndecodableMessage):  # rclpy fails in take, before any callback
                            raise msg.error()
                        return s.callback, (msg,), id(s)
                for t in list(n.timers):
                    if not t.destroyed and t.next_due <= now and id(t) not in self._running:
                        t.next_due = max(t.next_due + t.period, now)
                        return t.callback, (), id(t)
            return None

        def spin_once(self, timeout_sec: float | None = None) -> None:
            end = None if timeout_sec is None or timeout_sec < 0 else time.monotonic() + timeout_sec
            while True:
                if graph.shut_down:
                    raise ExternalShutdownException()
                work = self._ready()
                if work is not None or (end is not None and time.monotonic() >= end):
                    break
                time.sleep(0.002)
            if work is not None:
                cb, args, key = work
                self._running.add(key)

                def run(cb=cb, args=args, key=key):
                    try:
                        return cb(*args)
                    finally:
                        self._running.discard(key)

                self._futures.append(self._pool.submit(run))
            for f in self._futures[:]:
                if f.done():
                    self._futures.remove(f)
                    f.result()  # a callback's exception surfaces here, as in rclpy

        def spin(self) -> None:
            while not graph.shut_down and not self._is_shutdown:
                self.spin_once()

        def shutdown(self, timeout_sec: float | None = None) -> bool:
            self._is_shutdown = True
            self._pool.shutdown(wait=True)
            return True

    ex = mods["rclpy.executors"]
    ex.MultiThreadedExecutor, ex.ExternalShutdownException = MultiThreadedExecutor, ExternalShutdownException
    ex.SingleThreadedExecutor = MultiThreadedExecutor

    # -- rclpy
    rclpy = mods["rclpy"]

    def init(args: Any = None, *, context: Any = None, signal_handler_options: Any = None, **_kw: Any) -> None:
        graph.initialized = True
        graph.shut_down = False
        graph.signal_handler_options = signal_handler_options

    def ok(context: Any = None) -> bool:
        return graph.initialized and not graph.shut_down

    def try_shutdown(context: Any = None) -> None:
        graph.shut_down = True

    rclpy.init, rclpy.ok, rclpy.try_shutdown, rclpy.shutdown = init, ok, try_shutdown, try_shutdown
    rclpy.graph = graph
    for sub in ("node", "lifecycle", "callback_groups", "qos", "executors", "parameter", "signals", "exceptions"):
        setattr(rclpy, sub, mods[f"rclpy.{sub}"])
    for name in ROS_USERS:
        sys.modules.pop(name, None)
    sys.modules.update(mods)
    return rclpy


def uninstall_fake_ros() -> None:
    """Remove what `install_fake_ros` registered (and the modules that imported it)."""
    import sys

    for name in ROS_MODULES + ROS_USERS:
        sys.modules.pop(name, None)
