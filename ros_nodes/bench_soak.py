"""`python -m ros_nodes.bench --mode soak`: a policy served for a long window with images at
`camera_hz` and, every `bad_input_every_s`, one malformed input (a rotation of wrong encodings,
truncated images, undecodable and over-long instructions, NaN joint states). It reports the server's
and its policy process's RSS over time, deadline misses, commands delivered, and bad inputs sent
against those the server counted."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros_nodes.bench_common import (
    RosBenchConfig,
    bench_command,
    log,
    machine_info,
    read_server_stats,
    server_cmd,
    start_server,
    stop_server,
    until_first_command,
    write_result,
)


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


class _SoakRobot:
    """The robot side of the soak: publishes the instruction, images, joint states and malformed
    inputs; counts arriving commands and the /diagnostics levels it sees."""

    def __init__(self, cfg: RosBenchConfig, n_proprio: int):
        from ros_nodes.dds import msgs
        from ros_nodes.dds.transport import DdsGraph, loopback_config
        from ros_nodes.messages import build_image, build_joint_state

        self.msgs = msgs
        self.n_proprio = n_proprio
        names = [f"agent_pos_{i}" for i in range(n_proprio)]
        self.graph = DdsGraph(cfg.domain_id, loopback_config(cfg.domain_id))
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.diag_levels = {0: 0, 1: 0, 2: 0, 3: 0}
        self.diag_messages: dict[int, str] = {}
        self.graph.reader(
            "forward_command_controller/commands", msgs.Float64MultiArray, "default", callback=self._on_command
        )
        self.graph.reader("/diagnostics", msgs.DiagnosticArray, "default", callback=self._on_diag)
        self.img_w = self.graph.writer("camera/image_raw", msgs.Image, "sensor_data")
        self.instr_w = self.graph.writer("instruction", msgs.String, "default")
        self.js_w = self.graph.writer("joint_states", msgs.JointState, "default")
        rng = np.random.default_rng(0)
        size = cfg.image_size
        self.frames = [
            build_image(msgs, rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0)) for _ in range(8)
        ]
        self.joints = build_joint_state(msgs, names, np.zeros(n_proprio), (0, 0))
        self.bad_encoding = build_image(msgs, np.zeros((size, size, 3), np.uint8), (0, 0))
        self.bad_encoding.encoding = "yuv422"
        self.truncated = build_image(msgs, np.zeros((size, size, 3), np.uint8), (0, 0))
        self.truncated.data = self.truncated.data[:100]
        self.invalid_utf8 = b"\x00\x01\x00\x00" + (9).to_bytes(4, "little") + b"go \xff\xfe up\x00"
        self.nan_joints = build_joint_state(msgs, names or ["j0"], np.full(max(n_proprio, 1), np.nan), (0, 0))
        self.bad_sent = dict.fromkeys(BAD_INPUT_KINDS, 0)
        self._stop_spin = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _on_command(self, _msg: Any) -> None:
        with self.lock:
            self.arrivals.append(time.perf_counter())

    def _on_diag(self, msg: Any) -> None:
        with self.lock:
            for st in msg.status:
                self.diag_levels[int(st.level)] = self.diag_levels.get(int(st.level), 0) + 1
                self.diag_messages.setdefault(int(st.level), st.message)

    def _spin(self) -> None:
        while not self._stop_spin.is_set():
            self.graph.spin_once(0.02)

    def count(self) -> int:
        """Commands received so far."""
        with self.lock:
            return len(self.arrivals)

    def send_instruction(self) -> None:
        """The one valid instruction of the run."""
        self.instr_w.write(self.msgs.String(data="pick up the red cube"))

    def send_observation(self, i: int) -> None:
        """Image `i` (of the rotation), after the joint state when the policy reads one."""
        if self.n_proprio:
            self.js_w.write(self.joints)
        self.img_w.write(self.frames[i % len(self.frames)])

    def send_bad(self, i: int) -> None:
        """Malformed input `i` of the `BAD_INPUT_KINDS` rotation."""
        from ros_nodes.dds.transport import write_serialized

        kind = BAD_INPUT_KINDS[i % len(BAD_INPUT_KINDS)]
        if kind == "joint_state:nan" and not self.n_proprio:
            return  # the server does not read joint states
        if kind == "image:encoding":
            self.img_w.write(self.bad_encoding)
        elif kind == "image:truncated":
            self.img_w.write(self.truncated)
        elif kind == "instruction:invalid-utf8":
            write_serialized(self.instr_w, self.invalid_utf8)
        elif kind == "instruction:too-long":
            self.instr_w.write(self.msgs.String(data="pick up the red cube " * 200))
        elif kind == "instruction:empty":
            self.instr_w.write(self.msgs.String(data=""))
        else:
            self.js_w.write(self.nan_joints)
        self.bad_sent[kind] += 1

    def close(self) -> None:
        """Stop receiving and leave the graph."""
        self._stop_spin.set()
        self._spinner.join(timeout=2)
        self.graph.close()


@dataclass
class _SoakWindow:
    """What the soak's measured window saw."""

    t0: float
    t1: float = 0.0
    images: int = 0
    received: int = 0
    server_alive: bool = True
    rss: list[dict[str, Any]] = field(default_factory=list)


