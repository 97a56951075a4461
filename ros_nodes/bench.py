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
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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


def _ms(x: np.ndarray, q: float) -> float | None:
    """q-th percentile of seconds, in milliseconds (None when empty)."""
    return float(np.percentile(x, q)) * 1e3 if x.size else None


def summarize_intervals(arrivals: list[float], period: float) -> dict[str, float | None]:
    """Inter-arrival statistics (milliseconds) of command arrival times."""
    dt = np.diff(np.asarray(arrivals, dtype=np.float64))
    jit = np.abs(dt - period)
    return {
        "interval_p1_ms": _ms(dt, 1),
        "interval_p50_ms": _ms(dt, 50),
        "interval_p99_ms": _ms(dt, 99),
        "jitter_p50_ms": _ms(jit, 50),
        "jitter_p99_ms": _ms(jit, 99),
        "jitter_max_ms": _ms(jit, 100),
    }


def _server_cmd(cfg: RosBenchConfig, model_path: str, stats_path: str, extra: list[str]) -> list[str]:
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


def _start_server(cmd: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start the server; its stderr lines are collected in the returned list."""
    log.info("server: %s", " ".join(cmd))
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    server_log: list[str] = []
    threading.Thread(target=lambda: server_log.extend(server.stderr), daemon=True).start()  # type: ignore[arg-type]
    return server, server_log


def _stop_server(server: subprocess.Popen) -> None:
    """SIGINT (the server sends its stop command and writes its statistics), then wait."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15_at_end": os.getloadavg(),
    }


