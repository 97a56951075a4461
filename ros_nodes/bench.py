"""Benchmark of the DDS transport: command delivery and jitter at a high control rate while a policy
decodes on the same machine, plus image -> first command latency. Prints and saves JSON.

Two processes on loopback, as on a robot: `python -m ros_nodes.serve` (a subprocess, started through
its CLI) runs the policy; this process plays the robot: it publishes camera images and the
instruction and records when each command arrives.

* delivered fraction = commands received / commands the server sent (the server's own count);
* rate fraction = commands received during the window / (duration * control_hz);
* jitter = |inter-arrival interval - 1/control_hz| at the receiver (p50/p99/max);
* image -> first command: with the node halted (no image for longer than the watchdog timeout), the
  time from publishing one image to receiving the first command (decode of the first action + the
  wait for the next control tick + transport), over `latency_trials` trials.

    python -m ros_nodes.bench --duration-s 10 --control-hz 200 --out outputs/ros_bench.json

`--mode soak` serves a policy (default: the shipped one) for a long window instead, with images at
`camera_hz` and, every `bad_input_every_s`, one malformed input (a rotation of wrong encodings,
truncated images, undecodable and over-long instructions, NaN joint states): it reports the
server's and its policy process's RSS over time, deadline misses, commands delivered, and bad
inputs sent against those the server counted.

    python -m ros_nodes.bench --mode soak --duration-s 600 --camera-hz 10 --control-hz 10 \
        --image-timeout-s 1.0 --out outputs/ros_soak.json
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ros_nodes.bench_common import (
    RosBenchConfig,
    activate_node,
    bench_command,
    log,
    machine_info,
    ms_percentile,
    node_cmd,
    node_env,
    read_server_stats,
    server_cmd,
    start_server,
    stop_server,
    summarize_intervals,
    until_first_command,
    write_result,
)
from ros_nodes.bench_soak import BAD_INPUT_KINDS, child_pids, proprio_dim, rss_mb, run_soak, shipped_policy_dir

__all__ = [
    "BAD_INPUT_KINDS",
    "RosBenchConfig",
    "child_pids",
    "main",
    "proprio_dim",
    "rss_mb",
    "run_bench",
    "run_soak",
    "shipped_policy_dir",
    "summarize_intervals",
]


class _RateRobot:
    """The robot side of the rate benchmark: publishes camera images and records when each command
    arrives (and the server's source timestamp of it)."""

    def __init__(self, cfg: RosBenchConfig):
        from ros_nodes.dds import msgs
        from ros_nodes.dds.transport import DdsGraph, loopback_config
        from ros_nodes.messages import build_image

        self.graph = DdsGraph(cfg.domain_id, loopback_config(cfg.domain_id))
        self.arrivals: list[float] = []
        self.sent_at: list[float] = []  # the writer's source timestamps (wall clock): the server's own timing
        self.lock = threading.Lock()
        self.graph.reader(
            "forward_command_controller/commands", msgs.Float64MultiArray, "default", callback=self._on_command
        )
        self.diagnostics: dict[str, str] = {}
        """The server's last /diagnostics key/values."""
        self.graph.reader("/diagnostics", msgs.DiagnosticArray, "default", callback=self._on_diagnostics)
        self.img_w = self.graph.writer("camera/image_raw", msgs.Image, "sensor_data")
        rng = np.random.default_rng(0)
        self.frames = [
            build_image(msgs, rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8), (0, 0))
            for _ in range(8)
        ]
        self.timer_rt_priority = cfg.timer_rt_priority
        self._stop_spin = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _on_command(self, msg: Any) -> None:
        t = time.perf_counter()
        with self.lock:
            self.arrivals.append(t)
            self.sent_at.append(msg.sample_info.source_timestamp * 1e-9)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "commands_sent" in values:
                self.diagnostics = values

    def _spin(self) -> None:
        if self.timer_rt_priority:  # the robot side's receiver, like a real-time controller
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(self.timer_rt_priority))
            except OSError as e:
                log.warning("receiver without real-time priority: %s", e)
        while not self._stop_spin.is_set():
            self.graph.spin_once(0.02)

    def send_image(self, i: int) -> float:
        """Publish image `i` (of the rotation); returns when."""
        t = time.perf_counter()
        self.img_w.write(self.frames[i % len(self.frames)])
        return t

    def count(self) -> int:
        """Commands received so far."""
        with self.lock:
            return len(self.arrivals)

    def close(self) -> None:
        """Stop receiving and leave the graph."""
        self._stop_spin.set()
        self._spinner.join(timeout=2)
        self.graph.close()


