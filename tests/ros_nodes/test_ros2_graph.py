"""ROS 2 for real: the policy node as a process on a real graph, driven by the `ros2` CLI and rclpy.

The node runs as `python -m ros_nodes.policy_node --ros-args ...` with the shipped policy
(ee_vla/checkpoints/default, which reads a 7-dim `agent_pos`, so `use_joint_state` is on); an rclpy
probe in this process publishes camera images (sensor-data QoS) and joint states and records the
commands with a RELIABLE subscription; `ros2 lifecycle` and `ros2 param` drive it. The plain-DDS
path (`ros_nodes.dds`, `ee-vla serve --transport dds`) is checked against rclpy in both directions.

Each graph is isolated (random domain id, host-only discovery over a 127.0.0.1 Cyclone
configuration: `ros2_graph.graph_env`). Assertions are on what arrives and in which order, never on
timing; every wait has a generous timeout. Skipped where rclpy or the `ros2` CLI is missing
(`make test-ros` runs them).
"""

from __future__ import annotations

import signal
import sys
import time

import pytest

try:
    import rclpy
except ImportError:
    rclpy = None

from ros2_graph import (  # noqa: E402 - tests/ros_nodes is on sys.path (conftest)
    Probe,
    Proc,
    dds_echo_argv,
    is_zero,
    lifecycle_state,
    new_domain_id,
    policy_node_argv,
    process_env,
    read_echo_lines,
    ros2_cli,
    ros2_node_verb,
    shipped_policy_params,
    wait_for,
)

if rclpy is None or ros2_cli() is None:
    pytest.skip(
        "needs ROS 2 (rclpy and the ros2 CLI): source a ROS 2 setup.bash or run `make test-ros`",
        allow_module_level=True,
    )

from geometry_msgs.msg import TwistStamped  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from ros_nodes.params import DEFAULT_COMMAND_TOPICS  # noqa: E402

pytestmark = pytest.mark.timeout(180)

NODE = "/policy_node"
TWIST_TOPIC = "/servo_node/delta_twist_cmds"
QUIET_S = 1.0
"""How long a test watches for commands that must not come (after a stop, while inactive, in dry run)."""


class Graph:
    """One test's graph: its environment, the processes started in it and the rclpy probe."""

    def __init__(self, tmp_path, command_topic: str = TWIST_TOPIC, command_type: type = TwistStamped):
        self.domain_id = new_domain_id()
        self.env = process_env(self.domain_id)
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.probe = Probe(self.domain_id, command_topic, command_type)

    def start(self, name: str, argv: list[str]) -> Proc:
        p = Proc(argv, self.env, self.tmp_path / f"{name}.log")
        self.procs.append(p)
        return p

    def start_node(self, **params) -> Proc:
        return self.start("policy_node", policy_node_argv("policy_node", **shipped_policy_params(**params)))

    def cli(self, *args: str) -> str:
        """`ros2 lifecycle|param VERB --no-daemon ARGS...`: the output."""
        return ros2_node_verb(self.env, *args)

    def set_state(self, transition: str, get: bool = True) -> str:
        """`ros2 lifecycle set NODE TRANSITION`, then (with `get`) the state `ros2 lifecycle get` reports."""
        out = self.cli("lifecycle", "set", NODE, transition)
        assert "Transitioning successful" in out, f"{transition}: {out}\n{self.procs[0].log()[-3000:]}"
        return lifecycle_state(self.env, NODE) if get else ""

    def close(self) -> None:
        try:
            self.probe.close()
        finally:
            for p in self.procs:
                p.close()


@pytest.fixture()
def graph(tmp_path):
    g = Graph(tmp_path)
    yield g
    g.close()


@pytest.fixture(scope="module")
def active_node(tmp_path_factory):
    """A node started with autostart (configured and active), fed images and joint states: shared by
    the tests that leave it active."""
    g = Graph(tmp_path_factory.mktemp("active_node"))
    try:
        node = g.start_node(autostart=True)
        g.probe.feeding = True
        assert g.probe.wait_commands(3, after=0, timeout=90), f"no commands; node log:\n{node.log()[-4000:]}"
        yield g, node
    finally:
        g.close()