def _until_first_command(
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


def run_bench(cfg: RosBenchConfig) -> dict[str, Any]:
    """Run the benchmark of `cfg.mode`; returns (and writes to `cfg.out`) the result dict."""
    if cfg.mode == "soak":
        return run_soak(cfg)
    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config
    from ros_nodes.messages import build_image

    tmp = tempfile.mkdtemp(prefix="ee_vla_bench_")
    model_path = cfg.model_path
    if not model_path:
        from ee_vla.models import create_random_vla_dir

        model_path = str(create_random_vla_dir(Path(tmp) / cfg.preset, preset=cfg.preset, chunk_size=cfg.chunk_size))
    stats_path = os.path.join(tmp, "server_stats.json")
    server, server_log = _start_server(_server_cmd(cfg, model_path, stats_path, []))

    graph = DdsGraph(cfg.domain_id, loopback_config(cfg.domain_id))
    arrivals: list[float] = []
    sent_at: list[float] = []  # the writer's source timestamps (wall clock): the server's own timing
    lock = threading.Lock()

    def on_command(msg: Any) -> None:
        t = time.perf_counter()
        with lock:
            arrivals.append(t)
            sent_at.append(msg.sample_info.source_timestamp * 1e-9)

    graph.reader("forward_command_controller/commands", msgs.Float64MultiArray, "default", callback=on_command)
    img_w = graph.writer("camera/image_raw", msgs.Image, "sensor_data")
    rng = np.random.default_rng(0)
    frames = [
        build_image(msgs, rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8), (0, 0))
        for _ in range(8)
    ]
    stop_spin = threading.Event()

    def spin() -> None:
        if cfg.timer_rt_priority:  # the robot side's receiver, like a real-time controller
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(cfg.timer_rt_priority))
            except OSError as e:
                log.warning("receiver without real-time priority: %s", e)
        while not stop_spin.is_set():
            graph.spin_once(0.02)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    def send_image(i: int) -> float:
        t = time.perf_counter()
        img_w.write(frames[i % len(frames)])
        return t

    def count() -> int:
        with lock:
            return len(arrivals)

    result: dict[str, Any] = {}
    try:
        # Startup: images until the first command (model load, discovery, warm-up).
        result["startup_to_first_command_s"], i = _until_first_command(
            server, server_log, count, send_image, cfg.camera_hz, timeout_s=120
        )
        # Warm up 1 s, then the measured window.
        cam_period = 1.0 / cfg.camera_hz
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            send_image(i)
            i += 1
            time.sleep(cam_period)
        n0 = count()
        t0 = time.perf_counter()
        next_img = t0
        while time.perf_counter() < t0 + cfg.duration_s:
            send_image(i)
            i += 1
            next_img += cam_period
            time.sleep(max(0.0, next_img - time.perf_counter()))
        t1 = t0 + cfg.duration_s
        with lock:
            idx = [k for k in range(n0, len(arrivals)) if t0 <= arrivals[k] < t1]
            window = [arrivals[k] for k in idx]
            window_sent = [sent_at[k] for k in idx]
        send_side = summarize_intervals(window_sent, 1.0 / cfg.control_hz)
        result.update(
            commands_in_window=len(window),
            expected_in_window=int(round(cfg.duration_s * cfg.control_hz)),
            rate_fraction=len(window) / (cfg.duration_s * cfg.control_hz),
            **summarize_intervals(window, 1.0 / cfg.control_hz),
            send_side={k: v for k, v in send_side.items() if k.startswith("jitter")},
        )
        # Latency trials: let the watchdog halt the node, then one image -> first command.
        latencies = []
        for _ in range(cfg.latency_trials):
            time.sleep(cfg.image_timeout_s + 0.15)  # halt + its single stop command
            n_before = count()
            t_img = send_image(i)
            i += 1
            deadline = t_img + 5.0
            while count() == n_before and time.perf_counter() < deadline:
                time.sleep(0.0002)
            with lock:
                if len(arrivals) > n_before:
                    latencies.append(arrivals[n_before] - t_img)
        lat = np.asarray(latencies)
        result.update(
            latency_trials=len(latencies),
            image_to_first_command_p50_ms=_ms(lat, 50),
            image_to_first_command_max_ms=_ms(lat, 100),
        )
    finally:
        time.sleep(0.3)
        _stop_server(server)
        time.sleep(0.3)  # the final stop command in flight
        stop_spin.set()
        spinner.join(timeout=2)
        graph.close()
    server_stats = json.loads(Path(stats_path).read_text()) if os.path.exists(stats_path) else {}
    sent = int(server_stats.get("commands_sent", 0))
    result.update(
        commands_sent_by_server=sent,
        commands_received_total=count(),
        delivered_fraction=count() / sent if sent else None,
        server_decode_latency_p50_ms=server_stats.get("decode_latency_p50_ms"),
        server_decode_latency_p95_ms=server_stats.get("decode_latency_p95_ms"),
        server_decode_latency_p99_ms=server_stats.get("decode_latency_p99_ms"),
        server_first_action_latency_p50_ms=server_stats.get("first_action_latency_p50_ms"),
        server_iterations_per_chunk_mean=server_stats.get("iterations_per_chunk_mean"),
        server_chunks_done=server_stats.get("chunks_done"),
        server_timer_skipped_ticks=server_stats.get("timer_skipped_ticks"),
        server_ticks=server_stats and {k: v for k, v in server_stats.items() if k.startswith("ticks_")},
        config=asdict(cfg),
        machine=_machine(),
        command=" ".join([sys.executable, "-m", "ros_nodes.bench"] + sys.argv[1:]),
    )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def shipped_policy_dir() -> str:
    """The policy shipped with the package (ee_vla/checkpoints/default)."""
    import ee_vla

    return str(Path(ee_vla.__file__).resolve().parent / "checkpoints" / "default")


def proprio_dim(model_path: str) -> int:
    """agent_pos dims the saved policy takes (its proprio tokenizer's statistics; 0: none)."""
    meta = json.loads((Path(model_path) / "ee_vla.json").read_text())
    return len(((meta.get("proprio_tokenizer") or {}).get("stats") or {}).get("q01") or [])


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc; None when gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc): the server's policy process."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return sorted(kids)


BAD_INPUT_KINDS = (
    "image:encoding",
    "image:truncated",
    "instruction:invalid-utf8",
    "instruction:too-long",
    "instruction:empty",
    "joint_state:nan",
)
"""The soak's malformed inputs, sent in this rotation."""


