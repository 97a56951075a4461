"""The rclpy policy node on the fake rclpy (ros_fakes.install_fake_ros): the lifecycle's stop command,
integer arrays for double-array parameters, guarded callbacks, the diagnostics timer racing teardown,
and SIGINT/SIGTERM ending in the stop command and a clean exit (in a subprocess)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_fakes import FakePolicy, install_fake_ros, uninstall_fake_ros

pytest.importorskip("cyclonedds")  # the fake rclpy's message classes are ros_nodes.dds.msgs'

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOPIC = "forward_command_controller/commands"


@pytest.fixture()
def fake_ros():
    if "rclpy" in sys.modules and not hasattr(sys.modules["rclpy"], "graph"):
        pytest.skip("a real rclpy is loaded in this process")
    saved = {k: sys.modules[k] for k in ("rclpy",) if k in sys.modules}
    rclpy = install_fake_ros()
    rclpy.init()
    yield rclpy
    uninstall_fake_ros()
    sys.modules.update(saved)


def make_node(fake_ros, policy=None, **overrides):
    """A `PolicyNode` of `policy` (default: a new `FakePolicy` at each configure) with `overrides`."""
    from rclpy.parameter import Parameter

    from ros_nodes.policy_node import PolicyNode

    values = dict(
        dry_run=False,
        warmup=False,
        policy_process=False,
        instruction="pick",
        command_type="array",
        image_timeout_s=1000.0,
        decode_deadline_s=1000.0,
        max_hold_s=0.0,
    )
    values.update(overrides)
    return PolicyNode(
        policy_factory=lambda _p: policy or FakePolicy(),
        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()],
    )


def timer_callbacks(node):
    """(tick, diagnostics) callbacks of the node's two timers, in creation order."""
    tick, diag = [t.callback for t in node.timers if not t.destroyed]
    return tick, diag


def level(status) -> int:
    """A DiagnosticStatus level (a `byte` field: bytes of length 1 in rclpy)."""
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


def run_until_commands(node, n: int = 3) -> None:
    tick, _ = timer_callbacks(node)
    node.runner.on_image(np.zeros((8, 8, 3), np.uint8))
    assert node.runner.wait_for_chunks(1, timeout=30)
    for _ in range(n):
        tick()


def test_deactivate_publishes_the_stop_command_last(fake_ros):
    node = make_node(fake_ros)
    node.trigger_configure()
    node.trigger_activate()
    run_until_commands(node)
    sent = fake_ros.graph.messages(TOPIC)
    assert len(sent) == 3 and all(np.any(m.data) for m in sent)
    tick, _ = timer_callbacks(node)
    node.trigger_deactivate()
    tick()  # a tick after the stop publishes nothing
    sent = fake_ros.graph.messages(TOPIC)
    assert len(sent) == 4 and not np.any(sent[-1].data)
    node.trigger_cleanup()
    assert node.runner is None and all(p.destroyed for p in node.publishers)
    node.on_exit()  # again: nothing left to do, nothing raised


def test_integer_arrays_are_accepted_for_double_array_parameters(fake_ros):
    """`action_low: [-1, ...]` in YAML arrives as an integer array: declared, converted, validated."""
    node = make_node(fake_ros, action_low=[-1] * 7, action_high=[1, 1, 1, 1, 1, 1, 2], control_hz=20)
    node.trigger_configure()
    assert node.runner is not None
    assert node.runner.params.action_low == (-1.0,) * 7 and node.runner.params.action_high[-1] == 2.0
    assert node.runner.params.control_hz == 20.0
    from rclpy.parameter import Parameter

    assert node.set_parameters([Parameter("action_high", value=[1] * 7)])[0].successful
    result = node.set_parameters([Parameter("action_high", value="wide")])[0]
    assert not result.successful and "action_high" in result.reason