def wait_node_up(g: Graph, node: Proc) -> str:
    """The node's first lifecycle state, once the CLI sees it."""
    states: list[str] = []
    ok = wait_for(lambda: states.append(lifecycle_state(g.env, NODE)) or "[" in states[-1], timeout=90, poll_s=0.2)
    assert ok and node.running(), f"node not on the graph: {states[-1:]}\n{node.log()[-4000:]}"
    return states[-1]


def assert_stopped_last(probe: Probe, n_before: int, proc: Proc) -> None:
    """After a stop: a zero command arrived after the first `n_before`, and it is the last one, also
    after QUIET_S more seconds."""
    assert wait_for(lambda: probe.count() > n_before and is_zero(probe.last()), timeout=15), (
        f"no stop command after {n_before} commands: {probe.since(n_before)[-5:]}\n{proc.log()[-3000:]}"
    )
    n_stop = probe.count()
    time.sleep(QUIET_S)
    assert probe.count() == n_stop, f"commands after the stop command: {probe.since(n_stop)}"
    assert is_zero(probe.last())


# ---- 1. lifecycle through `ros2 lifecycle` ------------------------------------------------------


def test_lifecycle_transitions_via_ros2_cli(graph):
    """configure / activate / deactivate / cleanup / shutdown by the CLI: commands flow only while
    active, and deactivate ends them with the zero stop command. A transition the state does not
    have is refused and changes nothing."""
    node = graph.start_node()
    probe = graph.probe
    assert wait_node_up(graph, node) == "unconfigured [1]"
    probe.feeding = True
    out = graph.cli("lifecycle", "set", NODE, "activate")  # unconfigured has no activate
    assert "Transitioning successful" not in out, out

    assert graph.set_state("configure") == "inactive [2]"
    time.sleep(QUIET_S)
    assert probe.count() == 0, "commands while inactive"

    assert graph.set_state("activate") == "active [3]"
    assert probe.wait_commands(3, after=0), f"no commands while active\n{node.log()[-3000:]}"

    n = probe.count()
    assert graph.set_state("deactivate") == "inactive [2]"
    assert_stopped_last(probe, n, node)  # images keep coming: still nothing after the stop

    # Activate again: commanding resumes.
    n = probe.count()
    graph.set_state("activate", get=False)
    assert probe.wait_commands(3, after=n)
    n = probe.count()
    graph.set_state("deactivate", get=False)
    assert wait_for(lambda: probe.count() > n and is_zero(probe.last()), timeout=15)

    graph.set_state("cleanup", get=False)
    assert graph.set_state("shutdown") == "finalized [4]"
    n = probe.count()
    time.sleep(QUIET_S)
    assert probe.count() == n
    assert node.running(), "a finalized node stays up until it is signalled"
    node.signal(signal.SIGINT)
    assert node.wait(timeout=30) == 0, node.log()[-3000:]
    assert probe.count() == n  # nothing was active: no second stop command


# ---- 1b. SIGINT / SIGTERM / shutdown of an active node ------------------------------------------


