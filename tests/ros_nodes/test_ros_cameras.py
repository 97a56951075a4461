"""A policy that reads two cameras (`pixels` and `wrist_pixels`) behind the runner, the DDS server,
the fleet and the sim bridge: one image topic per camera the policy reads (`image_topic`,
`wrist_image_topic`), no decode until every camera has delivered an image newer than the last
decode and none is older than `image_timeout_s`, and a missing, stale or malformed camera named by
its topic. (The rclpy node's subscriptions: test_ros_node_fakes.py and test_ros_rclpy_nodes.py.)"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from domains import claim_domain_id
from ros_fakes import FakePolicy, TinyEnv

from ros_nodes.params import PolicyParams
from ros_nodes.runner import PolicyRunner, load_policy

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CAMERAS = ("pixels", "wrist_pixels")
FRONT_TOPIC, WRIST_TOPIC = "camera/image_raw", "wrist_camera/image_raw"
RNG = np.random.default_rng(0)
FRONT = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
WRIST = RNG.integers(0, 256, (48, 40, 3), dtype=np.uint8)


def fake_runner(clock, **params):
    """A configured, active, unthreaded runner of a `FakePolicy` that reads both cameras; it decodes
    every new image (`chunk_size_threshold` 1) unless told otherwise."""
    kw = dict(
        instruction="pick",
        control_hz=10.0,
        image_timeout_s=0.5,
        warmup=False,
        policy_process=False,
        chunk_size_threshold=1.0,
    )
    kw.update(params)
    policy = FakePolicy(clock=clock, cameras=CAMERAS)
    r = PolicyRunner(PolicyParams(**kw), lambda _p: policy, clock=clock, threaded=False)
    r.configure()
    r.activate()
    return r, policy


# ---- the runner, fake clock and fake policy ----------------------------------------------------


def test_the_newest_image_of_each_camera_is_decoded_once_every_camera_has_a_new_one(clock):
    r, policy = fake_runner(clock)
    assert r.cameras == CAMERAS and r.camera_topics == {"pixels": FRONT_TOPIC, "wrist_pixels": WRIST_TOPIC}
    st = r.status()
    assert st.values["watchdog"] == "waiting" and st.message == f"waiting for images on {FRONT_TOPIC}, {WRIST_TOPIC}"
    t0 = clock()
    older, newer = FRONT.copy(), FRONT.copy()
    newer[0, 0] = [1, 2, 3]
    assert r.on_image(older) and r.on_image(newer)
    assert not r.process_pending() and r.tick() is None  # no wrist image yet: nothing decoded or sent
    assert r.status().message == f"waiting for images on {WRIST_TOPIC}"
    clock.advance(0.05)
    assert r.on_image(WRIST, camera="wrist_pixels")
    assert r.process_pending()
    obs = policy.calls[0]
    assert np.array_equal(obs["pixels"], newer) and np.array_equal(obs["wrist_pixels"], WRIST)
    # the observation is as old as its oldest image: the first action came 0.05 s after the front one
    assert r.first_action_latency.percentile(50) == pytest.approx(0.05)
    assert r.status(t0 + 0.1).values["watchdog"] == "ok" and r.tick().kind == "action"
    # a new front image beside the wrist image already decoded is not a new observation
    assert r.on_image(FRONT) and not r.process_pending()
    assert r.on_image(WRIST, camera="wrist_pixels") and r.process_pending()
    assert len(policy.calls) == 2
    v = r.status().values
    assert (
        v["images_received"] == "5" and v["images_received_pixels"] == "3" and v["images_received_wrist_pixels"] == "2"
    )
    assert r.bad_inputs() == 0


def test_a_stale_wrist_camera_halts_blocks_decoding_and_is_named(clock):
    r, policy = fake_runner(clock, keep_dims_on_zero=(6,))
    r.on_image(FRONT)
    r.on_image(WRIST, camera="wrist_pixels")
    assert r.process_pending()
    assert r.tick().kind == "action"
    stop = None
    for _ in range(8):  # the front camera keeps going, the wrist camera went quiet
        clock.advance(0.1)
        r.on_image(FRONT)
        assert not r.process_pending()
        e = r.tick()
        stop = stop or (e if e is not None and e.kind == "stop" else None)
    assert stop is not None and stop.source == "stop:stale input" and stop.actions[6] == 0.5
    assert r.tick() is None  # one stop command, then silence
    st = r.status()
    assert st.level == 1 and st.values["watchdog"] == "stale" and st.values["watchdog_trips"] == "1"
    assert st.message.startswith("halted: no valid image for 0.80 s (> 0.5 s) on ")
    assert st.message.endswith(f" on {WRIST_TOPIC}")  # the wrist topic alone, not the front one
    assert st.values["image_age_ms_wrist_pixels"] == "800" and st.values["image_age_ms_pixels"] == "0"
    assert len(policy.calls) == 1
    # the wrist camera is back: the next decode reads both, commanding resumes
    r.on_image(WRIST, camera="wrist_pixels")
    assert r.process_pending() and len(policy.calls) == 2
    e = r.tick()
    assert e is not None and e.kind == "action" and e.source == "chunk"
    assert r.status().values["watchdog"] == "ok" and r.watchdog.trips == 1


def test_images_further_apart_than_image_timeout_s_are_not_decoded_together(clock, caplog):
    r, policy = fake_runner(clock)
    r.on_image(WRIST, camera="wrist_pixels")
    clock.advance(0.8)  # the wrist image is stale by the time the front one arrives
    r.on_image(FRONT)
    with caplog.at_level(logging.INFO, logger="ros_nodes.runner"):
        assert not r.process_pending()
    assert policy.calls == [] and r.bad_inputs() == 0
    assert any("not decoding" in m and WRIST_TOPIC in m for m in caplog.messages), caplog.messages
    assert r.status().message.endswith(f"on {WRIST_TOPIC}") and r.tick() is None
    r.on_image(WRIST, camera="wrist_pixels")
    assert not r.process_pending()  # the front image went with the skipped observation
    r.on_image(FRONT)
    assert r.process_pending() and len(policy.calls) == 1


def test_a_malformed_wrist_message_is_dropped_and_counted(clock):
    r, policy = fake_runner(clock)
    assert r.on_image(FRONT)
    assert not r.on_image_fields(16, 16, "yuv422", 32, b"\0" * 512, camera="wrist_pixels")
    assert not r.on_image_msg(
        SimpleNamespace(height="x", width=None, encoding=3, step=0, data=b""), camera="wrist_pixels"
    )
    assert not r.on_image(np.zeros((8, 8), np.uint8), camera="wrist_pixels")
    assert r.bad_inputs() == 3 and WRIST_TOPIC in r.last_bad_input
    assert not r.process_pending() and r.tick() is None and policy.calls == []
    st = r.status()
    assert r.state == "active" and st.values["bad_inputs"] == "3" and st.values["model_errors"] == "0"
    assert st.message == f"waiting for images on {WRIST_TOPIC}"
    assert r.on_image(WRIST, camera="wrist_pixels") and r.process_pending()
    assert r.tick().kind == "action"


def test_an_image_of_a_camera_the_policy_does_not_read_is_ignored(clock):
    params = PolicyParams(instruction="pick", control_hz=10.0, warmup=False)
    r = PolicyRunner(params, lambda _p: FakePolicy(clock=clock), clock=clock, threaded=False)
    r.configure()
    r.activate()
    assert r.cameras == ("pixels",) and r.camera_topics == {"pixels": FRONT_TOPIC}
    assert not r.on_image(WRIST, camera="wrist_pixels")
    assert r.bad_inputs() == 0 and r.images_received == 0 and not r.process_pending()
    assert "image_age_ms_wrist_pixels" not in r.status().values


def test_a_camera_without_a_topic_parameter_fails_configure(clock):
    policy = FakePolicy(clock=clock, cameras=("pixels", "top_pixels"))
    r = PolicyRunner(PolicyParams(warmup=False), lambda _p: policy, clock=clock)
    with pytest.raises(ValueError, match="camera 'top_pixels', which no parameter gives an image topic"):
        r.configure()
    assert r.state == "unconfigured"


# ---- the runner with the tiny random two-camera policy --------------------------------------------


def recording(runner: PolicyRunner) -> list:
    """Record what the runner's policy is asked (obs) and streams (actions) at each call."""
    calls: list = []
    inner = runner.policy.stream_action_chunk

    def stream(obs, action_deadline=None):
        calls.append((obs, []))
        for sa in inner(obs, action_deadline):
            calls[-1][1].append(sa.action)
            yield sa

    runner.policy.stream_action_chunk = stream
    return calls


