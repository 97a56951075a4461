"""The policy runner's /diagnostics status: publish rate, decode latency, iterations, watchdog, and
the level and message that say what is wrong.

Stall detection: while images arrive and no chunk has finished for longer than `decode_deadline_s`,
the status says WARN (ERROR after `STALL_ERROR_FACTOR` times that). `RunnerStatus` is a part of
`ros_nodes.runner.PolicyRunner`, which sets the state these methods use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ee_vla.streaming import ChunkSchedule
from ros_nodes.diagnostics import ERROR, OK, WARN, RateMonitor, Status, Window, fmt
from ros_nodes.params import PolicyParams
from ros_nodes.runner_types import State
from ros_nodes.safety import Watchdog


class RunnerStatus:
    """Diagnostics part of `PolicyRunner`."""

    # set by PolicyRunner.__init__
    params: PolicyParams
    clock: Callable[[], float]
    state: State
    watchdog: Watchdog
    schedule: ChunkSchedule | None
    rate: RateMonitor
    first_action_latency: Window
    decode_latency: Window
    iterations: Window
    chunks_done: int
    chunks_dropped: int
    deadline_misses: int
    model_errors: int
    last_error: str
    last_bad_input: str
    images_received: int
    cameras: tuple[str, ...]
    camera_topics: dict[str, str]
    camera_images_received: dict[str, int]
    _lock: threading.Lock
    _fault: str | None
    _inflight: tuple[int, float, bool] | None
    _last_bad_t: float

    if TYPE_CHECKING:

        def _stall(self, now: float) -> float | None: ...  # RunnerDecode

        def bad_inputs(self) -> int: ...  # RunnerInputs

    STALL_ERROR_FACTOR = 5.0
    """/diagnostics goes from WARN to ERROR when no chunk has finished for this many times
    `decode_deadline_s` while images arrive."""

    def status(self, now: float | None = None, name: str = "ee_vla: policy node") -> Status:
        """The node's DiagnosticStatus: publish rate, decode latency p50/p95, iterations, watchdog."""
        now = self.clock() if now is None else now
        p = self.params
        stalled = self._stall(now)
        wd = self.watchdog.state(now) if self.state == "active" else "inactive"
        rate = self.rate.rate(now)
        age = self.watchdog.age(now)
        values = self._status_values(rate, wd, age, stalled, now)
        level, message = self._status_level(now, rate, wd, age, stalled)
        return Status(level=level, name=name, message=message, hardware_id=p.model_path or "ee_vla", values=values)

    def _status_values(
        self, rate: float, wd: str, age: float | None, stalled: float | None, now: float | None = None
    ) -> dict[str, str]:
        """The status's key/values (all strings, as DiagnosticStatus carries them)."""
        p = self.params
        values = {
            "state": self.state,
            "dry_run": str(p.dry_run).lower(),
            "command_type": p.command_type,
            "command_topic": p.resolved_command_topic,
            "publish_rate_hz": f"{rate:.1f}",
            "target_rate_hz": f"{p.control_hz:.1f}",
            "commands_sent": str(self.rate.total),
            "decode_latency_p50_ms": fmt(self.decode_latency.percentile(50), 1e3),
            "decode_latency_p95_ms": fmt(self.decode_latency.percentile(95), 1e3),
            "decode_latency_p99_ms": fmt(self.decode_latency.percentile(99), 1e3),
            "first_action_latency_p50_ms": fmt(self.first_action_latency.percentile(50), 1e3),
            "first_action_latency_p95_ms": fmt(self.first_action_latency.percentile(95), 1e3),
            "iterations_per_chunk_mean": fmt(self.iterations.mean()),
            "iterations_per_chunk_last": fmt(self.iterations.last(), digits=0),
            "chunks_done": str(self.chunks_done),
            "chunks_dropped": str(self.chunks_dropped),
            "deadline_misses": str(self.deadline_misses),
            "watchdog": wd,
            "watchdog_trips": str(self.watchdog.trips),
            "image_age_ms": fmt(age, 1e3, 0),
            "images_received": str(self.images_received),
            "bad_inputs": str(self.bad_inputs()),
            "last_bad_input": self.last_bad_input,
            "model_errors": str(self.model_errors),
            "last_error": self.last_error,
            "no_chunk_for_s": fmt(stalled, digits=1),
        }
        if len(self.cameras) > 1:  # each camera's own, beside the whole observation's
            ages = self.watchdog.ages(now)
            for c in self.cameras:
                values[f"image_age_ms_{c}"] = fmt(ages.get(c), 1e3, 0)
                values[f"images_received_{c}"] = str(self.camera_images_received.get(c, 0))
        if self.schedule is not None:
            for k, v in sorted(self.schedule.counts.items()):
                values[f"ticks_{k}"] = str(v)
        return values

    def _topics(self, cameras: list[str]) -> str:
        """The image topics of `cameras`, for a status message."""
        return ", ".join(self.camera_topics.get(c, c) for c in cameras)

    def _status_level(
        self, now: float, rate: float, wd: str, age: float | None, stalled: float | None
    ) -> tuple[int, str]:
        """The status's level and message: the most pressing of halt, stale input, stall and rate."""
        p = self.params
        level, message = OK, "commanding" if not p.dry_run else "dry run: logging commands"
        if self.state != "active":
            level, message = OK, self.state
        elif self._fault is not None:
            level, message = ERROR, f"halted: {self._fault}: {self.last_error}"
        elif wd == "stale":
            stale = self.watchdog.stale(now)
            ages = self.watchdog.ages(now)
            oldest = max((ages[c] for c in stale), default=None)  # type: ignore[type-var]
            level = WARN
            message = f"halted: no valid image for {fmt(oldest, digits=2)} s (> {p.image_timeout_s} s)"
            message += f" on {self._topics(stale)}"
            waiting = self.watchdog.waiting(now)
            if waiting:
                message += f"; waiting for images on {self._topics(waiting)}"
        elif wd == "waiting":
            level, message = WARN, f"waiting for images on {self._topics(self.watchdog.waiting(now))}"
        elif stalled is not None:
            level = ERROR if stalled > self.STALL_ERROR_FACTOR * p.decode_deadline_s else WARN
            with self._lock:
                inflight = self._inflight
            why = (
                f"decoding chunk {inflight[0]} for {now - inflight[1]:.1f} s"
                if inflight is not None
                else f"last bad input: {self.last_bad_input}"
                if self._last_bad_t >= now - stalled
                else "no decode running"
            )
            message = f"no chunk finished for {stalled:.1f} s (decode_deadline_s={p.decode_deadline_s}): {why}"
        elif self.rate.total > 1 and rate < 0.9 * p.control_hz and p.command_type != "trajectory":
            level, message = WARN, f"publish rate {rate:.1f} Hz below target {p.control_hz:.1f} Hz"
        return level, message
