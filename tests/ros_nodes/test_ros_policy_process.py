"""The policy child process lives and dies with its parent and leaves signals to it (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from domains import claim_domain_id

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_parent(delay_s: float, chunk: int, extra: list[str] = []) -> tuple[subprocess.Popen, int]:  # noqa: B006
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen(
        [sys.executable, str(HERE / "policy_proc.py"), str(delay_s), str(chunk), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    line = p.stdout.readline()
    assert line.startswith("child "), p.stderr.read()[-3000:] if p.poll() is not None else line
    return p, int(line.split()[1])


@pytest.mark.timeout(90)
def test_child_dies_with_a_killed_parent():
    parent, child = start_parent(delay_s=120.0, chunk=2)  # the child would decode for 4 minutes
    try:
        assert alive(child)
        time.sleep(0.5)
        parent.kill()  # SIGKILL: no cleanup in the parent
        parent.wait(10)
        end = time.monotonic() + 15
        while alive(child) and time.monotonic() < end:
            time.sleep(0.1)
        assert not alive(child), "the policy process outlived its killed parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        parent.communicate(timeout=10)


@pytest.mark.timeout(90)
def test_ctrl_c_to_the_process_group_is_left_to_the_parent():
    """SIGINT to the whole group mid-decode: the child finishes the chunk, no traceback, and the
    parent closes it cleanly (exit code 0)."""
    parent, child = start_parent(delay_s=0.5, chunk=4)
    try:
        time.sleep(0.6)
        os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=60)
        assert parent.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result == {"actions": 4, "error": "", "interrupted": True, "child_exitcode": 0}, err[-3000:]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.timeout(90)
def test_an_observation_the_child_rejects_is_bad_input_in_the_runner(clock):
    import numpy as np
    from policy_proc import rejecting_policy

    from ros_nodes.params import PolicyParams
    from ros_nodes.policy_process import ObservationRejected, ProcessPolicy
    from ros_nodes.runner import PolicyRunner

    params = PolicyParams(model_path="fake", instruction="go", warmup=False, image_timeout_s=30.0)
    policy = ProcessPolicy(params, factory=rejecting_policy)
    with pytest.raises(ObservationRejected, match="ObservationError: 'instruction' has 900 tokens"):
        list(policy.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "go"}))
    runner = PolicyRunner(params, lambda p: policy, clock=clock, threaded=False)
    runner.configure()
    runner.activate()
    try:
        runner.on_image(np.zeros((8, 8, 3), np.uint8))
        assert not runner.process_pending()
        v = runner.status().values
        assert v["model_errors"] == "0" and v["bad_inputs"] == "1" and "900 tokens" in v["last_bad_input"]
    finally:
        runner.shutdown()


@pytest.mark.timeout(90)
def test_a_parent_exiting_without_close_still_stops_its_busy_child():
    """The child ignores SIGTERM, so multiprocessing's exit handler alone would wait for it forever."""
    parent, child = start_parent(delay_s=120.0, chunk=2, extra=["exit"])
    try:
        parent.communicate(timeout=60)
        assert parent.returncode == 0 and not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


@pytest.mark.timeout(180)
def test_ctrl_c_to_serve_and_its_policy_process_is_a_clean_stop(tiny_vla_dir):
    """`serve` with the policy in its child process, decoding; SIGINT to the whole process group (a
    terminal's Ctrl-C): the server stops cleanly, no model error, no traceback, the child is gone."""
    pytest.importorskip("cyclonedds")
    import numpy as np
    from test_ros_dds_loopback import Robot, serve_cfg, start_proc

    from ros_nodes.bench import child_pids
    from ros_nodes.dds import msgs
    from ros_nodes.messages import build_image

    domain = claim_domain_id()
    cfg = serve_cfg(
        domain,
        model_path=str(tiny_vla_dir),
        instruction="pick up the cube",
        command_type="array",
        control_hz=20.0,
        image_timeout_s=2.0,
        threads=1,
        policy_process=True,
    )
    server = start_proc("serve", cfg, {"real": True}, start_new_session=True)
    robot = Robot(domain, "forward_command_controller/commands", msgs.Float64MultiArray)
    try:
        img = build_image(msgs, np.full((32, 32, 3), 90, np.uint8), (0, 0))
        assert robot.pump(120, until=lambda: len(robot.commands) >= 10, image=img), "no commands"
        children = child_pids(server.pid)
        assert children, "serve has no policy process"
        robot.image.write(img)  # a decode in flight when the signal lands
        os.killpg(server.pid, signal.SIGINT)
        out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err[-3000:]
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["model_errors"] == "0" and stats["state"] == "inactive", stats
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
        # The policy process, and multiprocessing's resource tracker, which exits on its own once
        # its parent is gone.
        end = time.monotonic() + 15
        while any(alive(c) for c in children) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(alive(c) for c in children)
    finally:
        robot.close()
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=10)


@pytest.mark.timeout(180)
def test_an_instruction_over_the_token_cap_is_bad_input_through_the_policy_process(tiny_vla_dir):
    """The real policy's token cap, in its child process: under the runner's character bound, over
    the policy's `max_instruction_tokens`; counted as bad input, the next valid instruction works."""
    import numpy as np

    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner, load_policy

    params = PolicyParams(
        model_path=str(tiny_vla_dir),
        policy_process=True,
        threads=1,
        warmup=False,
        instruction="pick up the cube",
        image_timeout_s=60.0,
        decode_deadline_s=60.0,
    )
    runner = PolicyRunner(params, load_policy, threaded=False)
    runner.configure()
    runner.activate()
    try:
        long = "stack the red block on the blue one " * 50  # 1800 characters
        assert len(long) <= runner.MAX_INSTRUCTION_CHARS and runner.on_instruction(long)
        runner.on_image(np.zeros((64, 64, 3), np.uint8))
        assert not runner.process_pending()
        v = runner.status().values
        assert v["model_errors"] == "0" and v["bad_inputs"] == "1", v
        assert "ObservationError" in v["last_bad_input"] and "max_instruction_tokens" in v["last_bad_input"], v
        assert runner.on_instruction("pick up the cube")
        runner.on_image(np.zeros((64, 64, 3), np.uint8))
        assert runner.process_pending() and runner.chunks_done == 1
    finally:
        runner.shutdown()


@pytest.mark.timeout(90)
def test_the_warm_start_shift_reaches_the_child_with_each_decode():
    import numpy as np
    from policy_proc import shift_policy

    from ros_nodes.params import PolicyParams
    from ros_nodes.policy_process import ProcessPolicy

    policy = ProcessPolicy(PolicyParams(model_path="fake", warmup=False), factory=shift_policy)
    obs = {"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "go"}
    try:
        got = []
        for shift in (None, 2, 0):
            policy.warm_start_shift = shift
            got.append([float(sa.action[0]) for sa in policy.stream_action_chunk(obs)])
        assert got == [[-1.0, -1.0], [2.0, 2.0], [0.0, 0.0]]
    finally:
        policy.close()
