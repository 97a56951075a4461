"""A drift-free periodic loop for the DDS transports (what an rclpy timer is for the ROS ones).

Ticks are scheduled on an absolute grid (t0 + n * period) so lateness does not accumulate; when a
tick is more than one period late the missed ones are skipped (a controller wants the newest
command, not a burst of stale ones) and counted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


class PeriodicThread:
    """Call `fn()` every `period_s` on a dedicated thread until `stop()`."""

    def __init__(
        self,
        period_s: float,
        fn: Callable[[], object],
        name: str = "periodic",
        clock: Callable[[], float] = time.perf_counter,
        rt_priority: int = 0,
    ):
        """`rt_priority` > 0 runs the thread SCHED_FIFO at that priority (Linux, needs CAP_SYS_NICE or
        an rtprio limit): what a robot computer does for its control loops; refused -> a warning."""
        if not period_s > 0:
            raise ValueError(f"period must be > 0, got {period_s}")
        self.period_s = period_s
        self.fn = fn
        self.clock = clock
        self.skipped = 0
        self.ticks = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.rt_priority = rt_priority
        self.rt_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PeriodicThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.rt_priority:
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(self.rt_priority))
            except (AttributeError, OSError) as e:
                self.rt_error = str(e)
        period = self.period_s
        next_t = self.clock() + period
        while not self._stop.is_set():
            delay = next_t - self.clock()
            if delay > 0:
                time.sleep(delay)  # finer than Event.wait; stop() is seen within one period
                if self._stop.is_set():
                    return
            try:
                self.fn()
            except Exception as e:  # noqa: BLE001 - a tick must never kill the loop; counted and reported
                self.errors += 1
                self.last_error = e
            self.ticks += 1
            next_t += period
            late = self.clock() - next_t
            if late > period:
                missed = int(late // period)
                self.skipped += missed
                next_t += missed * period
