"""Benchmark: how many robots one device serves at their control rate, batched vs one call at a time.

    python -m ros_nodes.bench_fleet --model tiny --robots 1 2 4 --duration-s 5          # CPU smoke
    python -m ros_nodes.bench_fleet --model openvla-7b --tokenizer DIR --device cuda --dtype bfloat16 \\
        --decoder ceed --max-iterations 4 --robots 1 2 4 8 16 24 32 --out outputs/bench_fleet.json

For each number of robots N and each mode, one policy is loaded once and shared; N `PolicyRunner`s
(the runner the DDS server and the rclpy node use, unchanged: its worker, schedule, deadlines,
watchdog) are driven in this process: each robot's camera delivers an image every 1/camera_hz and
its control timer ticks every 1/control_hz, at a random phase per robot (robots are not in step).
The DDS wire is not part of it (`serve --namespaces` is tested over loopback separately).

Modes:

* ``batched``: the robots' calls go through `ros_nodes.fleet.FleetPolicy` (gather window
  `--gather-s`, at most `--max-batch` rows, padded to powers of two for static engines);
* ``sequential``: the same fleet with a batch of one: each robot's call runs alone, one after
  another on the one device. That is what N separate processes sharing a GPU amount to, minus N
  copies of the weights (an OpenVLA-7B copy is about 15 GB in bf16: 16 processes would need about
  240 GB, more than an H200's 141 GB), and minus the contention of N CUDA contexts;
* ``processes`` (not run by default): N real processes, one robot each, each loading its own copy
  of the model, started together; only up to `--process-max` robots (default 4).

Per N and mode it reports: deadline misses (a chunk's first action later than `decode_deadline_s`
after its image, default one chunk's duration, `chunk_size / control_hz`), chunks dropped, late
ticks (an action due before it was final), ticks without a fresh action, p50/p99/max image -> first
action latency, commands per second per robot (min and mean), batch sizes seen, and the fleet's
decode and queue times. A robot count "meets its deadlines" when no robot had a deadline miss, a
dropped chunk, a late tick, a tick without a fresh action (its plan ran out) or a model error in the
window. By default every robot decodes each new image; `--chunk-size-threshold 0.5` makes each one
decode once its plan lasts half a chunk (`PolicyParams.chunk_size_threshold`), fewer calls per
robot. The result: the largest N of the sweep up to which every N met them, per mode. Prints a
table, writes JSON (`--out`) and, with matplotlib installed, a plot next to it. Imports neither
mujoco, gymnasium nor tyro.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ros_nodes.fleet import PADDINGS

log = logging.getLogger("ee_vla.bench_fleet")

MODES = ("batched", "sequential", "processes")
DEFAULT_MODES = ("batched", "sequential")
INSTRUCTIONS = (
    "pick up the red cube",
    "open the top drawer",
    "push the blue button to the left",
    "put the sponge in the bowl",
    "close the microwave door",
    "stack the green block on the yellow one",
    "move the cup next to the plate",
    "wipe the table with the towel",
)
"""One per robot, in turn: robots of one batch decode different instructions (different prompt lengths)."""


@dataclass
class FleetBenchConfig:
    """What to benchmark (`python -m ros_nodes.bench_fleet --help`)."""

    model: str = "tiny"
    """A policy directory, or a random model: tiny | small (ee_vla's presets) | openvla-7b |
    openvla-tiny (OpenVLA's whole network, random weights; needs `tokenizer`)."""
    tokenizer: str = ""
    """openvla-*: a directory with a Llama-2 tokenizer (e.g. tests/fixtures/openvla/openvla-tiny-dinosiglip-224px)."""
    chunk_size: int = 3
    """Actions per call (a random model's chunk; a directory's model: 0 = its own)."""
    decoder: str = "ceed"
    """Decoder preset: ar | jacobi | ceed | ceed_cap | ceed_2pass."""
    max_iterations: int = 0
    """ceed/ceed_cap/ceed_2pass: iteration cap (0: the preset's). Random weights never converge like a trained
    model: cap them (a trained policy of the suite needs 3-4 iterations per chunk of 3 actions, 5-6 per chunk of 8)."""
    guess_in_prefill: bool = False
    """Run the warm start's guess in the prefill (`RuntimeConfig.guess_in_prefill`)."""
    device: str = "auto"
    dtype: str = "float32"
    engine: str = "auto"
    """auto (CUDA graphs on a GPU, eager on a CPU) | eager | static | graph | compiled."""
    compile_mode: str = "inductor"
    quantize: str = "none"
    """Weight quantisation at load: none | int8 | fp8 | fp8_tensor (`RuntimeConfig.quantize`)."""
    threads: int = 0
    """CPU threads of torch (0: the cores available minus one)."""
    robots: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32)
    """Numbers of robots to sweep."""
    modes: tuple[str, ...] = DEFAULT_MODES
    """batched | sequential | processes (one process per robot, each with its own copy of the
    model: only up to `process_max` robots)."""
    process_max: int = 4
    """processes: the largest N run (each process holds a copy of the weights)."""
    duration_s: float = 10.0
    """Measured window per N and mode."""
    settle_s: float = 2.0
    """Run before the window (every robot's first chunks), not measured."""
    camera_hz: float = 10.0
    control_hz: float = 10.0
    decode_deadline_s: float = 0.0
    """A chunk's first action must come within this many seconds of its image (0: one chunk's
    duration, chunk_size / control_hz)."""
    chunk_size_threshold: float = 1.0
    """Each robot decodes its next chunk once its planned actions last at most this fraction of a chunk
    (`PolicyParams.chunk_size_threshold`; 1: every image)."""
    chunk_start: str = "arrival"
    """Each robot's `PolicyParams.chunk_start` (arrival: a chunk runs from its first action however
    late; the deadlines measured here are the first action's)."""
    gather_s: float = 0.005
    """batched: the fleet's gather window (`FleetConfig.gather_s`)."""
    max_batch: int = 0
    """batched: most rows per batch (0: N)."""
    batch_padding: str = "auto"
    """batched: auto | pow2 | step4 | none (`FleetConfig.padding`; `ee-vla serve --batch-padding`)."""
    image_size: int = 0
    """Side of the robots' images (0: the model's)."""
    switch_interval_s: float = 0.0005
    """Python's thread switch interval during the runs (`ServeConfig.switch_interval_s`, what
    `serve` runs with: the robots' timers and the decode thread take the GIL in turn sooner)."""
    keep_going: bool = False
    """Sweep every N in every mode (default: a mode stops after the first N that misses deadlines)."""
    seed: int = 0
    out: str = "outputs/bench_fleet.json"
    """JSON result; the plot goes next to it (.png)."""
    plot: bool = True
    verbose: bool = False
    """Log the runners' messages too (default: the benchmark's only)."""

    def __post_init__(self) -> None:
        if not self.robots or any(n < 1 for n in self.robots):
            raise ValueError(f"--robots: positive robot counts, got {self.robots}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"--modes: from {MODES}, got {self.modes}")
        for name in ("duration_s", "camera_hz", "control_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.switch_interval_s <= 0.1:
            raise ValueError(f"--switch-interval-s: must be in (0, 0.1], got {self.switch_interval_s}")
        if self.settle_s < 0 or self.decode_deadline_s < 0 or self.gather_s < 0 or self.max_batch < 0:
            raise ValueError("--settle-s, --decode-deadline-s, --gather-s and --max-batch must be >= 0")
        self.robots = tuple(sorted(set(self.robots)))


def load_policy(cfg: FleetBenchConfig) -> Any:
    """The benchmarked `VLAPolicy`: a saved one, or a random model built on the device."""
    import torch

    from ee_vla.runtime import RuntimeConfig
    from ee_vla.threads import configure_threads

    rt = RuntimeConfig(
        decoder=cfg.decoder,  # type: ignore[arg-type]
        max_iterations=cfg.max_iterations or None,
        guess_in_prefill=cfg.guess_in_prefill,
        device=cfg.device,
        dtype=cfg.dtype,  # type: ignore[arg-type]
        engine=cfg.engine,  # type: ignore[arg-type]
        compile_mode=cfg.compile_mode,  # type: ignore[arg-type]
        quantize=cfg.quantize,  # type: ignore[arg-type]
        threads=cfg.threads,
        chunk_size=cfg.chunk_size or None,
    ).resolved()
    configure_threads(rt.threads)
    from ee_vla.policy import VLAPolicy

    path = Path(cfg.model)
    if path.exists():
        return VLAPolicy.from_config(path, rt.policy_config())
    if cfg.model.startswith("openvla-"):
        from ee_vla.models.openvla.random import random_openvla

        if not cfg.tokenizer:
            raise ValueError(f"--model {cfg.model} needs --tokenizer DIR (a Llama-2 tokenizer)")
        size = cfg.model.removeprefix("openvla-")
        vla = random_openvla(size, cfg.tokenizer, rt.device, getattr(torch, rt.dtype), cfg.chunk_size or 1, cfg.seed)
        return VLAPolicy(vla, rt.policy_config())
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.vla import PRESETS

    if cfg.model not in PRESETS:
        raise ValueError(f"--model {cfg.model!r} is neither a directory nor one of {[*PRESETS, 'openvla-7b']}")
    d = create_random_vla_dir(Path(tempfile.mkdtemp()) / cfg.model, cfg.model, cfg.chunk_size or 3, cfg.seed)
    return VLAPolicy.from_config(d, rt.policy_config())


@dataclass
class _Robot:
    """One simulated robot: its runner and what the benchmark counts."""

    name: str
    runner: Any
    images: list[np.ndarray]
    phases: tuple[float, float]
    """Offsets of its first image and first control tick from the start (robots are not in step)."""
    sent: int = 0
    ticks: int = 0
    late_driver: list[float] = field(default_factory=list)


def _snapshot(r: _Robot) -> dict[str, Any]:
    run = r.runner
    return {
        "sent": r.sent,
        "ticks": r.ticks,
        "deadline_misses": run.deadline_misses,
        "chunks_dropped": run.chunks_dropped,
        "chunks_done": run.chunks_done,
        "model_errors": run.model_errors,
        "bad_inputs": run.bad_inputs(),
        "first_action": len(run.first_action_latency._v),
        "decode": len(run.decode_latency._v),
        "sources": dict(run.schedule.counts) if run.schedule is not None else {},
    }


def run_one(policy: Any, cfg: FleetBenchConfig, n: int, mode: str) -> dict[str, Any]:
    """N robots for `settle_s + duration_s` in `mode` (batched | sequential); the window's statistics."""
    raw = _session(policy, cfg, n, list(range(n)), mode, time.perf_counter() + 0.05)
    return _summary(n, mode, raw, _deadline_s(cfg, policy.chunk_size))


def _deadline_s(cfg: FleetBenchConfig, chunk_size: int) -> float:
    return cfg.decode_deadline_s or chunk_size / cfg.control_hz


def _session(policy: Any, cfg: FleetBenchConfig, n: int, indices: list[int], mode: str, t0: float) -> dict[str, Any]:
    """Robots `indices` (of a run of `n`) on one fleet of `policy`, driven from `t0`
    (`time.perf_counter()`): their records in the window, the batch sizes seen, the fleet's stats."""
    from ros_nodes.diagnostics import Window
    from ros_nodes.fleet import FleetConfig, FleetPolicy
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner

    batched = mode == "batched"
    fcfg = FleetConfig(
        gather_s=cfg.gather_s if batched else 0.0,
        max_batch=(min(n, cfg.max_batch) if cfg.max_batch else n) if batched else 1,
        padding=cfg.batch_padding,  # type: ignore[arg-type]
    )
    fleet = FleetPolicy(policy, fcfg)
    t = time.perf_counter()
    fleet.warm_up()
    warm_s = time.perf_counter() - t
    proprio = int(getattr(policy.vla, "proprio_dim", 0) or 0)
    params = PolicyParams(
        use_joint_state=bool(proprio),
        policy_process=False,
        warmup=False,
        command_type="array",
        dry_run=False,
        control_hz=cfg.control_hz,
        decode_deadline_s=_deadline_s(cfg, policy.chunk_size),
        chunk_size_threshold=cfg.chunk_size_threshold,
        chunk_start=cfg.chunk_start,
        image_timeout_s=max(1.0, 5.0 / cfg.camera_hz),
        decode_nice=0,
        max_hold_s=0.0,
    )
    size = cfg.image_size or int(getattr(policy.vla, "image_size", 64) or 64)
    robots: list[_Robot] = []
    try:
        for i in indices:
            name = f"robot{i + 1}"
            rng = np.random.default_rng([cfg.seed, n, i])  # the same robot in every mode
            runner = PolicyRunner(
                params, lambda _p, name=name: fleet.robot(name), logger=logging.getLogger(f"{log.name}.robots.{name}")
            )
            runner.first_action_latency = Window(1 << 20)
            runner.decode_latency = Window(1 << 20)
            runner.configure()
            runner.on_instruction(INSTRUCTIONS[i % len(INSTRUCTIONS)])
            if proprio:
                runner.on_joint_state([f"j{k}" for k in range(proprio)], list(rng.normal(size=proprio)))
            imgs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
            phases = (rng.uniform(0, 1.0 / cfg.camera_hz), rng.uniform(0, 1.0 / cfg.control_hz))
            robots.append(_Robot(name, runner, imgs, phases))
        for r in robots:
            r.runner.activate()
        before, after = _drive(robots, cfg, fleet, max(t0, time.perf_counter()))
    finally:
        for r in robots:
            r.runner.shutdown()
        fleet_stats = fleet.stats()
        fleet.close()
    (t_a, snap_a, sizes_a), (t_b, snap_b, sizes_b) = before, after
    records = [_record(r, a, b) for r, a, b in zip(robots, snap_a, snap_b, strict=True)]
    sizes = {s: c - sizes_a.get(s, 0) for s, c in sorted(sizes_b.items()) if c - sizes_a.get(s, 0)}
    return {"window_s": t_b - t_a, "records": records, "batch_sizes": sizes, "fleet": fleet_stats, "warm_up_s": warm_s}


def _drive(
    robots: list[_Robot], cfg: FleetBenchConfig, fleet: Any, t0: float
) -> tuple[tuple[float, list[dict], Counter], tuple[float, list[dict], Counter]]:
    """Feed images and tick each robot's runner on its own schedule (from `t0`, at each robot's
    phases) from one driver thread; returns the snapshots (time, per robot, fleet batch sizes) at
    the start and end of the window."""
    cam_dt, ctl_dt = 1.0 / cfg.camera_hz, 1.0 / cfg.control_hz
    events: list[tuple[float, int, int, str]] = []
    for i, r in enumerate(robots):
        heapq.heappush(events, (t0 + r.phases[0], i, 0, "image"))
        heapq.heappush(events, (t0 + r.phases[1], i, 1, "tick"))
    t_window, t_end = t0 + cfg.settle_s, t0 + cfg.settle_s + cfg.duration_s
    before: tuple[float, list[dict], Counter] | None = None
    counts = [0] * len(robots)
    while True:
        t, i, k, kind = heapq.heappop(events)
        if before is None and t >= t_window:
            before = (time.perf_counter(), [_snapshot(r) for r in robots], Counter(fleet.batch_sizes))
        if t >= t_end:
            break
        wait = t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter()
        r = robots[i]
        if kind == "image":
            counts[i] += 1
            r.runner.on_image(r.images[counts[i] % len(r.images)], now)
            heapq.heappush(events, (t + cam_dt, i, 0, "image"))
        else:
            r.ticks += 1
            if before is not None:
                r.late_driver.append(now - t)
            emit = r.runner.tick(now)
            if emit is not None:
                r.runner.record_sent(now)
                r.sent += 1
            heapq.heappush(events, (t + ctl_dt, i, 1, "tick"))
    assert before is not None
    return before, (time.perf_counter(), [_snapshot(r) for r in robots], Counter(fleet.batch_sizes))


def _record(r: _Robot, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One robot's window: counts between snapshots `a` and `b`, and its latencies (seconds)."""
    src = {k: b["sources"].get(k, 0) - a["sources"].get(k, 0) for k in b["sources"]}
    return {
        "robot": r.name,
        **{k: b[k] - a[k] for k in ("deadline_misses", "chunks_dropped", "chunks_done", "model_errors", "bad_inputs")},
        "sent": b["sent"] - a["sent"],
        "ticks": b["ticks"] - a["ticks"],
        "late_ticks": src.get("late", 0),
        "fresh_ticks": src.get("chunk", 0) + src.get("blend", 0),
        "stale_ticks": src.get("hold", 0) + src.get("zero", 0) + src.get("none", 0),
        "first_action_s": list(r.runner.first_action_latency._v)[a["first_action"] : b["first_action"]],
        "decode_s": list(r.runner.decode_latency._v)[a["decode"] : b["decode"]],
        "driver_late_s": list(r.late_driver),
    }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _summary(n: int, mode: str, raw: dict[str, Any], deadline: float) -> dict[str, Any]:
    """The statistics of one run from its robots' records (`_session`, or merged from processes)."""
    window = raw["window_s"]
    records = raw["records"]
    counts = ("deadline_misses", "chunks_dropped", "chunks_done", "model_errors")
    total = {k: sum(r[k] for r in records) for k in counts}
    first = [x for r in records for x in r["first_action_s"]]
    decode = [x for r in records for x in r["decode_s"]]
    late = sum(r["late_ticks"] for r in records)
    stale = sum(r["stale_ticks"] for r in records)
    ticks = sum(r["ticks"] for r in records)
    rates = [r["sent"] / window for r in records]
    sizes = {int(s): c for s, c in raw["batch_sizes"].items()}
    rows = sum(s * c for s, c in sizes.items())
    batches = sum(sizes.values())
    driver_late = [x for r in records for x in r["driver_late_s"]]
    ok = (
        total["deadline_misses"] == 0
        and total["chunks_dropped"] == 0
        and late == 0
        and stale == 0
        and total["model_errors"] == 0
    )
    per = [
        {k: v for k, v in r.items() if not k.endswith("_s")} | {"commands_per_s": r["sent"] / window} for r in records
    ]
    return {
        "robots": n,
        "mode": mode,
        "meets_deadlines": ok,
        "window_s": window,
        "decode_deadline_s": deadline,
        **total,
        "late_ticks": late,
        "ticks": ticks,
        "stale_tick_fraction": stale / ticks if ticks else None,
        "first_action_ms": {
            "p50": _ms(_pct(first, 50)),
            "p99": _ms(_pct(first, 99)),
            "max": _ms(max(first) if first else None),
        },
        "decode_ms": {"p50": _ms(_pct(decode, 50)), "p99": _ms(_pct(decode, 99))},
        "commands_per_s_per_robot": {"min": min(rates), "mean": float(np.mean(rates))},
        "chunks_per_s_per_robot": total["chunks_done"] / window / n,
        "batch_sizes": sizes,
        "mean_batch": rows / batches if batches else None,
        "fleet": raw["fleet"] and {k: v for k, v in raw["fleet"].items() if k != "batch_sizes"},
        "warm_up_s": raw["warm_up_s"],
        "driver_lateness_ms_p99": _ms(_pct(driver_late, 99)),
        "per_robot": per,
    }


# ---- processes: one robot per process, each with a policy of its own --------------------------------
def run_processes(cfg: FleetBenchConfig, n: int) -> dict[str, Any]:
    """N robots, each in a process of its own that loads its own copy of the model and decodes its
    robot's calls alone (what N separate servers on one device are); all start their window together."""
    import queue
    import subprocess
    import sys

    procs: list[subprocess.Popen] = []
    logs = []
    lines: queue.Queue = queue.Queue()
    try:
        for i in range(n):
            job = json.dumps({"config": asdict(cfg), "n": n, "index": i})
            log_file = tempfile.NamedTemporaryFile("w+", suffix=f".robot{i + 1}.log", delete=False)  # noqa: SIM115
            logs.append(log_file)
            p = subprocess.Popen(
                [sys.executable, "-m", "ros_nodes.bench_fleet", "--worker", job],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
            procs.append(p)
            threading.Thread(target=_read_lines, args=(p, i, lines), daemon=True).start()
        ready: set[int] = set()
        results: dict[int, dict] = {}
        end = time.monotonic() + 1800
        while len(ready) < n:
            i, line = _next_line(lines, end, procs, logs)
            if line.strip() == "READY":
                ready.add(i)
        start = time.time() + 1.0
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"GO {start!r}\n")
            p.stdin.flush()
        end = time.monotonic() + cfg.settle_s + cfg.duration_s + 600
        while len(results) < n:
            i, line = _next_line(lines, end, procs, logs)
            if line.startswith("{"):
                results[i] = json.loads(line)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)
        for f in logs:
            f.close()
            os.unlink(f.name)
    raws = [results[i] for i in range(n)]
    sizes: Counter = Counter()
    for r in raws:
        sizes.update({int(s): c for s, c in r["batch_sizes"].items()})
    merged = {
        "window_s": float(np.mean([r["window_s"] for r in raws])),
        "records": [rec for r in raws for rec in r["records"]],
        "batch_sizes": dict(sorted(sizes.items())),
        "fleet": None,
        "warm_up_s": max(r["warm_up_s"] for r in raws),
    }
    return _summary(n, "processes", merged, raws[0]["decode_deadline_s"])


def _read_lines(p: Any, i: int, lines: Any) -> None:
    for line in p.stdout:
        lines.put((i, line))
    lines.put((i, None))


def _next_line(lines: Any, end: float, procs: list, logs: list) -> tuple[int, str]:
    """The next stdout line of any worker; raises with its log when one exits early or time is up."""
    import queue

    while True:
        try:
            i, line = lines.get(timeout=max(0.1, end - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("bench_fleet workers did not finish in time") from None
        if line is None:
            logs[i].flush()
            logs[i].seek(0)
            raise RuntimeError(f"worker robot{i + 1} exited (code {procs[i].wait()}):\n{logs[i].read()[-3000:]}")
        return i, line


def worker(job: dict[str, Any]) -> None:
    """A process of `run_processes`: load the model, say READY, start at the GO time, print the
    records of its one robot as the last stdout line."""
    import sys

    cfg = FleetBenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
    policy = load_policy(cfg)
    n, i = job["n"], job["index"]
    print("READY", flush=True)
    go = sys.stdin.readline().split()
    t0 = time.perf_counter() + (float(go[1]) - time.time())
    sys.setswitchinterval(cfg.switch_interval_s)
    raw = _session(policy, cfg, n, [i], "sequential", t0)
    raw["decode_deadline_s"] = _deadline_s(cfg, policy.chunk_size)
    print(json.dumps(raw, default=str), flush=True)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def robots_before_first_miss(results: list[dict[str, Any]], mode: str) -> int:
    """The largest N such that every swept N up to it met its deadlines in `mode` (0: none did)."""
    best = 0
    for r in sorted((r for r in results if r["mode"] == mode), key=lambda r: r["robots"]):
        if not r["meets_deadlines"]:
            break
        best = r["robots"]
    return best


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<10} {'N':>3} {'ok':>3} {'miss':>5} {'drop':>5} {'late':>5} {'stale%':>6} "
        f"{'1st p50':>8} {'1st p99':>8} {'cmd/s min':>9} {'chunk/s':>7} {'batch':>6} {'sizes':<24}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        fa = r["first_action_ms"]
        stale = r["stale_tick_fraction"]
        lines.append(
            f"{r['mode']:<10} {r['robots']:>3} {'yes' if r['meets_deadlines'] else 'NO':>3} "
            f"{r['deadline_misses']:>5} {r['chunks_dropped']:>5} {r['late_ticks']:>5} "
            f"{'-' if stale is None else f'{100 * stale:.1f}':>6} "
            f"{_f(fa['p50']):>8} {_f(fa['p99']):>8} {r['commands_per_s_per_robot']['min']:>9.2f} "
            f"{r['chunks_per_s_per_robot']:>7.2f} {_f(r['mean_batch']):>6} "
            f"{json.dumps(r['batch_sizes'], separators=(',', ':')):<24}"
        )
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Misses and p99 first-action latency vs N, per mode (False when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        rs = sorted((r for r in result["results"] if r["mode"] == mode), key=lambda r: r["robots"])
        if not rs:
            continue
        ns = [r["robots"] for r in rs]
        axes[0].plot(ns, [r["deadline_misses"] + r["late_ticks"] for r in rs], "o-", label=mode)
        axes[1].plot(ns, [r["first_action_ms"]["p99"] or np.nan for r in rs], "o-", label=mode)
    deadline_ms = result["results"][0]["decode_deadline_s"] * 1e3 if result["results"] else None
    if deadline_ms:
        axes[1].axhline(deadline_ms, color="grey", ls="--", label="decode deadline")
    axes[0].set(xlabel="robots", ylabel="deadline misses + late ticks", title="misses in the window")
    axes[1].set(xlabel="robots", ylabel="ms", title="image -> first action, p99")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{result['config']['model']}, {result['config']['control_hz']:g} Hz, chunk {result['chunk_size']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run(cfg: FleetBenchConfig) -> dict[str, Any]:
    """The sweep; prints the table and writes the JSON (and plot)."""
    import sys

    t = time.perf_counter()
    policy = load_policy(cfg)
    load_s = time.perf_counter() - t
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(cfg.switch_interval_s)
    from ee_vla.timing import environment_info

    log.info("policy loaded in %.1f s: chunk %d, action dim %d", load_s, policy.chunk_size, policy.action_dim)
    results: list[dict[str, Any]] = []
    for mode in cfg.modes:
        for n in cfg.robots:
            if mode == "processes" and n > cfg.process_max:
                log.info("processes: N=%d skipped (over --process-max %d)", n, cfg.process_max)
                continue
            r = run_processes(cfg, n) if mode == "processes" else run_one(policy, cfg, n, mode)
            results.append(r)
            log.info(
                "%s N=%d: %s (misses %d, dropped %d, late %d, first action p99 %s ms, mean batch %s)",
                mode,
                n,
                "meets deadlines" if r["meets_deadlines"] else "MISSES",
                r["deadline_misses"],
                r["chunks_dropped"],
                r["late_ticks"],
                r["first_action_ms"]["p99"],
                _f(r["mean_batch"]),
            )
            if not r["meets_deadlines"] and not cfg.keep_going:
                break
    sys.setswitchinterval(old_switch)
    env = environment_info(policy.config.device, policy.config.dtype)
    out = {
        "config": asdict(cfg),
        "chunk_size": policy.chunk_size,
        "engine": policy.config.engine,
        "decoder": asdict(policy.config.decoder),
        "load_s": load_s,
        "results": results,
        "robots_before_first_miss": {m: robots_before_first_miss(results, m) for m in cfg.modes},
        "environment": env,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
        "notes": (
            "sequential = every robot's call alone, one after another on the one device (N processes "
            "sharing a GPU, without N copies of the weights: an OpenVLA-7B copy is ~15 GB in bf16, so 16 "
            "processes would need ~240 GB, more than an H200's 141 GB)"
        ),
    }
    print(table(results))
    print("robots before the first miss: " + ", ".join(f"{m} {v}" for m, v in out["robots_before_first_miss"].items()))
    if cfg.out:
        path = Path(cfg.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
        if cfg.plot and plot(out, path.with_suffix(".png")):
            log.info("wrote %s and %s", path, path.with_suffix(".png"))
        else:
            log.info("wrote %s", path)
    return out


def parse_args(argv: list[str] | None = None) -> FleetBenchConfig:
    """`FleetBenchConfig` from the command line (argparse: no tyro needed)."""
    d = FleetBenchConfig()
    p = argparse.ArgumentParser(prog="python -m ros_nodes.bench_fleet", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=d.model, help="policy directory | tiny | small | openvla-7b | openvla-tiny")
    p.add_argument("--tokenizer", default=d.tokenizer, help="openvla-*: a Llama-2 tokenizer directory")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size)
    p.add_argument("--decoder", default=d.decoder, help="ar | jacobi | ceed | ceed_cap | ceed_2pass")
    p.add_argument("--max-iterations", type=int, default=d.max_iterations, help="ceed iteration cap (0: preset's)")
    p.add_argument("--guess-in-prefill", action="store_true", help="run the warm guess in the prefill")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument("--engine", default=d.engine, help="auto | eager | static | graph | compiled")
    p.add_argument("--compile-mode", default=d.compile_mode)
    p.add_argument("--quantize", default=d.quantize, help="none | int8 | fp8 | fp8_tensor")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--robots", type=int, nargs="+", default=list(d.robots))
    p.add_argument("--modes", nargs="+", default=list(d.modes), choices=MODES)
    p.add_argument("--process-max", type=int, default=d.process_max, help="processes mode: the largest N")
    p.add_argument("--duration-s", type=float, default=d.duration_s)
    p.add_argument("--settle-s", type=float, default=d.settle_s)
    p.add_argument("--camera-hz", type=float, default=d.camera_hz)
    p.add_argument("--control-hz", type=float, default=d.control_hz)
    p.add_argument("--decode-deadline-s", type=float, default=d.decode_deadline_s, help="0: chunk / control_hz")
    p.add_argument("--chunk-size-threshold", type=float, default=d.chunk_size_threshold, help="1: every image")
    p.add_argument("--chunk-start", default=d.chunk_start, choices=("arrival", "observation"))
    p.add_argument("--gather-s", type=float, default=d.gather_s)
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="0: N")
    p.add_argument("--batch-padding", default=d.batch_padding, choices=PADDINGS)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--switch-interval-s", type=float, default=d.switch_interval_s)
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("-v", "--verbose", action="store_true", help="the runners' logs too")
    a = vars(p.parse_args(argv))
    a["robots"], a["modes"] = tuple(a["robots"]), tuple(a["modes"])
    return FleetBenchConfig(**a)


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker"]:  # a process of the `processes` mode
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        worker(json.loads(args[1]))
        return
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not cfg.verbose:
        for name in ("ros_nodes", f"{log.name}.robots"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run(cfg)


if __name__ == "__main__":
    main()
