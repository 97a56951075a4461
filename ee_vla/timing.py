"""The one timing utility of ee_vla: warm-up, device-synchronised timing, percentiles, environment.

Latency numbers are only comparable when they are taken the same way, so every benchmark and the
evaluation entry point time through this module (nanoGPT bench.py pattern):

    rec = time_call(lambda: policy.predict_action_chunk(obs), warmup=3, iters=50, device="cuda")
    rec.summary_ms()  # {"n": 50, "mean": ..., "p50": ..., "p95": ..., "p99": ..., "min": ..., "max": ...}

    rec = LatencyRecorder()
    with rec.time(device):  # synchronises the device before and after the timed region
        policy.predict_action_chunk(obs)

CUDA kernels run asynchronously: without `torch.cuda.synchronize()` on both sides of the timed region
a timer measures kernel *launches*, not the work. `environment_info` records what the numbers were
measured on (device name, dtype, library versions) so that a result file can be read on its own.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ee_vla.threads import available_cores

PERCENTILES: tuple[int, ...] = (50, 95, 99)
"""Percentiles every latency summary reports."""

LIBRARIES: tuple[str, ...] = ("ee_vla", "torch", "transformers", "numpy", "gymnasium", "mujoco", "metaworld")
"""Distributions whose versions `environment_info` records (absent ones are reported as None)."""


def synchronize(device: Any = None) -> None:
    """Wait for all queued work on `device` (a no-op on CPU and for None)."""
    if device is None:
        return
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)
    elif dev.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()
    elif dev.type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.synchronize(dev)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50/p95/p99 (linear interpolation, numpy's default), min and max of `values`.

    An empty input gives n=0 and NaN statistics (a run that decoded nothing), never an exception.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, **{f"p{p}": nan for p in PERCENTILES}, "min": nan, "max": nan}
    out: dict[str, float] = {"n": int(x.size), "mean": float(x.mean())}
    for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES), strict=True):
        out[f"p{p}"] = float(v)
    out["min"], out["max"] = float(x.min()), float(x.max())
    return out


class LatencyRecorder:
    """Collects durations in seconds and summarises them as percentiles (in s or ms)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def __len__(self) -> int:
        return len(self.samples)

    def add(self, seconds: float) -> None:
        """Record one duration (seconds, finite and >= 0)."""
        s = float(seconds)
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"a duration must be finite and >= 0 seconds, got {seconds!r}")
        self.samples.append(s)

    def extend(self, seconds: Sequence[float]) -> None:
        for s in seconds:
            self.add(s)

    @property
    def total(self) -> float:
        """Sum of the recorded durations (seconds)."""
        return float(sum(self.samples))

    @contextmanager
    def time(self, device: Any = None) -> Iterator[None]:
        """Time the body of a `with` block, synchronising `device` before and after it."""
        synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.add(time.perf_counter() - t0)

    def summary(self) -> dict[str, float]:
        """Statistics in seconds (see `summarize`)."""
        return summarize(self.samples)

    def summary_ms(self) -> dict[str, float]:
        """Statistics in milliseconds (`n` stays a count)."""
        s = self.summary()
        return {k: (v if k == "n" else v * 1e3) for k, v in s.items()}


def time_call(fn: Callable[[], Any], warmup: int = 1, iters: int = 10, device: Any = None) -> LatencyRecorder:
    """Call `fn` `warmup` times untimed (compilation, caches, allocator), then `iters` times timed
    with the device synchronised around each call; returns the recorder."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    rec = LatencyRecorder()
    for _ in range(iters):
        with rec.time(device):
            fn()
    return rec


def capture_cuda_graph(calls: Sequence[Callable[[], Any]]):
    """`calls`, one after another, captured as one `torch.cuda.CUDAGraph` after one untimed pass on
    a side stream (PyTorch's recipe: allocator and library initialisation stay out of the graph).
    For timing a sequence of kernels without the host's launches between them
    (`cuda_ms_back_to_back(graph.replay, iters)`)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph


def cuda_ms_back_to_back(fn: Callable[[], Any], iters: int) -> float:
    """Device time of one call of `fn`, in ms, on the current CUDA stream: one untimed call, then
    `iters` calls back to back between two CUDA events, with no host synchronisation between them
    (for a CUDA-graph replay: the graph's own time, without the host's work around a call)."""
    import torch

    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def device_name(device: Any = "cpu") -> str:
    """Human-readable name of the accelerator (e.g. "NVIDIA H100 80GB HBM3") or of the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of `names` (None for those not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment_info(device: Any = "cpu", dtype: str | None = None) -> dict[str, Any]:
    """What a timing was measured on: device and its name, dtype, CPU threads, Python, platform,
    library versions (and CUDA/cuDNN versions on CUDA devices)."""
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {
        "device": str(dev),
        "device_name": device_name(dev),
        "dtype": dtype,
        "torch_num_threads": torch.get_num_threads(),
        "cores_available": available_cores(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info