def test_the_two_camera_tiny_policy_decodes_once_both_cameras_arrived(two_camera_vla_dir):
    from ee_vla.policy import VLAPolicy

    params = PolicyParams(
        model_path=str(two_camera_vla_dir),
        policy_process=False,
        instruction="pick up the red cube",
        control_hz=10.0,
        image_timeout_s=30.0,
        decode_deadline_s=30.0,
    )
    r = PolicyRunner(params, load_policy, threaded=False)
    r.configure()  # its warm-up decodes a blank image of each camera
    try:
        assert r.cameras == CAMERAS and r.camera_topics == {"pixels": FRONT_TOPIC, "wrist_pixels": WRIST_TOPIC}
        calls = recording(r)
        r.activate()
        assert r.on_image(FRONT) and not r.process_pending()
        assert r.status().message == f"waiting for images on {WRIST_TOPIC}"
        assert r.on_image(WRIST, camera="wrist_pixels") and r.process_pending()
        assert r.chunks_done == 1 and r.model_errors == 0 and r.bad_inputs() == 0, r.last_error
        obs, actions = calls[0]
        assert np.array_equal(obs["pixels"], FRONT) and np.array_equal(obs["wrist_pixels"], WRIST)
        e = r.tick()
        assert e is not None and e.kind == "action" and e.actions.shape == (7,)
    finally:
        r.shutdown()
    # the chunk is the policy's own for these two images, each under its camera's key
    ref = VLAPolicy.from_pretrained(two_camera_vla_dir, decoder="ceed")
    want = ref.predict_action_chunk({"pixels": FRONT, "wrist_pixels": WRIST, "instruction": "pick up the red cube"})
    assert np.allclose(np.stack(actions), want)


