"""Timed action streaming: turning streamed chunks into the action a controller executes now.

A decoder streams a chunk of `k` actions one at a time, each the moment its tokens are final
(`StreamedAction`). `ChunkSchedule` places chunk `c`'s action `i` at execution time
`t0_c + i * dt` (`dt = 1 / control_hz`), where `t0_c` is the time the chunk's first action arrived
(`chunk_start="arrival"`), or the time of the observation it was decoded from
(`chunk_start="observation"`: action `i` was planned for `i` periods after that observation, so the
actions whose time passed while the chunk decoded are skipped), and answers one question at every
control tick: which action is due now?

What happens when chunks overlap or run out is configuration (`ScheduleConfig`):

* a new chunk arriving while the previous one still has actions queued (`on_new_chunk`):
  ``replace`` drops the rest of the old chunk, ``hold`` finishes the old chunk first (the new one
  starts where the old one ends), ``blend`` averages the two where they overlap with an
  exponential weight favouring the newer chunk (ACT-style temporal ensembling);
* an action whose slot has come but whose tokens are not final yet is late: the schedule repeats
  the previous command (``late`` source) and `deadline(i)` told the decoder, in advance, when it
  should have early-exited that action;
* nothing left to execute (`on_empty`): ``hold`` repeats the last command, ``zero`` sends zeros
  (dims listed in `keep_dims_on_zero`, e.g. the gripper, keep their last value).

The clock is injected (`clock=time.monotonic` by default) so everything here is testable with a
fake clock, and the class is thread-safe: a decoding worker pushes while a timer thread ticks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class StreamedAction:
    """One action of a chunk, emitted as soon as all its tokens were final.

    Attributes:
        index: position of the action in its chunk (0-based).
        action: the (action_dim,) float action (or (batch, action_dim) for batched decoding).
        tokens: the action's token ids.
        t: clock time at which the action became available.
        exact: False when an early exit (cap, tau, deadline) released it before exact convergence.
        iteration: the decoding iteration after which it became final (0 = the prefill).
    """

    index: int
    action: np.ndarray
    tokens: np.ndarray
    t: float
    exact: bool
    iteration: int


@dataclass
class ScheduleConfig:
    """How streamed chunks map onto control ticks."""

    control_hz: float = 20.0
    """Rate at which actions are executed (one action per 1/control_hz seconds)."""
    on_new_chunk: Literal["replace", "blend", "hold"] = "replace"
    """What a new chunk does to the queued rest of the previous one."""
    chunk_start: Literal["arrival", "observation"] = "arrival"
    """When a chunk's action 0 is due: when it arrives, or at the time of the observation the chunk
    was decoded from (`begin_chunk(observed_at=...)`), so that each action runs at the time it was
    planned for and those already past when the chunk arrives are skipped. `observation` does not
    combine with `on_new_chunk="hold"`, which starts a chunk when the previous one ends."""
    blend_decay: float = 0.5
    """`blend` only: weight of the older chunk relative to the newer, per chunk of age (0..1)."""
    on_empty: Literal["hold", "zero"] = "hold"
    """What is sent when no action is queued: repeat the last command, or zeros."""
    keep_dims_on_zero: tuple[int, ...] = ()
    """`zero` only: dims that keep their last value (e.g. (6,) for an absolute gripper command)."""
    max_hold_s: float = float("inf")
    """After this long without a fresh action, `hold` turns into `zero` (a stale-plan guard)."""

    def __post_init__(self) -> None:
        if not (self.control_hz > 0 and np.isfinite(self.control_hz)):
            raise ValueError(f"ScheduleConfig.control_hz must be a positive number, got {self.control_hz}")
        if self.on_new_chunk not in ("replace", "blend", "hold"):
            raise ValueError(f"ScheduleConfig.on_new_chunk must be replace|blend|hold, got {self.on_new_chunk!r}")
        if self.chunk_start not in ("arrival", "observation"):
            raise ValueError(f"ScheduleConfig.chunk_start must be arrival|observation, got {self.chunk_start!r}")
        if self.chunk_start == "observation" and self.on_new_chunk == "hold":
            raise ValueError(
                "ScheduleConfig.chunk_start='observation' places a chunk at its observation's time, "
                "on_new_chunk='hold' after the previous chunk: use replace or blend with it, or hold with "
                "chunk_start='arrival'"
            )
        if self.on_empty not in ("hold", "zero"):
            raise ValueError(f"ScheduleConfig.on_empty must be hold|zero, got {self.on_empty!r}")
        if not 0.0 <= self.blend_decay <= 1.0:
            raise ValueError(f"ScheduleConfig.blend_decay must be in [0, 1], got {self.blend_decay}")
        if self.max_hold_s <= 0:
            raise ValueError(f"ScheduleConfig.max_hold_s must be > 0, got {self.max_hold_s}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


@dataclass(frozen=True)
class Command:
    """What the controller should execute at one tick.

    `source` is ``chunk`` (a fresh action), ``blend`` (a fresh action averaged with an older
    chunk's), ``late`` (the due action is not final yet: previous command repeated), ``hold``
    (queue empty: previous command repeated), ``zero`` (queue empty: zeros), or ``none`` (nothing
    was ever received: `action` is None and nothing should be sent).
    """

    action: np.ndarray | None
    source: str
    chunk_id: int | None = None
    index: int | None = None


@dataclass
class _Chunk:
    chunk_id: int
    length: int | None
    t0: float | None = None
    observed_at: float | None = None
    actions: dict[int, np.ndarray] = field(default_factory=dict)

    def slot(self, now: float, dt: float) -> int:
        return int(np.floor((now - self.t0) / dt + 1e-9))

    def end(self, dt: float) -> float:
        return self.t0 + self.length * dt


class ChunkSchedule:
    """Thread-safe mapping from streamed chunks to the action due at each control tick.

    Usage: the decoding side calls `begin_chunk(chunk_id, length)` then `push(chunk_id, a)` for
    each `StreamedAction`; the control loop calls `tick()` once per period and sends
    `Command.action`. `deadline(chunk_id, i)` is when action `i` must be final to be on time
    (None before the chunk's first action arrived).
    """

    def __init__(self, config: ScheduleConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config or ScheduleConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []
        self._last: np.ndarray | None = None
        self._last_fresh_t: float | None = None
        self.counts: dict[str, int] = {}

    # ---- producer side --------------------------------------------------------------------
    def begin_chunk(self, chunk_id: int, length: int, observed_at: float | None = None) -> None:
        """Announce a chunk of `length` actions decoded from an observation made at clock time
        `observed_at` (its start time is set by its first action: that action's arrival, or
        `observed_at` with `chunk_start="observation"`, which needs it)."""
        if length <= 0:
            raise ValueError(f"chunk length must be positive, got {length}")
        if self.config.chunk_start == "observation" and observed_at is None:
            raise ValueError("ScheduleConfig.chunk_start='observation' needs begin_chunk(observed_at=...)")
        with self._lock:
            self._chunks.append(_Chunk(chunk_id, length, observed_at=observed_at))

    def push(self, chunk_id: int, action: StreamedAction) -> None:
        """Add a streamed action of an announced chunk."""
        a = np.asarray(action.action, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"chunk {chunk_id} action {action.index} contains NaN or inf")
        with self._lock:
            ch = self._find(chunk_id)
            if action.index >= ch.length or action.index < 0:
                raise ValueError(f"action index {action.index} outside chunk {chunk_id} of length {ch.length}")
            if ch.t0 is None:
                ch.t0 = self._start_time(ch, action.t)
            ch.actions[action.index] = a

    def deadline(self, chunk_id: int, index: int) -> float | None:
        """Clock time at which action `index` of the chunk is due (None if not yet scheduled)."""
        with self._lock:
            ch = self._find(chunk_id)
            return None if ch.t0 is None else ch.t0 + index * self.config.dt

    def _find(self, chunk_id: int) -> _Chunk:
        for ch in reversed(self._chunks):
            if ch.chunk_id == chunk_id:
                return ch
        raise KeyError(f"chunk {chunk_id} was not announced with begin_chunk()")

    def _start_time(self, ch: _Chunk, t_ready: float) -> float:
        """When a chunk whose first action is ready at t_ready starts executing."""
        dt = self.config.dt
        if self.config.chunk_start == "observation" and ch.observed_at is not None:
            return min(ch.observed_at, t_ready)  # a clock skew never starts it in the future
        if self.config.on_new_chunk == "hold":
            prev = [c for c in self._chunks if c is not ch and c.t0 is not None]
            if prev:
                return max(t_ready, max(c.end(dt) for c in prev))
        return t_ready

    def planned_until(self) -> float | None:
        """Clock time at which the last scheduled action's slot ends (None before any chunk has
        started): how long the actions already planned last, whether or not they are all final."""
        with self._lock:
            dt = self.config.dt
            ends = [c.end(dt) for c in self._chunks if c.t0 is not None and c.length]
            return max(ends) if ends else None

    # ---- consumer side --------------------------------------------------------------------
    def tick(self, now: float | None = None) -> Command:
        """The command due at `now` (default: the clock's time)."""
        now = self.clock() if now is None else now
        with self._lock:
            cmd = self._due(now)
            if cmd.source in ("chunk", "blend"):
                self._last = cmd.action
                self._last_fresh_t = now
            self.counts[cmd.source] = self.counts.get(cmd.source, 0) + 1
            return cmd

    def _active(self, now: float) -> list[_Chunk]:
        dt = self.config.dt
        started = [c for c in self._chunks if c.t0 is not None and c.t0 <= now + 1e-9]
        live = [c for c in started if now < c.end(dt) - 1e-9]
        # Forget chunks that are over, and (replace) chunks superseded by a newer started one.
        if started and self.config.on_new_chunk == "replace":
            live = [c for c in live if c is started[-1]]
        keep = [c for c in self._chunks if c.t0 is None or c in live or c.t0 > now + 1e-9]
        self._chunks = keep
        return live

    def _due(self, now: float) -> Command:
        cfg = self.config
        live = self._active(now)
        if live:
            newest = live[-1]
            i = newest.slot(now, cfg.dt)
            a = newest.actions.get(i)
            if a is None:
                return Command(self._last, "late" if self._last is not None else "none", newest.chunk_id, i)
            if cfg.on_new_chunk == "blend" and len(live) > 1:
                weights, acts = [1.0], [a]
                for age, old in enumerate(reversed(live[:-1]), start=1):
                    b = old.actions.get(old.slot(now, cfg.dt))
                    if b is not None:
                        weights.append(cfg.blend_decay**age)
                        acts.append(b)
                if len(acts) > 1:
                    w = np.asarray(weights) / np.sum(weights)
                    return Command(np.tensordot(w, np.stack(acts), axes=1), "blend", newest.chunk_id, i)
            return Command(a, "chunk", newest.chunk_id, i)
        if self._last is None:
            return Command(None, "none")
        stale = self._last_fresh_t is not None and now - self._last_fresh_t > cfg.max_hold_s
        if cfg.on_empty == "zero" or stale:
            z = np.zeros_like(self._last)
            keep = list(cfg.keep_dims_on_zero)
            z[..., keep] = self._last[..., keep]
            return Command(z, "zero")
        return Command(self._last, "hold")

    def reset(self) -> None:
        """Forget all chunks and the last command (e.g. on deactivate or a new episode)."""
        with self._lock:
            self._chunks.clear()
            self._last = None
            self._last_fresh_t = None
