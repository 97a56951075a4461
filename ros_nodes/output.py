"""Turning the runner's `Emit`s into published messages, or into log lines in dry-run mode.

Shared by both transports so "dry run" means the same thing everywhere: the full pipeline runs and
the publish-rate monitor counts, but nothing leaves the process; the would-be commands are logged
(throttled, so a 200 Hz loop does not flood the console).

`CommandSink` also orders the output: the control tick (a timer thread) and the stop path
(deactivate, cleanup, shutdown, a signal; another thread) publish under one lock, and `stop()`
latches, so the stop command is the last message published until `activate()`.

Switching `dry_run` on while commands are going out (`ros2 param set ... dry_run true`) publishes
one stop command before going quiet: a controller that holds its last command (a
forward_command_controller) must not be left executing a motion nobody sends any more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ros_nodes.messages import build_command
from ros_nodes.runner import Emit, PolicyRunner


class CommandSink:
    """Build and publish (or log) commands for a runner, in a guaranteed order.

    `tick()` asks the runner for the due command and publishes it while holding the output lock;
    `stop()` deactivates the runner and publishes its stop command under the same lock, then
    latches: later ticks (one already waiting for the lock included) and `send()` calls publish
    nothing but stop commands until `activate()`. So after a deactivation the stop command is the
    last message on the topic, whichever thread the timer runs on.

    Args:
        runner: whose params (command_type, dry_run, scales...) and statistics are used.
        m: message namespace (`ros_nodes.dds.msgs` or the rclpy one).
        publish: sends one message (a DDS writer's write, an rclpy publisher's publish).
        stamp: current (sec, nanosec) for headers (ROS time or wall time).
        dry_log_period_s: at most one dry-run log line per period (stops are always logged).
    """

    def __init__(
        self,
        runner: PolicyRunner,
        m: Any,
        publish: Callable[[Any], None],
        stamp: Callable[[], tuple[int, int]],
        logger: logging.Logger | None = None,
        dry_log_period_s: float = 1.0,
    ):
        self.runner = runner
        self.m = m
        self.publish = publish
        self.stamp = stamp
        self.log = logger or logging.getLogger(__name__)
        self.dry_log_period_s = dry_log_period_s
        self._last_dry_log = float("-inf")
        self.published = 0
        self.suppressed = 0
        self.after_stop = 0
        """Commands not published because they came after the stop command (counted, dropped)."""
        self._lock = threading.RLock()
        self._stopped = False
        self._moving = False
        """The last message published (not logged) was a command other than a stop command."""

    @property
    def stopped(self) -> bool:
        """True from `stop()` until `activate()`."""
        return self._stopped

    def activate(self) -> None:
        """Activate the runner and let ticks publish again."""
        with self._lock:
            self.runner.activate()
            self._stopped = False

    def stop(self) -> bool:
        """Deactivate the runner (if active) and publish its stop command, as the last message.

        Safe from any thread and in any state; True when a stop command was sent (False: the
        runner was not active, or had sent nothing that needs stopping)."""
        with self._lock:
            self._stopped = True
            if self.runner.state != "active":
                return False
            return self._send(self.runner.deactivate())

    def send(self, emit: Emit | None) -> bool:
        """Send one Emit; True when a message was published (or would have been, in dry run).
        After `stop()` only stop commands go out; other emits are dropped and counted."""
        with self._lock:
            if self._stopped and emit is not None and emit.kind != "stop":
                self.after_stop += 1
                return False
            return self._send(emit)

    def _send(self, emit: Emit | None) -> bool:
        params = self.runner.params
        if params.dry_run and self._moving and self._publish_stop_going_dry(emit):
            return True  # `emit` was the stop command: published, not logged
        if emit is None:
            return False
        msg = build_command(self.m, emit, params, self.stamp())
        if msg is None:
            return False
        if params.dry_run:
            now = time.monotonic()
            if emit.kind == "stop" or now - self._last_dry_log >= self.dry_log_period_s:
                self._last_dry_log = now
                self.log.info(
                    "DRY RUN (not published to %s): %s %s from %s%s",
                    params.resolved_command_topic,
                    emit.kind,
                    np.array2string(np.asarray(emit.actions), precision=3, suppress_small=True, max_line_width=200),
                    emit.source,
                    f", {self.suppressed} more since last line" if self.suppressed else "",
                )
                self.suppressed = 0
            else:
                self.suppressed += 1
        else:
            self.publish(msg)
            self.published += 1
            self._moving = emit.kind != "stop"
        self.runner.record_sent()
        return True

    def _publish_stop_going_dry(self, emit: Emit | None) -> bool:
        """dry_run was switched on after published commands: publish one stop command (`emit` when it
        is one, else the runner's) for real. True when `emit` was that stop command."""
        self._moving = False
        own = emit is not None and emit.kind == "stop"
        # Built before `emit` is recorded as sent: keep_dims_on_zero keeps the last published values.
        stop = emit if own else self.runner._stop_emit("dry_run switched on")
        msg = None if stop is None else build_command(self.m, stop, self.runner.params, self.stamp())
        if msg is not None:
            self.publish(msg)
            self.published += 1
            self.log.warning(
                "dry_run switched on while commanding: stop command published to %s; commands are logged from now on",
                self.runner.params.resolved_command_topic,
            )
        if own:
            self.runner.record_sent()
        return own and msg is not None

    def tick(self) -> bool:
        """One control period: ask the runner what is due and send it (nothing after `stop()`)."""
        with self._lock:
            if self._stopped:
                return False
            return self._send(self.runner.tick())