def _warm_up(cfg: RosBenchConfig, robot: _RateRobot, i: int) -> int:
    """One second of images at `camera_hz` before the window; returns the next image index."""
    cam_period = 1.0 / cfg.camera_hz
    t_end = time.perf_counter() + 1.0
    while time.perf_counter() < t_end:
        robot.send_image(i)
        i += 1
        time.sleep(cam_period)
    return i


def _measure_window(cfg: RosBenchConfig, robot: _RateRobot, i: int, result: dict[str, Any]) -> int:
    """The measured window: images at `camera_hz` for `duration_s`; adds the commands that arrived in
    it and their interval and jitter statistics to `result`; returns the next image index."""
    cam_period = 1.0 / cfg.camera_hz
    n0 = robot.count()
    t0 = time.perf_counter()
    next_img = t0
    while time.perf_counter() < t0 + cfg.duration_s:
        robot.send_image(i)
        i += 1
        next_img += cam_period
        time.sleep(max(0.0, next_img - time.perf_counter()))
    t1 = t0 + cfg.duration_s
    with robot.lock:
        idx = [k for k in range(n0, len(robot.arrivals)) if t0 <= robot.arrivals[k] < t1]
        window = [robot.arrivals[k] for k in idx]
        window_sent = [robot.sent_at[k] for k in idx]
    send_side = summarize_intervals(window_sent, 1.0 / cfg.control_hz)
    result.update(
        commands_in_window=len(window),
        expected_in_window=int(round(cfg.duration_s * cfg.control_hz)),
        rate_fraction=len(window) / (cfg.duration_s * cfg.control_hz),
        **summarize_intervals(window, 1.0 / cfg.control_hz),
        send_side={k: v for k, v in send_side.items() if k.startswith("jitter")},
    )
    return i


def _measure_latency(cfg: RosBenchConfig, robot: _RateRobot, i: int, result: dict[str, Any]) -> None:
    """Latency trials: let the watchdog halt the node, then one image -> first command; adds their
    count, p50 and max to `result`."""
    latencies = []
    for _ in range(cfg.latency_trials):
        time.sleep(cfg.image_timeout_s + 0.15)  # halt + its single stop command
        n_before = robot.count()
        t_img = robot.send_image(i)
        i += 1
        deadline = t_img + 5.0
        while robot.count() == n_before and time.perf_counter() < deadline:
            time.sleep(0.0002)
        with robot.lock:
            if len(robot.arrivals) > n_before:
                latencies.append(robot.arrivals[n_before] - t_img)
    lat = np.asarray(latencies)
    result.update(
        latency_trials=len(latencies),
        image_to_first_command_p50_ms=ms_percentile(lat, 50),
        image_to_first_command_max_ms=ms_percentile(lat, 100),
    )


def _rate_report(result: dict[str, Any], received: int, server_stats: dict[str, Any]) -> None:
    """Add delivery (`received` against the server's count) and the server's own figures to `result`."""
    sent = int(server_stats.get("commands_sent", 0))
    result.update(
        commands_sent_by_server=sent,
        commands_received_total=received,
        delivered_fraction=received / sent if sent else None,
        server_decode_latency_p50_ms=_float_or_none(server_stats.get("decode_latency_p50_ms")),
        server_decode_latency_p95_ms=_float_or_none(server_stats.get("decode_latency_p95_ms")),
        server_decode_latency_p99_ms=_float_or_none(server_stats.get("decode_latency_p99_ms")),
        server_first_action_latency_p50_ms=_float_or_none(server_stats.get("first_action_latency_p50_ms")),
        server_iterations_per_chunk_mean=_float_or_none(server_stats.get("iterations_per_chunk_mean")),
        server_chunks_done=_float_or_none(server_stats.get("chunks_done")),
        server_timer_skipped_ticks=_float_or_none(server_stats.get("timer_skipped_ticks")),
        server_ticks=server_stats and {k: v for k, v in server_stats.items() if k.startswith("ticks_")},
    )


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _node_stats(robot: _RateRobot, server_log: list[str]) -> dict[str, Any]:
    """The rclpy node's figures: its last /diagnostics values, with the number of commands it sent
    from the line it logs when it stops (its final stop command included)."""
    stats: dict[str, Any] = dict(robot.diagnostics)
    sent = [m.group(1) for line in server_log if (m := re.search(r"stopped: .*?(\d+) commands sent", line))]
    stats["commands_sent"] = int(sent[-1]) if sent else 0
    return stats


