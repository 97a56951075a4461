"""Helpers of test_ros2_graph.py: nodes as processes on a real ROS 2 graph, the `ros2` CLI, an rclpy probe.

Every test gets a graph of its own: a ROS_DOMAIN_ID that no other test holds, discovery limited to the host, and a
Cyclone DDS configuration bound to 127.0.0.1 with unicast discovery (`loopback_config`, the one the
DDS path uses), so the rclpy processes, the `ros2` CLI and the plain-DDS tools find each other on any
machine, with or without multicast, and never see another test's graph.

    python ros2_graph.py dds-echo DOMAIN TOPIC ROS_TYPE SECONDS

prints each sample received over plain Cyclone DDS (ros_nodes.dds) as one JSON line `{"values": [...]}`
until SECONDS have passed or SIGINT (the rclpy -> DDS direction of the interop test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_MODEL = REPO / "ee_vla" / "checkpoints" / "default"
JOINTS = [f"joint{i}" for i in range(7)]
"""The shipped policy reads a 7-dim `agent_pos`: the nodes run with use_joint_state and the probe publishes these."""


def ros2_cli() -> str | None:
    """Path of the `ros2` executable, or None."""
    return shutil.which("ros2")


def new_domain_id() -> int:
    """A domain id for one test that no other test on this machine holds (`domains`)."""
    from domains import claim_domain_id

    return claim_domain_id()


def graph_env(domain_id: int) -> dict[str, str]:
    """The variables every process of one test's graph runs with."""
    from ros_nodes.dds.transport import loopback_config

    env = {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "CYCLONEDDS_URI": loopback_config(domain_id),
        "RMW_IMPLEMENTATION": os.environ.get("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp"),
        "PYTHONUNBUFFERED": "1",
    }
    return env


def process_env(domain_id: int) -> dict[str, str]:
    """os.environ plus `graph_env`, with the repository importable."""
    env = dict(os.environ)
    env.pop("ROS_LOCALHOST_ONLY", None)  # Jazzy warns when it is set next to the discovery range
    env.update(graph_env(domain_id))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    return env