def test_a_one_camera_policy_ignores_the_wrist_topic(tiny_vla_dir, caplog):
    params = PolicyParams(
        model_path=str(tiny_vla_dir),
        policy_process=False,
        warmup=False,
        instruction="pick up the red cube",
        control_hz=10.0,
        image_timeout_s=30.0,
        decode_deadline_s=30.0,
    )
    r = PolicyRunner(params, load_policy, threaded=False)
    with caplog.at_level(logging.INFO, logger="ros_nodes.runner"):
        r.configure()
    try:
        assert r.cameras == ("pixels",) and r.camera_topics == {"pixels": FRONT_TOPIC}
        line = [m for m in caplog.messages if m.startswith("cameras:")]
        assert line == [
            f"cameras: pixels on {FRONT_TOPIC!r}; wrist_image_topic {WRIST_TOPIC!r} not subscribed "
            "(the policy reads no wrist_pixels)"
        ]
        r.activate()
        assert not r.on_image(WRIST, camera="wrist_pixels") and not r.process_pending()
        assert r.on_image(FRONT) and r.process_pending()
        assert r.chunks_done == 1 and r.bad_inputs() == 0 and r.model_errors == 0
        assert r.status().values["watchdog"] == "ok"
    finally:
        r.shutdown()


def test_a_policy_process_reports_the_cameras_it_reads(two_camera_vla_dir):
    """The policy in its child process (the default): the runner learns its cameras from the child
    and the child decodes both images."""
    params = PolicyParams(
        model_path=str(two_camera_vla_dir),
        instruction="pick up the red cube",
        control_hz=10.0,
        image_timeout_s=60.0,
        decode_deadline_s=60.0,
        threads=1,
        decode_nice=0,
    )
    r = PolicyRunner(params, load_policy, threaded=False)
    r.configure()
    try:
        assert r.cameras == CAMERAS and r.policy.vla.cameras == CAMERAS
        r.activate()
        r.on_image(FRONT)
        r.on_image(WRIST, camera="wrist_pixels")
        assert r.process_pending() and r.chunks_done == 1, r.last_error
        assert r.model_errors == 0 and r.bad_inputs() == 0
    finally:
        r.shutdown()


