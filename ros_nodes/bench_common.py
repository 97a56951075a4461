"""What both modes of `python -m ros_nodes.bench` share: the configuration, the served policy's
subprocess (`python -m ros_nodes.serve` on loopback), the wait for its first command, interval
statistics and the written result. The modes are in `ros_nodes.bench` (rate) and
`ros_nodes.bench_soak` (soak)."""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("ee_vla.bench")


@dataclass
class RosBenchConfig:
    """What to benchmark."""

    mode: Literal["rate", "soak"] = "rate"
    """rate: command delivery, jitter and latency at a high control rate; soak: a long run with
    bad inputs mixed in, reporting memory growth, deadline misses, delivery and bad-input counts."""
    transports: tuple[Literal["dds", "rclpy-multi", "rclpy-single"], ...] = ("dds",)
    """rate: the servers measured one after the other, each against the same robot side: dds
    (`ee-vla serve --transport dds`), rclpy-multi / rclpy-single (the rclpy policy node on a
    multi- / single-threaded executor; needs a sourced ROS 2 and its `ros2` CLI)."""
    model_path: str = ""
    """Saved policy to serve (empty: rate mode a random model of `preset`, created in a temp dir;
    soak mode the shipped policy, ee_vla/checkpoints/default)."""
    preset: str = "tiny"
    """Preset of the random model when `model_path` is empty."""
    chunk_size: int = 8
    """Chunk size of the random model."""
    decoder: str = "ceed"
    """Decoder preset: ceed | jacobi | ar."""
    control_hz: float = 200.0
    """Command rate of the served node."""
    chunk_size_threshold: float = 1.0
    """The served node's `chunk_size_threshold` (1: it decodes each new image once the decoder is
    free, the load this benchmark puts on the decoder beside the control timer)."""
    chunk_start: Literal["arrival", "observation"] = "arrival"
    """The served node's `chunk_start` (arrival: every chunk runs from its first action, so the
    commands measured do not depend on how a decode's time compares with a chunk's, 40 ms for the
    tiny model's 8 actions at 200 Hz)."""
    duration_s: float = 10.0
    """Length of the measured window."""
    camera_hz: float = 30.0
    """Rate of published images (each starts a new chunk when the decoder is free)."""
    image_size: int = 64
    """Side of the square RGB test images."""
    latency_trials: int = 10
    """Image -> first command measurements after the window."""
    image_timeout_s: float = 0.2
    """The server's watchdog timeout (also how long each latency trial waits for the halt)."""
    threads: int = 0
    """CPU threads of the server's policy (0 = the cores available minus one, ee_vla.threads)."""
    timer_rt_priority: int = 0
    """SCHED_FIFO priority of the server's control timer and of this process's command receiver
    (0: normal scheduling; see ServeConfig)."""
    domain_id: int = 201
    """DDS domain for the run (loopback only)."""
    bad_input_every_s: float = 2.0
    """soak: one malformed input this often (0: none)."""
    rss_every_s: float = 5.0
    """soak: how often the server's and its policy process's resident memory is sampled."""
    out: str = "outputs/ros_bench.json"
    """Where the JSON result is written."""

    def __post_init__(self) -> None:
        if not self.control_hz > 0:
            raise ValueError(f"RosBenchConfig.control_hz: must be > 0, got {self.control_hz}")
        if not self.duration_s > 0:
            raise ValueError(f"RosBenchConfig.duration_s: must be > 0, got {self.duration_s}")
        if not self.camera_hz > 0:
            raise ValueError(f"RosBenchConfig.camera_hz: must be > 0, got {self.camera_hz}")
        if not 0 <= self.domain_id <= 232:
            raise ValueError(f"RosBenchConfig.domain_id: must be in [0, 232], got {self.domain_id}")
        if not self.bad_input_every_s >= 0:
            raise ValueError(f"RosBenchConfig.bad_input_every_s: must be >= 0, got {self.bad_input_every_s}")
        if not self.rss_every_s > 0:
            raise ValueError(f"RosBenchConfig.rss_every_s: must be > 0, got {self.rss_every_s}")


def ms_percentile(x: np.ndarray, q: float) -> float | None:
    """q-th percentile of seconds, in milliseconds (None when empty)."""
    return float(np.percentile(x, q)) * 1e3 if x.size else None


def summarize_intervals(arrivals: list[float], period: float) -> dict[str, float | None]:
    """Inter-arrival statistics (milliseconds) of command arrival times."""
    dt = np.diff(np.asarray(arrivals, dtype=np.float64))
    jit = np.abs(dt - period)
    return {
        "interval_p1_ms": ms_percentile(dt, 1),
        "interval_p50_ms": ms_percentile(dt, 50),
        "interval_p99_ms": ms_percentile(dt, 99),
        "jitter_p50_ms": ms_percentile(jit, 50),
        "jitter_p99_ms": ms_percentile(jit, 99),
        "jitter_max_ms": ms_percentile(jit, 100),
    }