def test_a_failing_callback_is_counted_and_the_executor_keeps_spinning(fake_ros):
    from rclpy.executors import MultiThreadedExecutor

    node = make_node(fake_ros)
    node.trigger_configure()
    node.trigger_activate()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    sub = next(s for s in node.subscriptions if s.topic == "instruction")
    sub.queue.append(object())  # not a String: the callback raises inside
    try:
        end = time.monotonic() + 10
        while node.guard.counts["instruction"] == 0 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(5):  # a failed callback's exception would surface from spin_once here
            executor.spin_once(timeout_sec=0.01)
    finally:
        executor.shutdown()
    assert node.guard.counts["instruction"] == 1 and "AttributeError" in node.guard.last_error

    # A failing control tick: counted, and /diagnostics says so at ERROR level.
    def broken_tick(now=None):
        raise RuntimeError("schedule exploded")

    node.runner.tick = broken_tick
    tick, diag = timer_callbacks(node)
    tick()
    diag()
    status = fake_ros.graph.messages("/diagnostics")[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert values["callback_errors"] == "2" and values["callback_errors_tick"] == "1"
    assert level(status) == 2 and "schedule exploded" in status.message
    diag()  # no new failure: the level is the runner's own again
    last = fake_ros.graph.messages("/diagnostics")[-1].status[0]
    assert level(last) < 2 and "callback failure" not in last.message
    node.on_exit()


def test_parameter_callback_failure_rejects_instead_of_raising(fake_ros):
    from rclpy.parameter import Parameter

    node = make_node(fake_ros)
    node.trigger_configure()

    def broken_update(_params):
        raise KeyError("boom")

    node.runner.update_params = broken_update
    result = node.set_parameters([Parameter("dry_run", value=True)])[0]
    assert not result.successful and "KeyError" in result.reason
    assert node.guard.counts["parameters"] == 1
    node.on_exit()


def test_diagnostics_timer_racing_teardown_never_publishes_on_a_destroyed_publisher(fake_ros):
    """The diagnostics callback fires while cleanup destroys the publishers (made deterministic by
    running it from inside destroy_publisher): it publishes nothing and raises nothing."""
    node = make_node(fake_ros)
    node.trigger_configure()
    node.trigger_activate()
    run_until_commands(node)
    _, diag = timer_callbacks(node)
    raw_diag = node._on_diagnostics  # unguarded: an exception would surface here
    destroy = node.destroy_publisher
    fired = []

    def destroy_and_fire(pub):
        destroy(pub)
        raw_diag()
        diag()
        fired.append(pub.topic)

    node.destroy_publisher = destroy_and_fire
    node.trigger_deactivate()
    n_diag = len(fake_ros.graph.messages("/diagnostics"))
    assert node.trigger_cleanup().name == "SUCCESS"
    assert fired and len(fake_ros.graph.messages("/diagnostics")) == n_diag
    assert node.guard.total == 0 and node.runner is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_in_the_stop_command_and_a_clean_exit(sig):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_node_proc.py")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", line + proc.stderr.read()[-3000:]
        t = time.monotonic()
        proc.send_signal(sig)
        line = proc.stdout.readline()
        assert line.strip() == "CLOSING", line + proc.stderr.read()[-3000:]
        proc.send_signal(sig)  # again during cleanup (an impatient user, launch's escalation): no effect
        out, err = proc.communicate(timeout=60)
        exit_s = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, f"exit code {proc.returncode}: {err[-3000:]}"
    result = json.loads(out.strip().splitlines()[-1])
    assert result["last_is_stop"] and result["after_first_stop"] == 0, result
    assert result["torch_loaded"] is False and result["callback_errors"] == 0, result
    print(f"{signal.Signals(sig).name}: exited {exit_s:.2f} s after the signal, {result['commands']} commands")


def test_sim_bridge_node_survives_a_failing_step_and_a_bad_command(fake_ros):
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from ros_fakes import TinyEnv

    from ros_nodes.sim_bridge_node import SimBridgeNode

    class BrokenEnv(TinyEnv):
        def step(self, action):
            raise RuntimeError("physics diverged")

    node = SimBridgeNode(
        env=BrokenEnv(),
        parameter_overrides=[Parameter("wait_for_command", value=False), Parameter("command_type", value="array")],
    )
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    node.subscriptions[0].queue.append(object())  # not a command message
    try:
        end = time.monotonic() + 20
        while node.guard.counts["step"] < 2 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(5):  # a failed callback's exception would surface from spin_once here
            executor.spin_once(timeout_sec=0.01)
    finally:
        executor.shutdown()
        node.on_exit()
    assert node.guard.counts["step"] >= 2  # the first step resets the env, the next ones fail
    assert "physics diverged" in node.guard.last_error
    assert len(fake_ros.graph.messages("camera/image_raw")) >= 1  # the reset frame went out


def test_messages_rclpy_cannot_decode_are_bad_input_and_never_stop_the_node(fake_ros):
    """Invalid UTF-8 in a String makes rclpy raise while taking the message, outside the node's
    callbacks: far more of them than `max_failures` in a row neither stop the node nor its commands."""
    import threading

    from ros_fakes import UndecodableMessage

    from ros_nodes.rclpy_support import spin_until_shutdown  # this test's fake rclpy (not `from ros_nodes import`)

    nodes = []

    def make():
        node = make_node(fake_ros, autostart=True)
        nodes.append(node)
        return node

    loop = threading.Thread(target=spin_until_shutdown, args=(make,), kwargs={"max_failures": 3})
    loop.start()
    try:
        end = time.monotonic() + 20
        while not (nodes and nodes[0].runner is not None and nodes[0].runner.state == "active"):
            assert time.monotonic() < end and loop.is_alive(), "the node did not activate"
            time.sleep(0.02)
        node = nodes[0]
        sub = next(s for s in node.subscriptions if s.topic == "instruction")
        for _ in range(20):
            sub.queue.append(UndecodableMessage())
        while sub.queue and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.3)
        assert loop.is_alive() and node.runner is not None and node.runner.state == "active"
        assert int(node.runner.status().values["bad_inputs"]) >= 20
        assert "UnicodeDecodeError" in node.runner.status().values["last_bad_input"]
    finally:
        fake_ros.graph.shut_down = True
        loop.join(timeout=30)
    assert not loop.is_alive()


