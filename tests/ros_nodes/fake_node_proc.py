"""Run the rclpy policy node on the fake rclpy (ros_fakes) as a process, for the signal tests.

    python fake_node_proc.py <sigterm|sigint>   # the parent sends the signal after READY

Prints READY once the node has published commands, CLOSING when cleanup closes the policy (which
then takes 0.5 s), then, after `spin_until_shutdown` returns,
one JSON line: the commands published, whether the last one is the stop command (zeros), how many
came after it, and whether torch was imported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
from ros_fakes import FakePolicy, install_fake_ros  # noqa: E402

rclpy = install_fake_ros()

from rclpy.parameter import Parameter  # noqa: E402

from ros_nodes.policy_node import PolicyNode  # noqa: E402
from ros_nodes.rclpy_support import spin_until_shutdown  # noqa: E402

TOPIC = "forward_command_controller/commands"
nodes: list[PolicyNode] = []


class SlowClosePolicy(FakePolicy):
    """Cleanup takes a while (like a policy process exiting): the parent signals again meanwhile."""

    def close(self) -> None:
        print("CLOSING", flush=True)
        time.sleep(0.5)


def make_node() -> PolicyNode:
    overrides = dict(
        autostart=True,
        dry_run=False,
        warmup=False,
        policy_process=False,
        instruction="pick",
        command_type="array",
        control_hz=100.0,
        image_timeout_s=1000.0,
        decode_deadline_s=1000.0,
        max_hold_s=0.0,
    )
    node = PolicyNode(
        policy_factory=lambda _p: SlowClosePolicy(),
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    nodes.append(node)
    return node


def feed() -> None:
    """Camera images until the node is gone; READY once commands flow."""
    ready = False
    while True:
        runner = nodes[0].runner if nodes else None
        if runner is not None:
            runner.on_image(np.zeros((8, 8, 3), np.uint8))
        if not ready and len(rclpy.graph.messages(TOPIC)) >= 5:
            print("READY", flush=True)
            ready = True
        time.sleep(0.02)


threading.Thread(target=feed, daemon=True).start()
spin_until_shutdown(make_node)
sent = rclpy.graph.messages(TOPIC)
stops = [i for i, m in enumerate(sent) if not np.any(m.data)]
print(
    json.dumps(
        {
            "commands": len(sent),
            "last_is_stop": bool(sent) and not np.any(sent[-1].data),
            "after_first_stop": len(sent) - 1 - stops[0] if stops else None,
            "torch_loaded": "torch" in sys.modules,
            "callback_errors": nodes[0].guard.total if nodes else None,
        }
    ),
    flush=True,
)
