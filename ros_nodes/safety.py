"""Safety pieces shared by every transport: clipping, the stale-input watchdog, once-per-cause logs.

None of these know about ROS. The clock is injected so the logic is tested with a fake clock.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class BadInputError(ValueError):
    """A policy refused its observation (e.g. an instruction over its token cap): the runner counts it
    as bad input, not as a model error. `ee_vla.policy.ObservationError` is treated the same way."""


class ActionLimits:
    """Per-dimension [low, high] box every outgoing action is clipped to.

    A non-finite action is never clipped into range (NaN would pass `np.clip`): `clip` returns None
    and the caller sends nothing.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float]):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(
                f"limits must be two 1-D sequences of one length, got {self.low.shape} and {self.high.shape}"
            )
        if np.any(self.low > self.high):
            raise ValueError(f"low > high at dims {np.flatnonzero(self.low > self.high).tolist()}")

    @property
    def dim(self) -> int:
        return int(self.low.size)

    def check_dim(self, action_dim: int) -> None:
        """Raise when the limits do not cover exactly the policy's action dims."""
        if action_dim != self.dim:
            raise ValueError(
                f"action_low/action_high have {self.dim} values but the policy outputs {action_dim}-dim actions"
            )

    def clip(self, action: np.ndarray) -> np.ndarray | None:
        """The action clipped into the box (last axis = dims); None if it has NaN/inf or the wrong size."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape[-1:] != (self.dim,) or not np.isfinite(a).all():
            return None
        return np.clip(a, self.low, self.high)


class Watchdog:
    """Stale-input watchdog over one or more named inputs (a policy's cameras) with one timeout:
    `ok` while the last valid input of every one is younger than `timeout_s`.

    States: ``waiting`` (an input has had nothing since reset, and none is stale), ``ok``,
    ``stale`` (an input's last valid value is older than `timeout_s`). `stale(now)` and
    `waiting(now)` name the inputs behind those states.
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.perf_counter, inputs: Sequence[str] = ("",)):
        if not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.clock = clock
        self.trips = 0
        self._was_stale = False
        self._last: dict[str, float | None] = {}
        self.watch(inputs)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The inputs watched (the first is the default of `feed`)."""
        return tuple(self._last)

    def watch(self, inputs: Sequence[str]) -> None:
        """Watch `inputs` from now on, none of them received yet."""
        if not inputs:
            raise ValueError("a watchdog needs at least one input to watch")
        self._last = dict.fromkeys(inputs)
        self._was_stale = False

    def feed(self, now: float | None = None, name: str | None = None) -> None:
        """Record a valid value of input `name` (default: the first input); one not watched is ignored."""
        key = self.inputs[0] if name is None else name
        if key not in self._last:
            return
        t = self.clock() if now is None else now
        self._last[key] = t
        if not self.stale(t):
            self._was_stale = False

    def reset(self) -> None:
        self._last = dict.fromkeys(self._last)
        self._was_stale = False

    def ages(self, now: float | None = None) -> dict[str, float | None]:
        """Seconds since each input's last valid value (None: none yet)."""
        now = self.clock() if now is None else now
        return {k: None if t is None else now - t for k, t in self._last.items()}

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest of the inputs' last valid values (None while one has had none)."""
        ages = self.ages(now).values()
        return None if any(a is None for a in ages) else max(ages)  # type: ignore[type-var]

    def stale(self, now: float | None = None) -> list[str]:
        """The inputs whose last valid value is older than `timeout_s`."""
        return [k for k, a in self.ages(now).items() if a is not None and a > self.timeout_s]

    def waiting(self, now: float | None = None) -> list[str]:
        """The inputs that have had no valid value since reset."""
        return [k for k, t in self._last.items() if t is None]

    def state(self, now: float | None = None) -> str:
        """waiting | ok | stale (counting each transition into stale in `trips`)."""
        if self.stale(now):
            if not self._was_stale:
                self._was_stale = True
                self.trips += 1
            return "stale"
        if self.waiting(now):
            return "waiting"
        return "ok"


@dataclass
class _Cause:
    count: int = 0
    last_logged: float = float("-inf")
    suppressed: int = 0


class CauseLog:
    """Log each distinct cause once, then at most once per `period_s` with a count of repeats.

    Bad inputs arrive at camera rate; logging each would flood the console and hide the first,
    useful, message. `counts` keeps the per-cause totals for diagnostics.

    Causes are meant to be short keys from a fixed set (``image:encoding``, never the bad value
    itself). As a backstop against a caller keying on sender text, at most `max_causes` distinct
    keys are kept; occurrences of any further key are counted and logged under `OVERFLOW`.
    """

    OVERFLOW = "other"
    """The key that collects causes beyond `max_causes`."""

    def __init__(
        self,
        logger: logging.Logger,
        period_s: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
        max_causes: int = 256,
    ):
        if max_causes < 1:
            raise ValueError(f"CauseLog.max_causes: must be >= 1, got {max_causes}")
        self.logger = logger
        self.period_s = period_s
        self.clock = clock
        self.max_causes = max_causes
        self._causes: dict[str, _Cause] = {}
        self._lock = threading.Lock()

    def log(self, cause: str, message: str, level: int = logging.WARNING) -> bool:
        """Record one occurrence of `cause`; returns True when it was actually logged."""
        now = self.clock()
        with self._lock:
            c = self._causes.get(cause)
            if c is None:
                if len(self._causes) >= self.max_causes:
                    cause = self.OVERFLOW
                c = self._causes.setdefault(cause, _Cause())
            c.count += 1
            if now - c.last_logged < self.period_s:
                c.suppressed += 1
                return False
            repeats = c.suppressed
            c.suppressed = 0
            c.last_logged = now
        suffix = f" (repeated {repeats} more times since last logged)" if repeats else ""
        self.logger.log(level, "%s%s", message, suffix)
        return True

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: c.count for k, c in self._causes.items()}

    def total(self) -> int:
        with self._lock:
            return sum(c.count for c in self._causes.values())


def is_bad_input(error: BaseException) -> bool:
    """Whether a policy exception is about its input (`ee_vla.policy.ObservationError`, or a
    `BadInputError` such as the policy process's) rather than a failing model."""
    if isinstance(error, BadInputError):
        return True
    policy_mod = sys.modules.get("ee_vla.policy")  # never imported here: torch stays out of the runner
    return policy_mod is not None and isinstance(error, policy_mod.ObservationError)


class ShutdownSignals:
    """SIGINT and SIGTERM set `event` instead of interrupting (main thread only); on exit the
    handlers are restored unless one of them was received.

    Both signals end the same way: the loop sees the event, then the node's shutdown (the stop
    command, cleanup) runs to the end. `systemctl stop`, `kill` and `ros2 launch`'s escalation send
    SIGTERM, Ctrl-C sends SIGINT.

    Args:
        event: the event to set (a new one when None), e.g. the stop event of a serve loop.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event if event is not None else threading.Event()
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self.event.set()

    def __enter__(self) -> ShutdownSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        # After a shutdown signal the process is on its way out: a later SIGINT/SIGTERM (a second
        # Ctrl-C, launch's escalation arriving late) must not kill it mid-exit with a traceback or
        # a signal status. Without one, the previous handlers come back.
        for sig, handler in self._old.items():
            signal.signal(sig, signal.SIG_IGN if self.received else handler)