@pytest.mark.parametrize(
    "how, command_type, topic",
    [
        ("SIGINT", "array", "/arm/commands"),
        ("SIGTERM", "twist", ""),
        ("shutdown", "array", ""),
    ],
    ids=["SIGINT-array", "SIGTERM-twist", "shutdown-array"],
)
def test_active_node_ends_with_stop_command(tmp_path, how, command_type, topic):
    """An active node ended by SIGINT, SIGTERM or `ros2 lifecycle set shutdown` publishes the zero
    stop command as its last message; after a signal it exits 0, after shutdown it stays up,
    finalized, until signalled."""
    cls = Float64MultiArray if command_type == "array" else TwistStamped
    g = Graph(tmp_path, topic or "/" + DEFAULT_COMMAND_TOPICS[command_type], cls)
    try:
        extra = {"command_topic": topic} if topic else {}
        node = g.start_node(autostart=True, command_type=command_type, **extra)
        g.probe.feeding = True
        assert g.probe.wait_commands(3, after=0, timeout=90), node.log()[-4000:]
        assert len(g.probe.last()) == (7 if command_type == "array" else 6)
        n = g.probe.count()
        if how == "shutdown":
            assert g.set_state("shutdown") == "finalized [4]"
            assert_stopped_last(g.probe, n, node)
            assert node.running()
            n_stop = g.probe.count()
            node.signal(signal.SIGINT)
            assert node.wait(timeout=30) == 0, node.log()[-3000:]
            time.sleep(0.5)
            assert g.probe.count() == n_stop, "a second stop command after shutdown"
        else:
            node.signal(getattr(signal, how))
            node.signal(getattr(signal, how))  # a second signal does not interrupt the stop and cleanup
            assert node.wait(timeout=30) == 0, node.log()[-3000:]
            assert_stopped_last(g.probe, n, node)
            assert f"{how} received: stopping" in node.log()
        assert "stopped: stop command published" in node.log()
    finally:
        g.close()


# ---- 2. parameters through `ros2 param` ---------------------------------------------------------


def test_parameters_via_ros2_cli(active_node):
    """Valid values are applied (param get shows them; dry_run true stops the robot and the
    publishing, false resumes it); invalid ones are rejected with the node's reason, and the node
    keeps running and commanding."""
    g, node = active_node
    probe = g.probe

    def param_set(name: str, value: str) -> str:
        return g.cli("param", "set", NODE, name, value)

    def param_get(name: str) -> str:
        return g.cli("param", "get", NODE, name).strip()

    out = param_set("control_hz", "-1.0")
    assert "Setting parameter failed" in out and "control_hz: must be in (0, 2000] Hz" in out, out
    out = param_set("command_type", "joystick")
    assert "Setting parameter failed" in out and "must be one of twist|array|trajectory, got 'joystick'" in out, out
    out = param_set("action_high", "[0.5, 0.5]")  # the policy has 7 action dims
    assert "Setting parameter failed" in out, out
    assert param_get("command_type") == "String value is: twist"
    assert param_get("control_hz") == "Double value is: 0.0"

    # A valid value of a parameter that applies on the next configure: accepted and shown.
    assert "Set parameter successful" in param_set("control_hz", "5.0")
    assert param_get("control_hz") == "Double value is: 5.0"

    # dry_run applies at once: one stop command goes out (a controller holding the last command
    # must not keep moving), then nothing is published while it is true; commands resume after.
    n = probe.count()
    assert "Set parameter successful" in param_set("dry_run", "true")
    assert_stopped_last(probe, n, node)
    n = probe.count()
    assert wait_for(lambda: "DRY RUN (not published to servo_node/delta_twist_cmds)" in node.log(), timeout=15)
    assert "Set parameter successful" in param_set("dry_run", "false")
    assert probe.wait_commands(3, after=n), "commands did not resume after dry_run false"
    assert lifecycle_state(g.env, NODE) == "active [3]" and node.running()


def test_invalid_startup_parameters_fail_configure_with_reason(active_node):
    """Invalid `-p` values on the command line do not kill the node: it comes up unconfigured, and
    `configure` fails with the reason in its log; it stays up, unconfigured."""
    g, _ = active_node
    bad = g.start("bad_node", policy_node_argv("bad_node", **shipped_policy_params(command_type="joystick")))
    states: list[str] = []
    assert wait_for(lambda: states.append(lifecycle_state(g.env, "/bad_node")) or "[" in states[-1], timeout=90), (
        states[-1:],
        bad.log()[-3000:],
    )
    assert states[-1] == "unconfigured [1]"
    out = g.cli("lifecycle", "set", "/bad_node", "configure")
    assert "Transitioning failed" in out, out
    assert "must be one of twist|array|trajectory, got 'joystick'" in bad.log()
    assert lifecycle_state(g.env, "/bad_node") == "unconfigured [1]" and bad.running()
    bad.signal(signal.SIGTERM)
    assert bad.wait(timeout=30) == 0, bad.log()[-3000:]