# ---- the sim bridge ------------------------------------------------------------------------------


def test_the_sim_bridge_renders_the_wrist_camera_for_a_policy_that_reads_it(two_camera_vla_dir, tiny_vla_dir, clock):
    from ros_nodes.sim_bridge import SimBridge, SimBridgeParams

    def bridge(env, **kw):
        return SimBridge(SimBridgeParams(command_type="array", **kw), env=env, clock=clock)

    b = bridge(TinyEnv(wrist_camera=True), model_path=str(two_camera_vla_dir))  # on from the contract
    f = b.step()
    assert b.wrist_camera and f.wrist_pixels.shape == (12, 12, 3) and f.pixels.shape == (16, 16, 3)
    b = bridge(TinyEnv(wrist_camera=True), model_path=str(tiny_vla_dir))  # a one-camera policy: off
    assert not b.wrist_camera and b.step().wrist_pixels is None
    assert bridge(TinyEnv(wrist_camera=True), wrist_camera=True).step().wrist_pixels is not None  # asked for
    with pytest.raises(ValueError, match="wrist_camera: .* observes no wrist_pixels"):
        bridge(TinyEnv(), wrist_camera=True)
    with pytest.raises(ValueError, match="wrist_image_topic"):
        SimBridgeParams(wrist_image_topic="")
    # a suite env renders the gripper camera at the policy's size beside the main one
    b = SimBridge(SimBridgeParams(env_id="ee_vla/Reach-v0", command_type="array", model_path=str(two_camera_vla_dir)))
    try:
        f = b.step()
        assert f.wrist_pixels.shape == (64, 64, 3) == f.pixels.shape
        assert not np.array_equal(f.wrist_pixels, f.pixels)
    finally:
        b.close()