class Proc:
    """A process of the graph, its output (stdout and stderr together) in a log file.

    Started in a session of its own, so that a Ctrl-C of pytest reaches only pytest; `close()` ends
    it (and whatever it started) if a test left it running.
    """

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status; raises AssertionError (with the log) when it is still running after `timeout`."""
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log = self.log()[-4000:]
            raise AssertionError(f"{self.argv[:4]} still running after {timeout} s; log:\n{log}") from None

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # the session this process leads: it and its children
        except (ProcessLookupError, PermissionError):
            pass
        self.p.wait(timeout=20)
        self._log.close()


def policy_node_argv(node_name: str = "policy_node", **params: Any) -> list[str]:
    """`python -m ros_nodes.policy_node --ros-args -r __node:=NAME -p k:=v ...`."""
    argv = [sys.executable, "-m", "ros_nodes.policy_node", "--ros-args", "-r", f"__node:={node_name}"]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = "[" + ",".join(json.dumps(x) for x in v) + "]"
        argv += ["-p", f"{k}:={v}"]
    return argv


def shipped_policy_params(**overrides: Any) -> dict[str, Any]:
    """Parameters of a commanding node with the shipped policy (generous timeouts for a loaded CPU)."""
    params: dict[str, Any] = dict(
        model_path=str(DEFAULT_MODEL),
        instruction="pick up the red cube",
        use_joint_state=True,
        dry_run=False,
        image_timeout_s=10.0,
        decode_deadline_s=10.0,
        max_hold_s=0.0,
        diagnostics_hz=2.0,
    )
    params.update(overrides)
    return params


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `ros2 ARGS...`; stdout and stderr together in `.stdout`."""
    cli = ros2_cli()
    assert cli is not None
    return subprocess.run(
        [cli, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def ros2_node_verb(env: dict[str, str], *args: str, attempts: int = 5) -> str:
    """`ros2 VERB ... --no-daemon` for a verb that names a node (lifecycle, param): its output,
    repeated while the CLI reports "Node not found" (its short discovery wait ended first)."""
    verb, sub, rest = args[0], args[1], args[2:]
    wait = ["--spin-time", "0.5"] + (["--timeout", "10"] if verb == "param" else [])
    out = ""
    for _ in range(attempts):
        out = ros2(env, verb, sub, "--no-daemon", *wait, *rest).stdout
        if "Node not found" not in out:
            break
    return out


def lifecycle_state(env: dict[str, str], node: str) -> str:
    """`ros2 lifecycle get NODE` output ("unconfigured [1]", ...) or the CLI's complaint."""
    return ros2_node_verb(env, "lifecycle", "get", node).strip()


def wait_for(cond: Callable[[], Any], timeout: float, poll_s: float = 0.05) -> bool:
    """Poll `cond()` until it is truthy (True) or `timeout` seconds pass (False)."""
    end = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(poll_s)


def command_values(msg: Any) -> list[float]:
    """The numbers a command carries: twist linear + angular, array data, trajectory point positions."""
    if hasattr(msg, "twist"):
        t = msg.twist
        return [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
    if hasattr(msg, "points"):
        return [float(x) for p in msg.points for x in p.positions]
    return [float(x) for x in msg.data]


def is_zero(values: list[float]) -> bool:
    return bool(values) and all(v == 0.0 for v in values)


class Probe:
    """The test's rclpy node (a context of its own, spun on a background thread): a RELIABLE command
    subscriber and, while `feeding`, a camera (sensor-data QoS: BEST_EFFORT) and joint states at 20 Hz.
    """

    def __init__(self, domain_id: int, command_topic: str, command_type: type, name: str = "graph_probe"):
        import numpy as np
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from ros_nodes.messages import build_image, build_joint_state
        from ros_nodes.rclpy_support import rclpy_namespace

        # Read by rmw_cyclonedds when the node joins the domain; put back by close().
        env = graph_env(domain_id)
        self._saved_env = {k: os.environ.get(k) for k in [*env, "ROS_LOCALHOST_ONLY"]}
        os.environ.update(env)
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.commands: list[list[float]] = []
        self.command_msgs: list[Any] = []
        self.feeding = False
        self.reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(command_type, command_topic, self._on_command, self.reliable)
        self._diagnostics: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, self.reliable)
        self.image_pub = self.node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        self.joint_pub = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.instruction_pub = self.node.create_publisher(String, "instruction", self.reliable)
        m = rclpy_namespace()
        rng = np.random.default_rng(0)
        self._image = build_image(m, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (0, 0))
        self._joints = build_joint_state(m, JOINTS, np.zeros(7), (0, 0))
        self.node.create_timer(0.05, self._feed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="graph-probe", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down under us at close()
                if self._stop.is_set():
                    return
                raise

    def _on_command(self, msg: Any) -> None:
        with self._lock:
            self.commands.append(command_values(msg))
            self.command_msgs.append(msg)

    def _on_diagnostics(self, msg: Any) -> None:
        for st in msg.status:
            if st.name.endswith(": policy"):
                with self._lock:
                    self._diagnostics = {kv.key: kv.value for kv in st.values}

    def diagnostics(self) -> dict[str, str]:
        """The values of the newest policy status on /diagnostics ({} before one arrives)."""
        with self._lock:
            return dict(self._diagnostics)

    def _feed(self) -> None:
        if self.feeding:
            stamp = self.node.get_clock().now().to_msg()
            self._image.header.stamp = stamp
            self._joints.header.stamp = stamp
            self.image_pub.publish(self._image)
            self.joint_pub.publish(self._joints)

    def count(self) -> int:
        with self._lock:
            return len(self.commands)

    def since(self, n: int) -> list[list[float]]:
        """The commands received after the first `n`."""
        with self._lock:
            return list(self.commands[n:])

    def last(self) -> list[float] | None:
        with self._lock:
            return self.commands[-1] if self.commands else None

    def wait_commands(self, n_more: int, after: int, timeout: float = 60.0, moving: bool = True) -> bool:
        """Wait for `n_more` commands after the first `after` (non-zero ones when `moving`)."""

        def enough() -> bool:
            got = self.since(after)
            return len([c for c in got if not (moving and is_zero(c))]) >= n_more

        return wait_for(enough, timeout)

    def endpoints(self, topic: str, publishers: bool) -> list[Any]:
        """Graph info (node name, QoS) of the topic's publishers or subscriptions."""
        get = self.node.get_publishers_info_by_topic if publishers else self.node.get_subscriptions_info_by_topic
        return get(topic)

    def close(self) -> None:
        import rclpy

        self.feeding = False
        self._stop.set()
        self._thread.join(timeout=10)
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dds_echo_argv(domain_id: int, topic: str, ros_type: str, seconds: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "dds-echo", str(domain_id), topic, ros_type, str(seconds)]


def read_echo_lines(text: str) -> list[list[float]]:
    """The values of each sample a `dds-echo` process printed."""
    out = []
    for line in text.splitlines():
        if line.startswith('{"values"'):
            out.append(json.loads(line)["values"])
    return out


def _dds_echo(domain_id: int, topic: str, ros_type: str, seconds: float) -> None:
    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config

    graph = DdsGraph(domain_id, loopback_config(domain_id))
    graph.reader(
        topic,
        msgs.ROS_TYPES[ros_type],
        "default",
        depth=100,
        callback=lambda s: print(json.dumps({"values": command_values(s)}), flush=True),
    )
    print("ready", flush=True)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            graph.spin_once(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        graph.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["dds-echo"]:
        _dds_echo(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        raise SystemExit(__doc__)