# ---- 3. QoS -------------------------------------------------------------------------------------


def test_qos_reliable_commands_and_best_effort_images(active_node):
    """Commands are offered RELIABLE (the probe's RELIABLE subscription receives them); the node takes
    images with sensor-data QoS (BEST_EFFORT), from the probe's BEST_EFFORT camera, and decodes them."""
    from rclpy.qos import ReliabilityPolicy

    g, node = active_node
    probe = g.probe
    pubs = [e for e in probe.endpoints(TWIST_TOPIC, publishers=True) if e.node_name == "policy_node"]
    assert [e.qos_profile.reliability for e in pubs] == [ReliabilityPolicy.RELIABLE]
    subs = [e for e in probe.endpoints("/camera/image_raw", publishers=False) if e.node_name == "policy_node"]
    assert [e.qos_profile.reliability for e in subs] == [ReliabilityPolicy.BEST_EFFORT]
    mine = probe.endpoints("/camera/image_raw", publishers=True)
    assert [e.qos_profile.reliability for e in mine] == [ReliabilityPolicy.BEST_EFFORT]

    n = probe.count()
    assert probe.wait_commands(3, after=n), "the RELIABLE subscription receives no commands"
    assert wait_for(lambda: int(probe.diagnostics().get("chunks_done", "0")) > 0, timeout=30), probe.diagnostics()
    diag = probe.diagnostics()
    assert int(diag["images_received"]) > 0 and diag["model_errors"] == "0", diag


# ---- 4. wire interop with the plain-DDS path ----------------------------------------------------


def test_rclpy_node_commands_read_over_plain_dds(active_node):
    """The rclpy node's TwistStamped commands decode with ros_nodes.dds (a separate process, plain
    Cyclone DDS) into the same values the rclpy probe receives."""
    pytest.importorskip("cyclonedds")
    g, node = active_node
    echo = g.start("dds_echo", dds_echo_argv(g.domain_id, TWIST_TOPIC, "geometry_msgs/msg/TwistStamped", 60))
    try:
        assert wait_for(lambda: len(read_echo_lines(echo.log())) >= 5, timeout=60), echo.log()[-3000:]
        over_dds = read_echo_lines(echo.log())
        assert all(len(v) == 6 for v in over_dds)
        over_rclpy = {tuple(v) for v in g.probe.since(0)}
        assert any(tuple(v) in over_rclpy for v in over_dds if not is_zero(v)), (over_dds[:3], list(over_rclpy)[:3])
    finally:
        echo.close()


def test_dds_serve_commands_read_by_rclpy(graph):
    """`ee-vla serve --transport dds` on the same graph: it takes the rclpy probe's images, joint states
    and instruction (std_msgs/String), and the probe's rclpy subscription receives its TwistStamped
    commands, the zero stop command last after SIGINT."""
    pytest.importorskip("cyclonedds")
    probe = graph.probe
    argv = [
        sys.executable, "-m", "ee_vla.cli", "serve", "--transport", "dds",
        "--model-path", shipped_policy_params()["model_path"], "--domain-id", str(graph.domain_id),
        "--loopback-only", "--no-dry-run", "--use-joint-state",
        "--image-timeout-s", "10", "--decode-deadline-s", "10", "--max-hold-s", "0",
    ]  # fmt: skip
    serve = graph.start("serve", argv)
    probe.feeding = True
    from std_msgs.msg import String

    def got_commands() -> bool:
        probe.instruction_pub.publish(String(data="pick up the red cube"))  # serve waits for one
        return probe.wait_commands(3, after=0, timeout=0.5)

    assert wait_for(got_commands, timeout=90), serve.log()[-4000:]
    msgs = list(probe.command_msgs)
    assert all(m.header.frame_id == "base_link" for m in msgs)
    assert any(m.header.stamp.sec > 0 for m in msgs)
    n = probe.count()
    serve.signal(signal.SIGINT)
    assert serve.wait(timeout=30) == 0, serve.log()[-3000:]
    assert_stopped_last(probe, n, serve)
