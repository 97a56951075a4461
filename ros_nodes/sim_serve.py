"""The sim bridge over plain Cyclone DDS: an `ee_vla/*` env that looks like a robot on a ROS 2 graph.

Publishes the camera image (sensor-data QoS; the gripper camera's too on `wrist_image_topic` with
`--wrist-camera`, or for a `--model-path` policy that reads `wrist_pixels`), the instruction
(latched, and again every second), `agent_pos` as JointState and success as std_msgs/Bool; applies
incoming commands at the env's control rate. With `serve` this closes the loop without ROS and without a robot:

    python -m ros_nodes.sim_serve --env-id ee_vla/PickCube-v0 --loopback-only &
    python -m ros_nodes.serve --model-path runs/ceed --command-type array --no-dry-run --loopback-only
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ros_nodes.messages import build_image, build_joint_state, split_seconds
from ros_nodes.params import COMMAND_MSG_TYPES
from ros_nodes.sim_bridge import WRIST_FRAME_ID, SimBridge, SimBridgeParams, SimFrame

log = logging.getLogger("ee_vla.sim_serve")


@dataclass
class SimServeConfig(SimBridgeParams):
    """The sim bridge's parameters plus how to reach the ROS 2 graph over DDS."""

    domain_id: int = 0
    """DDS domain (ROS_DOMAIN_ID)."""
    dds_config: str = ""
    """Cyclone DDS configuration: XML text or a file path (empty: Cyclone's defaults / CYCLONEDDS_URI)."""
    loopback_only: bool = False
    """Stay on 127.0.0.1 when `dds_config` is empty."""
    duration_s: float = 0.0
    """Stop after this many seconds (0: until max_episodes, Ctrl-C or SIGTERM)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.domain_id, int) or not 0 <= self.domain_id <= 232:
            raise ValueError(f"SimServeConfig.domain_id: must be an integer in [0, 232], got {self.domain_id!r}")
        if not self.duration_s >= 0:
            raise ValueError(f"SimServeConfig.duration_s: must be >= 0, got {self.duration_s}")


def run_sim_bridge(
    cfg: SimServeConfig,
    env: Any | None = None,
    stop: threading.Event | None = None,
    on_frame: Callable[[SimFrame, SimBridge], None] | None = None,
) -> dict[str, int]:
    """Run the bridge until done; returns counters (episodes, successes, steps, commands)."""
    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config
    from ros_nodes.safety import ShutdownSignals

    stop = stop or threading.Event()
    bridge = SimBridge(cfg, env=env, logger=log)
    graph = DdsGraph(cfg.domain_id, cfg.dds_config or (loopback_config(cfg.domain_id) if cfg.loopback_only else None))
    img_w = graph.writer(cfg.image_topic, msgs.Image, "sensor_data")
    wrist_w = graph.writer(cfg.wrist_image_topic, msgs.Image, "sensor_data") if bridge.wrist_camera else None
    instr_w = graph.writer(cfg.instruction_topic, msgs.String, "latched")
    js_w = graph.writer(cfg.joint_state_topic, msgs.JointState, "default")
    ok_w = graph.writer(cfg.success_topic, msgs.Bool, "default")
    cmd_cls = msgs.ROS_TYPES[COMMAND_MSG_TYPES[cfg.command_type]]
    graph.reader(cfg.resolved_command_topic, cmd_cls, "default", callback=bridge.on_command_msg)
    period = 1.0 / bridge.control_hz
    steps = 0
    last_instruction = float("-inf")
    log.info(
        "sim bridge %s at %.1f Hz over DDS domain %d, commands (%s) on %s, images on %s",
        cfg.env_id,
        bridge.control_hz,
        cfg.domain_id,
        cfg.command_type,
        cfg.resolved_command_topic,
        cfg.image_topic + (f" and {cfg.wrist_image_topic}" if bridge.wrist_camera else ""),
    )

    def publish(frame: SimFrame) -> None:
        nonlocal last_instruction
        stamp = split_seconds(time.time())
        if wrist_w is not None and frame.wrist_pixels is not None:
            wrist_w.write(build_image(msgs, frame.wrist_pixels, stamp, WRIST_FRAME_ID))
        img_w.write(build_image(msgs, frame.pixels, stamp, cfg.frame_id))
        if frame.agent_pos is not None:
            names = [f"agent_pos_{i}" for i in range(frame.agent_pos.size)]
            js_w.write(build_joint_state(msgs, names, frame.agent_pos, stamp))
        ok_w.write(msgs.Bool(data=bool(frame.success)))
        now = time.monotonic()
        if frame.reset or now - last_instruction >= 1.0:
            instr_w.write(msgs.String(data=frame.instruction))
            last_instruction = now

    t_end = time.monotonic() + cfg.duration_s if cfg.duration_s > 0 else float("inf")
    try:
        with ShutdownSignals(stop):
            next_t = time.perf_counter()
            while not stop.is_set() and not bridge.done and time.monotonic() < t_end:
                frame = bridge.step()
                steps += 1
                publish(frame)
                if on_frame is not None:
                    on_frame(frame, bridge)
                next_t += period
                while (left := next_t - time.perf_counter()) > 0 and not stop.is_set():
                    graph.spin_once(left)
                if -left > period:
                    next_t = time.perf_counter()  # fell behind (slow rendering): do not burst
    finally:
        bad_samples = graph.bad_samples
        bridge.close()
        graph.close()
    return {
        "bad_samples": bad_samples,
        "episodes": bridge.episodes_done,
        "successes": bridge.successes,
        "steps": steps,
        "commands_received": bridge.commands_received,
        "commands_applied": bridge.commands_applied,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m ros_nodes.sim_serve --help`."""
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print_stats = run_sim_bridge(tyro.cli(SimServeConfig, args=argv))
    log.info("done: %s", print_stats)


if __name__ == "__main__":
    main()