# ---- over DDS ------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_serve_and_the_sim_bridge_close_the_loop_with_two_cameras(two_camera_vla_dir):
    """`serve` with the two-camera tiny policy (in its policy process) and the sim bridge given the
    same model (so it publishes the wrist camera without being asked), two processes on loopback:
    the server decodes both cameras' images and the env's episodes run on its commands."""
    pytest.importorskip("cyclonedds")
    domain = claim_domain_id()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    serve_cfg = dict(
        model_path=str(two_camera_vla_dir),
        domain_id=domain,
        loopback_only=True,
        dry_run=False,
        command_type="array",
        control_hz=20.0,
        image_timeout_s=2.0,
        decode_deadline_s=10.0,
        threads=1,
    )
    sim_cfg = dict(
        model_path=str(two_camera_vla_dir),
        domain_id=domain,
        loopback_only=True,
        command_type="array",
        control_hz=20.0,
        max_episodes=2,
        command_timeout_s=1.0,
        tiny_env_wrist_camera=True,
    )
    cmd = [sys.executable, str(HERE / "dds_proc.py")]
    popen = dict(cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = subprocess.Popen(cmd + ["serve", json.dumps(serve_cfg), json.dumps({"real": True})], **popen)
    sim = subprocess.Popen(cmd + ["sim", json.dumps(sim_cfg)], **popen)
    try:
        out, err = sim.communicate(timeout=150)
        assert sim.returncode == 0, err[-3000:]
        stats = json.loads(out.strip().splitlines()[-1])
        server.send_signal(signal.SIGINT)
        sout, serr = server.communicate(timeout=60)
        assert server.returncode == 0, serr[-3000:]
        served = json.loads(sout.strip().splitlines()[-1])
    finally:
        for p in (server, sim):
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    assert stats["episodes"] == 2 and stats["commands_applied"] > 0, stats
    assert int(served["chunks_done"]) > 0 and served["model_errors"] == "0" and served["bad_inputs"] == "0"
    assert int(served["images_received_pixels"]) > 0 and int(served["images_received_wrist_pixels"]) > 0
    assert "wrist_camera/image_raw" in err


@pytest.mark.timeout(180)
def test_serve_namespaces_subscribe_each_robots_cameras(two_camera_vla_dir):
    """`serve --namespaces robot1 robot2` (in this process) with the two-camera policy: each robot's
    cameras on its own topics; a robot whose wrist camera is silent waits, named on /diagnostics,
    while the other is commanded, and is commanded once its wrist camera publishes."""
    pytest.importorskip("cyclonedds")
    from ee_vla.policy import VLAPolicy
    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config
    from ros_nodes.messages import build_image
    from ros_nodes.serve import ServeConfig, serve

    domain = claim_domain_id()
    # This process's Cyclone domain, on loopback, is created here: the server's participant joins it
    # (one process cannot create the same domain twice, so the server gets no configuration of its own).
    g = DdsGraph(domain, loopback_config(domain))
    cfg = ServeConfig(
        model_path=str(two_camera_vla_dir),
        namespaces=("robot1", "robot2"),
        domain_id=domain,
        command_type="array",
        dry_run=False,
        control_hz=20.0,
        image_timeout_s=5.0,
        decode_deadline_s=30.0,
        diagnostics_hz=10.0,
        instruction="pick up the red cube",
    )
    stop = threading.Event()
    result: dict = {}
    policy = VLAPolicy.from_pretrained(two_camera_vla_dir, decoder="ceed")
    server = threading.Thread(target=lambda: result.update(serve(cfg, policy=policy, stop=stop)), daemon=True)
    commands: dict[str, list] = {"robot1": [], "robot2": []}
    statuses: dict[str, str] = {}
    try:
        for ns in commands:
            g.reader(f"/{ns}/forward_command_controller/commands", msgs.Float64MultiArray, callback=commands[ns].append)
        g.reader(
            "/diagnostics",
            msgs.DiagnosticArray,
            callback=lambda a: statuses.update({s.name: s.message for s in a.status}),
        )
        front = {ns: g.writer(f"/{ns}/camera/image_raw", msgs.Image, "sensor_data") for ns in commands}
        wrist = {ns: g.writer(f"/{ns}/wrist_camera/image_raw", msgs.Image, "sensor_data") for ns in commands}
        server.start()

        def pump(seconds: float, until, wrists: tuple[str, ...]) -> bool:
            end = time.monotonic() + seconds
            next_pub = 0.0
            while time.monotonic() < end and server.is_alive():
                if time.monotonic() >= next_pub:
                    for ns in commands:
                        front[ns].write(build_image(msgs, FRONT, (0, 0)))
                    for ns in wrists:
                        wrist[ns].write(build_image(msgs, WRIST, (0, 0), "wrist_camera"))
                    next_pub = time.monotonic() + 0.05
                g.spin_once(0.01)
                if until():
                    return True
            return False

        waiting = "waiting for images on /robot2/wrist_camera/image_raw"
        assert pump(
            120,
            lambda: len(commands["robot1"]) >= 5 and statuses.get("/robot2/ee_vla: policy node") == waiting,
            ("robot1",),
        ), (len(commands["robot1"]), statuses)
        assert commands["robot2"] == []
        assert pump(60, lambda: len(commands["robot2"]) >= 5, ("robot1", "robot2")), statuses
    finally:
        stop.set()
        server.join(60)
        g.close()
    assert not server.is_alive()
    for ns in commands:
        assert int(result[ns]["chunks_done"]) >= 1, result[ns]
        assert result[ns]["bad_inputs"] == "0" and result[ns]["model_errors"] == "0"
        assert int(result[ns]["images_received_wrist_pixels"]) > 0
