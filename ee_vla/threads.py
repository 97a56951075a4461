"""CPU threads for inference and training: how many, and that idle ones sleep.

torch's defaults suit a machine that runs nothing else: one intra-op thread per core, and OpenMP
worker threads that busy-wait (spin) between parallel regions. On a robot computer or a shared
workstation other processes compete for the same cores (MuJoCo's software renderer, env workers, a
camera driver, ROS). A spinning thread then takes a core from them, and a parallel region waits for
its slowest thread, which the scheduler may have parked: one competing CPU-bound process can make
a decode call several times slower (docs/performance.md, "CPU threads", measures it).

So ee_vla does two things:

* `quiet_waiting()` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep) unless the user set
  it. OpenMP reads it once, when torch loads it, so it runs on `import ee_vla`, before torch.
* `configure_threads(threads, reserve)` gives torch `threads` intra-op threads, or, with 0 (auto),
  the cores this process may run on (`os.sched_getaffinity` and the cgroup CPU quota) minus
  `reserve`, at least 1. Inference reserves one core for the rest of the loop (env stepping and
  rendering, the control timer, the transport), training the data-loader workers.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

INFERENCE_RESERVE = 1
"""Cores left to the rest of a control or evaluation loop when decoding picks its threads."""

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quiet_waiting() -> None:
    """Make idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    variable is set already. Only takes effect in a process that has not loaded torch yet; child
    processes inherit it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cgroup_cpus(path: Path = _CGROUP_CPU_MAX) -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``) in cores, or None when unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def resolve_threads(threads: int = 0, reserve: int = INFERENCE_RESERVE, cores: int | None = None) -> int:
    """The intra-op thread count to use: `threads` when > 0, else the available cores minus
    `reserve`, at least 1."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {threads}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    if threads > 0:
        return threads
    cores = available_cores() if cores is None else cores
    return max(1, cores - reserve)


def configure_threads(threads: int = 0, reserve: int = INFERENCE_RESERVE) -> int:
    """Set torch's intra-op threads (see `resolve_threads`) and one inter-op thread; returns the
    intra-op count. Imports torch."""
    import torch

    n = resolve_threads(threads, reserve)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        # ee_vla runs no independent ops in parallel; inter-op threads would only compete. torch
        # refuses to change this once inter-op work has started: then the existing pool stays.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    log.debug("torch CPU threads: %d intra-op (of %d cores available)", n, available_cores())
    return n
