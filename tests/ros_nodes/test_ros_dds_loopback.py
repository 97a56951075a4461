"""Real DDS on loopback: `serve` and the sim bridge as subprocesses, this test as the robot.

Every process joins a domain of its own (unique per test) through a Cyclone configuration bound to
127.0.0.1 with unicast discovery. The assertions are on delivery and content, never on timing; every
wait has a timeout and every subprocess is killed at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from domains import claim_domain_id

pytest.importorskip("cyclonedds")

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.dds.transport import DdsGraph, loopback_config, write_serialized  # noqa: E402
from ros_nodes.messages import build_image, build_joint_state  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMG = np.zeros((16, 16, 3), np.uint8)


@pytest.fixture()
def domain_id() -> int:
    return claim_domain_id()


def start_proc(mode: str, cfg: dict, *extra: dict, **popen_kwargs) -> subprocess.Popen:
    """`dds_proc.py MODE CONFIG [EXTRA...]` as a subprocess with text stdout/stderr pipes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, str(HERE / "dds_proc.py"), mode, json.dumps(cfg), *[json.dumps(e) for e in extra]],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kwargs,
    )


@pytest.fixture()
def procs():
    started: list[subprocess.Popen] = []

    def start(mode: str, cfg: dict, *extra: dict) -> subprocess.Popen:
        p = start_proc(mode, cfg, *extra)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def finish(p: subprocess.Popen, timeout: float = 30.0) -> dict:
    """SIGINT (graceful: the stop command goes out) and the process's JSON result."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


class Robot:
    """The test's side of the graph: camera, instruction, joint states out; commands, diagnostics in."""

    def __init__(self, domain_id: int, command_topic: str, command_type: type):
        self.g = DdsGraph(domain_id, loopback_config(domain_id))
        self.commands: list = []
        self.diagnostics: list = []
        self.g.reader(command_topic, command_type, "default", callback=self.commands.append)
        self.g.reader("/diagnostics", msgs.DiagnosticArray, "default", callback=self.diagnostics.append)
        self.image = self.g.writer("camera/image_raw", msgs.Image, "sensor_data")
        self.instruction = self.g.writer("instruction", msgs.String, "default")
        self.joints = self.g.writer("joint_states", msgs.JointState, "default")

    def pump(self, seconds: float, until=None, image: msgs.Image | None = None, instruction: str | None = None) -> bool:
        """Spin (publishing `image`/`instruction` every 50 ms) until `until()` or the time is up."""
        end = time.monotonic() + seconds
        next_pub = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= next_pub:
                if instruction is not None:
                    self.instruction.write(msgs.String(data=instruction))
                if image is not None:
                    self.image.write(image)
                next_pub = time.monotonic() + 0.05
            self.g.spin_once(0.01)
            if until is not None and until():
                return True
        return until is None

    def last_diag(self) -> dict[str, str]:
        st = self.diagnostics[-1].status[0]
        return {kv.key: kv.value for kv in st.values} | {"_message": st.message, "_level": st.level}

    def close(self) -> None:
        self.g.close()


def serve_cfg(domain_id: int, **kw) -> dict:
    cfg = dict(
        domain_id=domain_id,
        loopback_only=True,
        dry_run=False,
        control_hz=50.0,
        image_timeout_s=0.4,
        diagnostics_hz=5.0,
        decode_deadline_s=5.0,
    )
    cfg.update(kw)
    return cfg


@pytest.mark.timeout(120)
def test_serve_image_in_commands_out_and_stop(domain_id, procs):
    server = procs("serve", serve_cfg(domain_id), {"chunk_size": 4, "delay_s": 0.005})
    robot = Robot(domain_id, "servo_node/delta_twist_cmds", msgs.TwistStamped)
    try:
        img = build_image(msgs, IMG, (0, 0))
        assert robot.pump(40, until=lambda: len(robot.commands) >= 20, image=img, instruction="pick up the cube"), (
            "no commands arrived"
        )
        moving = [c for c in robot.commands if c.twist.linear.x != 0.0]
        assert moving and moving[0].header.frame_id == "base_link"
        # The fake policy's action i of chunk c is 0.01 c + 0.1 i on dims 0-5: scaled by 0.1 (linear), 0.5 (angular).
        lin = np.array([c.twist.linear.x for c in moving]) / 0.1
        ang = np.array([c.twist.angular.x for c in moving]) / 0.5
        assert np.allclose(lin, ang) and np.all((lin > 0) & (lin < 1.0))
        # No more images: one zero twist (the watchdog's stop), then silence.
        n = len(robot.commands)
        assert robot.pump(10, until=lambda: len(robot.commands) > n and robot.commands[-1].twist.linear.x == 0.0)
        n_stop = len(robot.commands)
        robot.pump(1.0)
        assert len(robot.commands) == n_stop  # after the stop: silence
        assert robot.pump(5, until=lambda: robot.diagnostics and robot.last_diag()["watchdog"] == "stale")
        d = robot.last_diag()
        assert d["_level"] == 1 and "no valid image" in d["_message"] and int(d["chunks_done"]) >= 1
        stats = finish(server)
        robot.pump(0.5)
        assert stats["state"] == "inactive" and int(stats["commands_sent"]) == len(robot.commands)
    finally:
        robot.close()