def _run_transport(cfg: RosBenchConfig, transport: str, model_path: str, tmp: str) -> dict[str, Any]:
    """One server (`transport`) measured by the robot side: startup, the rate window, latency trials."""
    stats_path = os.path.join(tmp, f"server_stats_{transport}.json")
    if transport == "dds":
        server, server_log = start_server(server_cmd(cfg, model_path, stats_path, []))
    else:
        env = node_env(cfg.domain_id)
        server, server_log = start_server(node_cmd(cfg, model_path, transport.removeprefix("rclpy-")), env)
        threading.Thread(target=activate_node, args=(env,), daemon=True).start()
    robot = _RateRobot(cfg)
    result: dict[str, Any] = {"transport": transport}
    try:
        # Startup: images until the first command (model load, discovery, warm-up).
        result["startup_to_first_command_s"], i = until_first_command(
            server, server_log, robot.count, robot.send_image, cfg.camera_hz, timeout_s=180
        )
        i = _warm_up(cfg, robot, i)
        i = _measure_window(cfg, robot, i, result)
        _measure_latency(cfg, robot, i, result)
        time.sleep(0.6)  # one more /diagnostics message after the trials
    finally:
        time.sleep(0.3)
        stop_server(server)
        time.sleep(0.3)  # the final stop command in flight
        robot.close()
    stats = read_server_stats(stats_path) if transport == "dds" else _node_stats(robot, server_log)
    _rate_report(result, robot.count(), stats)
    return result


def format_table(runs: dict[str, dict[str, Any]]) -> str:
    """The runs side by side: delivery, rate, jitter and latency."""

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    rows = [
        ("delivered (received / sent)", lambda r: f"{f(r.get('delivered_fraction'), '{:.3f}')} "
         f"({r.get('commands_received_total')}/{r.get('commands_sent_by_server')})"),
        ("commands in window / expected", lambda r: f"{r.get('commands_in_window')}/{r.get('expected_in_window')}"),
        ("jitter p50 / p99 / max ms", lambda r: f"{f(r.get('jitter_p50_ms'))} / {f(r.get('jitter_p99_ms'))} / "
         f"{f(r.get('jitter_max_ms'))}"),
        ("image -> first command p50 / max ms", lambda r: f"{f(r.get('image_to_first_command_p50_ms'), '{:.1f}')} / "
         f"{f(r.get('image_to_first_command_max_ms'), '{:.1f}')}"),
        ("server decode p50 ms", lambda r: f(r.get("server_decode_latency_p50_ms"), "{:.1f}")),
        ("startup to first command s", lambda r: f(r.get("startup_to_first_command_s"), "{:.1f}")),
    ]  # fmt: skip
    names = list(runs)
    width = max(len(r[0]) for r in rows)
    cols = [max(len(n), *(len(fn(runs[n])) for _, fn in rows)) for n in names]

    def line(label: str, cells: list[str]) -> str:
        return label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols, strict=True))

    lines = [line("", names)] + [line(label, [fn(runs[n]) for n in names]) for label, fn in rows]
    return "\n".join(lines)


def run_bench(cfg: RosBenchConfig) -> dict[str, Any]:
    """Run the benchmark of `cfg.mode`; returns (and writes to `cfg.out`) the result dict. Rate mode:
    `runs` holds one result per transport, measured one after the other in this run."""
    if cfg.mode == "soak":
        return run_soak(cfg)
    tmp = tempfile.mkdtemp(prefix="ee_vla_bench_")
    model_path = cfg.model_path
    if not model_path:
        from ee_vla.models import create_random_vla_dir

        model_path = str(create_random_vla_dir(Path(tmp) / cfg.preset, preset=cfg.preset, chunk_size=cfg.chunk_size))
    runs = {t: _run_transport(cfg, t, model_path, tmp) for t in cfg.transports}
    result = {"runs": runs, "config": asdict(cfg), "machine": machine_info(), "command": bench_command()}
    write_result(cfg, result)
    log.info("\n%s", format_table(runs))
    return result


def main(argv: list[str] | None = None) -> None:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_bench(tyro.cli(RosBenchConfig, args=argv))
    # The result is the product of this tool: printed on stdout for the user, as well as saved.
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