def server_cmd(cfg: RosBenchConfig, model_path: str, stats_path: str, extra: list[str]) -> list[str]:
    """`python -m ros_nodes.serve` on loopback with the benchmark's settings."""
    return [
        sys.executable,
        "-m",
        "ros_nodes.serve",
        "--model-path",
        model_path,
        "--decoder",
        cfg.decoder,
        "--instruction",
        "pick up the red cube",
        "--command-type",
        "array",
        "--no-dry-run",
        "--control-hz",
        str(cfg.control_hz),
        "--chunk-size-threshold",
        str(cfg.chunk_size_threshold),
        "--chunk-start",
        cfg.chunk_start,
        "--image-timeout-s",
        str(cfg.image_timeout_s),
        "--decode-deadline-s",
        "1.0",
        "--domain-id",
        str(cfg.domain_id),
        "--loopback-only",
        "--threads",
        str(cfg.threads),
        "--diagnostics-hz",
        "2.0",
        "--stats-path",
        stats_path,
        *extra,
    ]


NODE_NAME = "ee_vla_bench"
"""Name of the rclpy policy node the rclpy transports start."""


def node_cmd(cfg: RosBenchConfig, model_path: str, executor: str) -> list[str]:
    """The rclpy policy node with the same settings as `server_cmd` (it is activated separately)."""
    params = {
        "model_path": model_path,
        "decoder": cfg.decoder,
        "instruction": "pick up the red cube",
        "command_type": "array",
        "dry_run": "false",
        "control_hz": str(float(cfg.control_hz)),
        "chunk_size_threshold": str(float(cfg.chunk_size_threshold)),
        "chunk_start": cfg.chunk_start,
        "image_timeout_s": str(float(cfg.image_timeout_s)),
        "decode_deadline_s": "1.0",
        "threads": str(cfg.threads),
        "diagnostics_hz": "2.0",
    }
    argv = [sys.executable, "-m", "ros_nodes.policy_node", "--executor", executor, "--ros-args"]
    argv += ["-r", f"__node:={NODE_NAME}", "--log-level", "warn", "--log-level", f"{NODE_NAME}:=info"]
    for k, v in params.items():
        argv += ["-p", f"{k}:={v}"]
    return argv


def node_env(domain_id: int) -> dict[str, str]:
    """The rclpy node's environment: loopback-only Cyclone DDS on `domain_id`, like the robot side."""
    from ros_nodes.dds.transport import loopback_config

    env = dict(os.environ)
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        CYCLONEDDS_URI=loopback_config(domain_id),
        RMW_IMPLEMENTATION=env.get("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp"),
    )
    return env


def activate_node(env: dict[str, str], timeout_s: float = 120.0) -> None:
    """`ros2 lifecycle set` the bench node to configure, then activate (retried until the CLI finds
    the node and the transition succeeds)."""
    import shutil

    ros2 = shutil.which("ros2")
    if ros2 is None:
        raise RuntimeError("the rclpy transports need a sourced ROS 2 (no `ros2` on PATH)")
    end = time.monotonic() + timeout_s
    for transition in ("configure", "activate"):
        while True:
            out = subprocess.run(
                [ros2, "lifecycle", "set", "--no-daemon", "--spin-time", "0.5", f"/{NODE_NAME}", transition],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if "Transitioning successful" in out.stdout:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"ros2 lifecycle set {transition}: {out.stdout.strip()} {out.stderr.strip()}")
            time.sleep(0.5)


def start_server(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start the server; its stderr lines are collected in the returned list."""
    log.info("server: %s", " ".join(cmd))
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    server_log: list[str] = []
    threading.Thread(target=lambda: server_log.extend(server.stderr), daemon=True).start()  # type: ignore[arg-type]
    return server, server_log


def stop_server(server: subprocess.Popen) -> None:
    """SIGINT (the server sends its stop command and writes its statistics), then wait."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def machine_info() -> dict[str, Any]:
    """The machine the run was on: CPUs, platform, Python and its load average at the end."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15_at_end": os.getloadavg(),
    }


def until_first_command(
    server: subprocess.Popen,
    server_log: list[str],
    count: Callable[[], int],
    send: Callable[[int], Any],
    camera_hz: float,
    timeout_s: float,
) -> tuple[float, int]:
    """Send observations at `camera_hz` until the first command arrives (model load, discovery,
    warm-up); returns the seconds it took and the observations sent. Raises if the server exits or
    `timeout_s` passes."""
    t_start = time.perf_counter()
    i = 0
    while count() == 0:
        if server.poll() is not None:
            raise RuntimeError("server exited during startup:\n" + "".join(server_log[-30:]))
        if time.perf_counter() - t_start > timeout_s:
            raise TimeoutError(f"no command within {timeout_s:.0f} s of starting the server")
        send(i)
        i += 1
        time.sleep(1.0 / camera_hz)
    return time.perf_counter() - t_start, i


def read_server_stats(stats_path: str) -> dict[str, Any]:
    """The statistics the server wrote at exit (empty when it wrote none)."""
    return json.loads(Path(stats_path).read_text()) if os.path.exists(stats_path) else {}


def bench_command() -> str:
    """The command line of this run, for the result."""
    return " ".join([sys.executable, "-m", "ros_nodes.bench"] + sys.argv[1:])


def write_result(cfg: RosBenchConfig, result: dict[str, Any]) -> None:
    """Write the result as JSON to `cfg.out` (creating its directory)."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
