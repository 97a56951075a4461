"""Statistics the node reports on /diagnostics, and the transport-neutral status they go into.

`Status` mirrors diagnostic_msgs/DiagnosticStatus (level, name, message, hardware_id, key/values);
`ros_nodes.messages.build_diagnostics` turns a list of them into either transport's DiagnosticArray.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3
"""diagnostic_msgs/DiagnosticStatus levels."""


@dataclass
class Status:
    """One diagnostic_msgs/DiagnosticStatus, transport-neutral."""

    level: int
    name: str
    message: str
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)


class RateMonitor:
    """Events per second over a sliding window of event times (a publish-rate monitor)."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0

    def event(self, t: float) -> None:
        with self._lock:
            self._times.append(t)
            self.total += 1
            self._trim(t)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def rate(self, now: float) -> float:
        """Events per second in the window ending at `now` (0 with fewer than 2 events)."""
        with self._lock:
            self._trim(now)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = now - self._times[0]
            return (n - 1) / span if span > 0 else 0.0


class Window:
    """The last `size` samples of a quantity, with percentiles (latencies, iterations)."""

    def __init__(self, size: int = 200):
        self._v: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, v: float) -> None:
        with self._lock:
            self._v.append(float(v))
            self.count += 1

    def percentile(self, q: float) -> float | None:
        with self._lock:
            return float(np.percentile(np.fromiter(self._v, float), q)) if self._v else None

    def mean(self) -> float | None:
        with self._lock:
            return float(np.mean(np.fromiter(self._v, float))) if self._v else None

    def last(self) -> float | None:
        with self._lock:
            return self._v[-1] if self._v else None


def fmt(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """A diagnostics value string ('n/a' for missing)."""
    return "n/a" if v is None else f"{v * scale:.{digits}f}"