@pytest.mark.timeout(120)
def test_serve_survives_bad_inputs_and_sends_nothing_unsafe(domain_id, procs):
    cfg = serve_cfg(domain_id, command_type="array", use_joint_state=True, joint_names=["j0", "j1"], instruction="go")
    server = procs("serve", cfg, {"chunk_size": 2})
    robot = Robot(domain_id, "forward_command_controller/commands", msgs.Float64MultiArray)
    try:
        bad_encoding = build_image(msgs, IMG, (0, 0))
        bad_encoding.encoding = "yuv422"
        truncated = build_image(msgs, IMG, (0, 0))
        truncated.data = truncated.data[:100]
        nan_joints = build_joint_state(msgs, ["j0", "j1"], np.array([0.0, np.nan]), (0, 0))
        assert robot.pump(40, until=lambda: bool(robot.diagnostics)), "server never came up"
        for _ in range(10):
            robot.image.write(bad_encoding)
            robot.image.write(truncated)
            robot.joints.write(nan_joints)
            robot.instruction.write(msgs.String(data=""))
            robot.pump(0.1)
        assert robot.pump(10, until=lambda: robot.diagnostics and int(robot.last_diag()["bad_inputs"]) >= 10)
        assert robot.commands == [] and server.poll() is None
        # Valid inputs: the node works.
        good = build_joint_state(msgs, ["j1", "j0"], np.array([0.5, 0.25]), (0, 0))
        robot.joints.write(good)
        assert robot.pump(30, until=lambda: len(robot.commands) >= 3, image=build_image(msgs, IMG, (0, 0)))
        assert all(len(c.data) == 7 and np.isfinite(c.data).all() for c in robot.commands)
        stats = finish(server)
        assert int(stats["model_errors"]) == 0 and int(stats["bad_inputs"]) >= 10
    finally:
        robot.close()


@pytest.mark.timeout(150)
def test_serve_and_sim_bridge_close_the_loop(domain_id, procs):
    """The policy commands the env over DDS: images flow, commands are applied, episodes reset."""
    # A policy that always pushes +x: TinyEnv succeeds when agent_pos[0] > 0.5.
    server = procs(
        "serve",
        serve_cfg(domain_id, command_type="array", control_hz=50.0, image_timeout_s=1.0),
        {"chunk_size": 4, "delay_s": 0.002},
    )
    sim = procs(
        "sim",
        dict(
            domain_id=domain_id,
            loopback_only=True,
            command_type="array",
            max_episodes=3,
            control_hz=25.0,
            command_timeout_s=0.5,
        ),
    )
    out, err = sim.communicate(timeout=120)
    assert sim.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["episodes"] == 3 and stats["commands_received"] > 0 and stats["commands_applied"] > 0
    served = finish(server)
    # Decoding needs an instruction: the only one came from the sim bridge's task description.
    assert int(served["chunks_done"]) > 0 and int(served["images_received"]) > 0


@pytest.mark.timeout(120)
def test_serve_survives_samples_that_do_not_decode(domain_id, procs):
    """Invalid UTF-8 in the instruction and in an image's encoding: counted as bad input, the server
    keeps publishing at its rate and acts on the next valid samples."""
    server = procs("serve", serve_cfg(domain_id, command_type="array", image_timeout_s=2.0), {"chunk_size": 2})
    robot = Robot(domain_id, "forward_command_controller/commands", msgs.Float64MultiArray)
    try:
        assert robot.pump(40, until=lambda: bool(robot.diagnostics)), "server never came up"
        bad_text = b"\x00\x01\x00\x00" + (7).to_bytes(4, "little") + b"\xff\xfego\xc3(\x00"
        img = build_image(msgs, IMG, (0, 0)).serialize()
        bad_img = img.replace(b"rgb8", b"\xff\xfe\xfd\xfc", 1)
        assert bad_img != img
        for _ in range(5):
            write_serialized(robot.instruction, bad_text)  # raises if Cyclone refuses the bytes
            write_serialized(robot.image, bad_img)
            robot.pump(0.1)
        assert robot.pump(10, until=lambda: int(robot.last_diag()["bad_inputs"]) >= 10)
        assert server.poll() is None and "UnicodeDecodeError" in robot.last_diag()["last_bad_input"]
        assert robot.pump(
            30, until=lambda: len(robot.commands) >= 20, image=build_image(msgs, IMG, (0, 0)), instruction="go"
        )
        n_diag = len(robot.diagnostics)
        write_serialized(robot.instruction, bad_text)
        assert robot.pump(10, until=lambda: len(robot.diagnostics) > n_diag + 3)  # still publishing
        stats = finish(server)
        assert int(stats["model_errors"]) == 0 and int(stats["bad_inputs"]) >= 11
    finally:
        robot.close()