def test_the_node_subscribes_an_image_topic_per_camera_the_policy_reads(fake_ros):
    """`wrist_image_topic` is subscribed only for a policy that reads `wrist_pixels`; each camera's
    images reach the policy under its key, nothing is decoded before both arrived, and a malformed
    wrist image is a bad input of the node, which keeps running."""
    from rclpy.parameter import Parameter

    from ros_nodes.dds import msgs
    from ros_nodes.messages import build_image

    def image_subscriptions(node) -> dict:
        return {s.topic: s for s in node.subscriptions if not s.destroyed and s.msg_type is msgs.Image}

    one = make_node(fake_ros, wrist_image_topic="hand/image_raw")
    one.trigger_configure()
    assert list(image_subscriptions(one)) == ["camera/image_raw"]  # a one-camera policy: no wrist topic
    one.on_exit()

    policy = FakePolicy(cameras=("pixels", "wrist_pixels"))
    node = make_node(fake_ros, policy, wrist_image_topic="hand/image_raw")
    result = node.set_parameters([Parameter("wrist_image_topic", value="hand image")])[0]
    assert not result.successful and result.reason.startswith("wrist_image_topic: ")
    node.trigger_configure()
    node.trigger_activate()
    try:
        subs = image_subscriptions(node)
        assert sorted(subs) == ["camera/image_raw", "hand/image_raw"]
        front = np.full((8, 8, 3), 1, np.uint8)
        hand = np.full((6, 10, 3), 2, np.uint8)
        subs["camera/image_raw"].callback(build_image(msgs, front, (0, 0)))
        bad = build_image(msgs, hand, (0, 0))
        bad.encoding = "yuv422"
        subs["hand/image_raw"].callback(bad)
        runner = node.runner
        assert runner.bad_inputs() == 1 and "hand/image_raw" in runner.last_bad_input
        time.sleep(0.3)  # the worker would have decoded by now
        assert policy.calls == [] and runner.status().message == "waiting for images on hand/image_raw"
        # a fresh front image too: an observation is as old as its oldest image, and every action
        # of a chunk decoded from a 0.3 s old one would be past due (chunk_start observation)
        subs["camera/image_raw"].callback(build_image(msgs, front, (0, 0)))
        subs["hand/image_raw"].callback(build_image(msgs, hand, (0, 0)))
        assert runner.wait_for_chunks(1, timeout=30)
        obs = policy.calls[0]
        assert np.array_equal(obs["pixels"], front) and np.array_equal(obs["wrist_pixels"], hand)
        tick, _ = timer_callbacks(node)
        tick()
        assert len(fake_ros.graph.messages(TOPIC)) == 1 and node.guard.snapshot()[0] == {}
    finally:
        node.on_exit()


def test_sim_bridge_node_publishes_the_wrist_camera_for_a_policy_that_reads_it(fake_ros, two_camera_vla_dir):
    """Given a `model_path` whose policy reads `wrist_pixels`, the rclpy sim bridge publishes the
    gripper camera on `wrist_image_topic` beside the main camera, each step, stamped alike."""
    from rclpy.parameter import Parameter
    from ros_fakes import TinyEnv

    from ros_nodes.sim_bridge_node import SimBridgeNode

    node = SimBridgeNode(
        env=TinyEnv(wrist_camera=True),
        parameter_overrides=[
            Parameter("model_path", value=str(two_camera_vla_dir)),
            Parameter("wait_for_command", value=False),
            Parameter("wrist_image_topic", value="hand/image_raw"),
        ],
    )
    try:
        step = node.timers[0].callback
        for _ in range(3):
            step()
    finally:
        node.on_exit()
    front, wrist = fake_ros.graph.messages("camera/image_raw"), fake_ros.graph.messages("hand/image_raw")
    assert len(front) == len(wrist) == 3 and node.guard.snapshot()[0] == {}
    assert (wrist[-1].height, wrist[-1].width, wrist[-1].header.frame_id) == (12, 12, "wrist_camera")
    assert [m.header.stamp for m in wrist] == [m.header.stamp for m in front]
    assert wrist[-1].data[1] == 20  # the green channel counts TinyEnv's steps (2 after the reset)