def _sample_rss(server: subprocess.Popen, t: float) -> dict[str, Any]:
    """The server's and its policy process's resident memory, `t` seconds into the window."""
    kids = child_pids(server.pid)
    return {
        "t_s": round(t, 1),
        "server_mb": rss_mb(server.pid),
        "policy_process_mb": sum(v for k in kids if (v := rss_mb(k)) is not None) if kids else None,
    }


def _soak_window(cfg: RosBenchConfig, server: subprocess.Popen, robot: _SoakRobot, i: int) -> _SoakWindow:
    """`cfg.duration_s` of observations at `camera_hz`, a bad input every `bad_input_every_s` and an
    RSS sample every `rss_every_s`; ends early when the server exits."""
    cam_period = 1.0 / cfg.camera_hz
    n0 = robot.count()
    w = _SoakWindow(t0=time.perf_counter())
    t0 = w.t0
    next_img, next_bad, next_rss, n_bad = t0, t0 + cfg.bad_input_every_s, t0, 0
    while (now := time.perf_counter()) < t0 + cfg.duration_s:
        if server.poll() is not None:
            w.server_alive = False
            break
        if now >= next_rss:
            w.rss.append(_sample_rss(server, now - t0))
            next_rss += cfg.rss_every_s
        if now >= next_img:
            robot.send_observation(i)
            i += 1
            w.images += 1
            next_img += cam_period
        if cfg.bad_input_every_s and now >= next_bad:
            robot.send_bad(n_bad)
            n_bad += 1
            next_bad += cfg.bad_input_every_s
        time.sleep(max(0.0, min(next_img, next_rss) - time.perf_counter()))
    w.t1 = time.perf_counter()
    w.rss.append(_sample_rss(server, w.t1 - t0))
    w.received = robot.count() - n0
    return w


def _rss_growth(rss: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Start, end, growth, maximum and second-half growth (MiB) of one process's RSS samples."""
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


def _soak_report(
    cfg: RosBenchConfig, result: dict[str, Any], w: _SoakWindow, robot: _SoakRobot, server_stats: dict[str, Any]
) -> None:
    """Add the window's, the robot side's and the server's figures, and the checks, to `result`."""
    sent = int(server_stats.get("commands_sent", 0))
    window_s = w.t1 - w.t0
    bad_total = sum(robot.bad_sent.values())
    counted = int(server_stats.get("bad_inputs", 0))
    diag_levels = robot.diag_levels
    result.update(
        window_s=round(window_s, 1),
        server_alive_throughout=w.server_alive,
        images_sent=w.images,
        commands_received_in_window=w.received,
        commands_expected_in_window=int(round(window_s * cfg.control_hz)),
        commands_sent_by_server=sent,
        commands_received_total=robot.count(),
        delivered_fraction=robot.count() / sent if sent else None,
        rss_server=_rss_growth(w.rss, "server_mb"),
        rss_policy_process=_rss_growth(w.rss, "policy_process_mb"),
        deadline_misses=server_stats.get("deadline_misses"),
        chunks_done=server_stats.get("chunks_done"),
        chunks_dropped=server_stats.get("chunks_dropped"),
        model_errors=server_stats.get("model_errors"),
        watchdog_trips=server_stats.get("watchdog_trips"),
        decode_latency_p50_ms=server_stats.get("decode_latency_p50_ms"),
        decode_latency_p95_ms=server_stats.get("decode_latency_p95_ms"),
        decode_latency_p99_ms=server_stats.get("decode_latency_p99_ms"),
        bad_inputs_sent=bad_total,
        bad_inputs_sent_by_kind=robot.bad_sent,
        bad_inputs_counted_by_server=counted,
        diagnostics_levels_seen={"ok": diag_levels[0], "warn": diag_levels[1], "error": diag_levels[2]},
        diagnostics_first_message_by_level=robot.diag_messages,
        timer_skipped_ticks=server_stats.get("timer_skipped_ticks"),
        rss_samples=w.rss,
        config=asdict(cfg),
        machine=machine_info(),
        command=bench_command(),
    )
    result["checks"] = {
        "server_alive_throughout": w.server_alive,
        "every_bad_input_counted": counted >= bad_total,
        "no_model_errors": server_stats.get("model_errors") == "0",
    }
    for name, ok in result["checks"].items():
        if not ok:
            log.warning("soak check failed: %s", name)


def run_soak(cfg: RosBenchConfig) -> dict[str, Any]:
    """The soak benchmark (see the module docstring); returns (and writes to `cfg.out`) the result."""
    tmp = tempfile.mkdtemp(prefix="ee_vla_soak_")
    model_path = cfg.model_path or shipped_policy_dir()
    n_proprio = proprio_dim(model_path)
    stats_path = os.path.join(tmp, "server_stats.json")
    extra = ["--use-joint-state"] if n_proprio else []
    server, server_log = start_server(server_cmd(cfg, model_path, stats_path, extra))
    robot = _SoakRobot(cfg, n_proprio)
    result: dict[str, Any] = {"mode": "soak", "model_path": model_path}
    try:
        robot.send_instruction()
        result["startup_to_first_command_s"], i = until_first_command(
            server, server_log, robot.count, robot.send_observation, cfg.camera_hz, timeout_s=300
        )
        window = _soak_window(cfg, server, robot, i)
    finally:
        time.sleep(0.5)  # diagnostics of the last bad inputs
        stop_server(server)
        time.sleep(0.3)
        robot.close()
    _soak_report(cfg, result, window, robot, read_server_stats(stats_path))
    write_result(cfg, result)
    return result