def run_soak(cfg: RosBenchConfig) -> dict[str, Any]:
    """The soak benchmark (see the module docstring); returns (and writes to `cfg.out`) the result."""
    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config, write_serialized
    from ros_nodes.messages import build_image, build_joint_state

    tmp = tempfile.mkdtemp(prefix="ee_vla_soak_")
    model_path = cfg.model_path or shipped_policy_dir()
    n_proprio = proprio_dim(model_path)
    names = [f"agent_pos_{i}" for i in range(n_proprio)]
    stats_path = os.path.join(tmp, "server_stats.json")
    extra = ["--use-joint-state"] if n_proprio else []
    server, server_log = _start_server(_server_cmd(cfg, model_path, stats_path, extra))

    graph = DdsGraph(cfg.domain_id, loopback_config(cfg.domain_id))
    lock = threading.Lock()
    arrivals: list[float] = []
    diag_levels = {0: 0, 1: 0, 2: 0, 3: 0}
    diag_messages: dict[int, str] = {}

    def on_command(_msg: Any) -> None:
        with lock:
            arrivals.append(time.perf_counter())

    def on_diag(msg: Any) -> None:
        with lock:
            for st in msg.status:
                diag_levels[int(st.level)] = diag_levels.get(int(st.level), 0) + 1
                diag_messages.setdefault(int(st.level), st.message)

    graph.reader("forward_command_controller/commands", msgs.Float64MultiArray, "default", callback=on_command)
    graph.reader("/diagnostics", msgs.DiagnosticArray, "default", callback=on_diag)
    img_w = graph.writer("camera/image_raw", msgs.Image, "sensor_data")
    instr_w = graph.writer("instruction", msgs.String, "default")
    js_w = graph.writer("joint_states", msgs.JointState, "default")
    rng = np.random.default_rng(0)
    frames = [
        build_image(msgs, rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8), (0, 0))
        for _ in range(8)
    ]
    joints = build_joint_state(msgs, names, np.zeros(n_proprio), (0, 0))
    bad_encoding = build_image(msgs, np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8), (0, 0))
    bad_encoding.encoding = "yuv422"
    truncated = build_image(msgs, np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8), (0, 0))
    truncated.data = truncated.data[:100]
    invalid_utf8 = b"\x00\x01\x00\x00" + (9).to_bytes(4, "little") + b"go \xff\xfe up\x00"
    nan_joints = build_joint_state(msgs, names or ["j0"], np.full(max(n_proprio, 1), np.nan), (0, 0))
    bad_sent = dict.fromkeys(BAD_INPUT_KINDS, 0)

    def send_bad(i: int) -> None:
        kind = BAD_INPUT_KINDS[i % len(BAD_INPUT_KINDS)]
        if kind == "joint_state:nan" and not n_proprio:
            return  # the server does not read joint states
        if kind == "image:encoding":
            img_w.write(bad_encoding)
        elif kind == "image:truncated":
            img_w.write(truncated)
        elif kind == "instruction:invalid-utf8":
            write_serialized(instr_w, invalid_utf8)
        elif kind == "instruction:too-long":
            instr_w.write(msgs.String(data="pick up the red cube " * 200))
        elif kind == "instruction:empty":
            instr_w.write(msgs.String(data=""))
        else:
            js_w.write(nan_joints)
        bad_sent[kind] += 1

    stop_spin = threading.Event()

    def spin() -> None:
        while not stop_spin.is_set():
            graph.spin_once(0.02)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    def count() -> int:
        with lock:
            return len(arrivals)

    def sample_rss(t: float) -> dict[str, Any]:
        kids = child_pids(server.pid)
        return {
            "t_s": round(t, 1),
            "server_mb": rss_mb(server.pid),
            "policy_process_mb": sum(v for k in kids if (v := rss_mb(k)) is not None) if kids else None,
        }

    result: dict[str, Any] = {"mode": "soak", "model_path": model_path}
    rss: list[dict[str, Any]] = []
    server_alive = True
    try:
        instr_w.write(msgs.String(data="pick up the red cube"))

        def send_observation(i: int) -> None:
            if n_proprio:
                js_w.write(joints)
            img_w.write(frames[i % len(frames)])

        result["startup_to_first_command_s"], i = _until_first_command(
            server, server_log, count, send_observation, cfg.camera_hz, timeout_s=300
        )
        cam_period = 1.0 / cfg.camera_hz
        n0 = count()
        t0 = time.perf_counter()
        next_img, next_bad, next_rss, n_bad = t0, t0 + cfg.bad_input_every_s, t0, 0
        images = 0
        while (now := time.perf_counter()) < t0 + cfg.duration_s:
            if server.poll() is not None:
                server_alive = False
                break
            if now >= next_rss:
                rss.append(sample_rss(now - t0))
                next_rss += cfg.rss_every_s
            if now >= next_img:
                if n_proprio:
                    js_w.write(joints)
                img_w.write(frames[i % len(frames)])
                i += 1
                images += 1
                next_img += cam_period
            if cfg.bad_input_every_s and now >= next_bad:
                send_bad(n_bad)
                n_bad += 1
                next_bad += cfg.bad_input_every_s
            time.sleep(max(0.0, min(next_img, next_rss) - time.perf_counter()))
        t1 = time.perf_counter()
        rss.append(sample_rss(t1 - t0))
        received_in_window = count() - n0
    finally:
        time.sleep(0.5)  # diagnostics of the last bad inputs
        _stop_server(server)
        time.sleep(0.3)
        stop_spin.set()
        spinner.join(timeout=2)
        graph.close()
    server_stats = json.loads(Path(stats_path).read_text()) if os.path.exists(stats_path) else {}

    def growth(key: str) -> dict[str, float | None]:
        v = [r[key] for r in rss if r[key] is not None]
        if not v:
            return {"start_mb": None, "end_mb": None, "growth_mb": None, "max_mb": None, "second_half_growth_mb": None}
        half = v[len(v) // 2 :]
        return {
            "start_mb": round(v[0], 1),
            "end_mb": round(v[-1], 1),
            "growth_mb": round(v[-1] - v[0], 1),
            "max_mb": round(max(v), 1),
            "second_half_growth_mb": round(half[-1] - half[0], 1),
        }

    sent = int(server_stats.get("commands_sent", 0))
    window_s = t1 - t0
    bad_total = sum(bad_sent.values())
    counted = int(server_stats.get("bad_inputs", 0))
    result.update(
        window_s=round(window_s, 1),
        server_alive_throughout=server_alive,
        images_sent=images,
        commands_received_in_window=received_in_window,
        commands_expected_in_window=int(round(window_s * cfg.control_hz)),
        commands_sent_by_server=sent,
        commands_received_total=count(),
        delivered_fraction=count() / sent if sent else None,
        rss_server=growth("server_mb"),
        rss_policy_process=growth("policy_process_mb"),
        deadline_misses=server_stats.get("deadline_misses"),
        chunks_done=server_stats.get("chunks_done"),
        chunks_dropped=server_stats.get("chunks_dropped"),
        model_errors=server_stats.get("model_errors"),
        watchdog_trips=server_stats.get("watchdog_trips"),
        decode_latency_p50_ms=server_stats.get("decode_latency_p50_ms"),
        decode_latency_p95_ms=server_stats.get("decode_latency_p95_ms"),
        decode_latency_p99_ms=server_stats.get("decode_latency_p99_ms"),
        bad_inputs_sent=bad_total,
        bad_inputs_sent_by_kind=bad_sent,
        bad_inputs_counted_by_server=counted,
        diagnostics_levels_seen={"ok": diag_levels[0], "warn": diag_levels[1], "error": diag_levels[2]},
        diagnostics_first_message_by_level=diag_messages,
        timer_skipped_ticks=server_stats.get("timer_skipped_ticks"),
        rss_samples=rss,
        config=asdict(cfg),
        machine=_machine(),
        command=" ".join([sys.executable, "-m", "ros_nodes.bench"] + sys.argv[1:]),
    )
    result["checks"] = {
        "server_alive_throughout": server_alive,
        "every_bad_input_counted": counted >= bad_total,
        "no_model_errors": server_stats.get("model_errors") == "0",
    }
    for name, ok in result["checks"].items():
        if not ok:
            log.warning("soak check failed: %s", name)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_bench(tyro.cli(RosBenchConfig, args=argv))
    # The result is the product of this tool: printed on stdout for the user, as well as saved.
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
