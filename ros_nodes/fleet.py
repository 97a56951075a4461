"""One loaded policy serving many robots: their decode calls batched on one device.

    fleet = FleetPolicy(VLAPolicy.from_pretrained(path), FleetConfig(gather_s=0.005, max_batch=16))
    runners = {ns: PolicyRunner(params, policy_factory=lambda _p, ns=ns: fleet.robot(ns)) for ns in names}
    ...
    fleet.close()

Each robot gets a `RobotPolicy`, which is an `ActionChunkPolicy`: every robot keeps its own
`PolicyRunner` (timer, schedule, deadlines, safety, watchdog, diagnostics), unchanged. Behind them
one decode thread:

* gathers the pending calls: it waits from the oldest pending call's arrival for up to
  `FleetConfig.gather_s` for others to join, and starts at once when `max_batch` calls, or one call
  of every attached robot, are pending. Calls that arrive while a batch decodes wait for the next
  batch, so under load batches form without any window;
* runs ONE batched decode (`VLAPolicy` decodes (B, H, W, 3) images of each camera it reads with a
  list of instructions) of calls with the same image sizes (other sizes wait for the next batch);
* streams each row's actions to its robot as that row's tokens become final (the decode loop
  keeps a final-token count per row), not when the whole batch has them. A batch runs until its
  slowest row is done (rows that are done are masked, not removed); a robot whose row converged
  early has all its actions by then, but its next call waits for the next batch.

Per-robot state stays per robot. The warm start (`init="warm"`, CEED's default) guesses a chunk from
the robot's own previous chunk: the fleet keeps each robot's previous tokens, gives the batch a guess
row per robot (a row of -1: no guess, for a robot that has none yet) through
`VLAPolicy.warm_start_tokens`, and stores each row back after the decode. `RobotPolicy.reset()`
forgets only its own robot's chunk (a decode in flight for it when it resets is not stored). As
with one `VLAPolicy`, a call its runner stops reading (a dropped chunk, a halt) does not replace
the previous chunk.

Failures stay per robot. Each observation is validated on its own before it joins a batch: a bad
one fails only its robot's call (`ObservationError`, which its runner counts as a bad input). When
a batched decode raises anyway (non-finite logits of one row, out of memory), its rows are decoded
again one at a time, so the error reaches only the robot whose row causes it; actions a robot has
already received are not sent twice.

Deadlines: the decode loop takes one deadline per action index for the whole batch and, when it
passes, releases that action (as it stands, inexact) in every row that does not have it final yet.
The fleet gives it, for each action index, the EARLIEST deadline among the rows still waiting for
that action. No robot gets an action later than its own deadline allows (as far as the iteration
estimate of the loop holds, as for one robot); a row whose own deadline is later may get that
action released early, inexact, with the rest of its chunk decoded conditioned on it. Rows of one
batch start together (same prefill), so their deadlines are close unless their images waited
different times for the batch; a robot's call that waits in the queue spends its own
`decode_deadline_s`, which counts from its image. A call whose first action's deadline had already
passed when its batch started is late whatever the batch does (its runner drops a chunk whose
first action comes after `decode_deadline_s`): its row sets no deadline, so that it does not make
the other rows' actions inexact. The wall-clock budget of a call (`DecodeConfig.deadline_s`)
applies to each batch as a whole.

Static-shape engines (graph, static, compiled: an `EnginePool`, one engine per batch size) are
built per batch size, so batches are padded to a few fixed sizes (`FleetConfig.padding`: "pow2",
powers of two up to `max_batch` and `max_batch` itself; "step4", 1, 2, 4 and then every multiple of
4, so that a batch of 9 rows runs as 12, not 16; "auto" is pow2 for an engine pool and no padding
for the eager engine, which takes any size). A padding row repeats the first row (its
image, instruction and guess), so it converges with it and never makes a batch iterate longer;
padding rows are never streamed. `FleetPolicy.warm_up()` builds the engine of every padded size
(CUDA graphs, compilation) before robots connect.

The decode thread runs in the serving process (not a policy child process): on a GPU the kernels run
off the GIL; on a CPU the decoding holds it for long stretches.

`SharedFleet` gives one fleet to runners that configure at different times (the rclpy lifecycle
nodes of `policy_node --namespaces`): the first loads the policy, the last cleanup frees it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ee_vla.streaming import StreamedAction
from ros_nodes.diagnostics import Window

log = logging.getLogger(__name__)

__all__ = ["PADDINGS", "FleetConfig", "FleetPolicy", "RobotPolicy", "SharedFleet", "padded_sizes", "warmed_fleet"]

PADDINGS = ("auto", "pow2", "step4", "none")
"""`FleetConfig.padding` values (the `--batch-padding` choices)."""


@dataclass(frozen=True)
class FleetConfig:
    """How the fleet's decode thread forms batches."""

    gather_s: float = 0.005
    """How long the oldest pending call waits for others to join its batch (seconds). Longer: bigger
    batches, later first actions; 0: decode whatever is pending at once."""
    max_batch: int = 16
    """Most robots' calls in one batched decode (1: every call alone, one after another)."""
    padding: Literal["auto", "pow2", "step4", "none"] = "auto"
    """Batch sizes decoded: pow2 pads a batch to the next power of two (or `max_batch`), so a
    static-shape engine is built for a few sizes only; step4 to 1, 2, 4 or the next multiple of 4
    (more engines, less padding); none decodes the batch as it is; auto: pow2 for the
    static/graph/compiled engines, none for the eager one."""
    decode_nice: int = 0
    """Niceness of the decode thread (Linux, 0-19): the robots' control timers win a busy CPU."""

    def __post_init__(self) -> None:
        if not (isinstance(self.gather_s, (int, float)) and 0 <= self.gather_s <= 1.0):
            raise ValueError(f"FleetConfig.gather_s: must be in [0, 1] seconds, got {self.gather_s!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"FleetConfig.max_batch: must be an integer >= 1, got {self.max_batch!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"FleetConfig.padding: must be {'|'.join(PADDINGS)}, got {self.padding!r}")
        if (
            isinstance(self.decode_nice, bool)
            or not isinstance(self.decode_nice, int)
            or not 0 <= self.decode_nice <= 19
        ):
            raise ValueError(f"FleetConfig.decode_nice: must be an integer in [0, 19], got {self.decode_nice!r}")


def padded_sizes(max_batch: int, padding: str = "pow2") -> list[int]:
    """The batch sizes of `padding` below `max_batch`, then `max_batch`: pow2 1, 2, 4, 8, 16, ...;
    step4 1, 2, 4, 8, 12, 16, ..."""
    if padding not in ("pow2", "step4"):
        raise ValueError(f"padded_sizes: padding must be pow2|step4, got {padding!r}")
    sizes, s = [], 1
    while s < max_batch:
        sizes.append(s)
        s = s * 2 if padding == "pow2" or s < 4 else s + 4
    return [*sizes, max_batch]


class FleetClosed(RuntimeError):
    """The fleet stopped decoding while a robot's call waited."""


_END = object()


@dataclass(eq=False)
class _Call:
    """One robot's pending or running decode call."""

    robot: RobotPolicy
    obs: dict[str, Any]
    deadline: Callable[[int], float | None] | None
    epoch: int
    t: float
    shift: int | None = None
    """The robot's `warm_start_shift` for this call (None: the policy's `n_action_steps`)."""
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    emitted: int = 0
    """Actions streamed to the robot so far (a retry alone skips them)."""
    final_units: int = 0
    """Actions final in this row at the last snapshot (for the batch's deadlines)."""
    late: bool = False
    """Its first action's deadline had passed when its batch started: its row sets no deadline."""

    def shape(self, cameras: tuple[str, ...] = ("pixels",)) -> tuple[tuple[int, ...], ...]:
        """The shapes of its images, one per camera of `cameras` (calls of one batch have the same)."""
        obs = self.obs if isinstance(self.obs, dict) else {}
        return tuple(tuple(np.shape(obs[c])) if c in obs else () for c in cameras)


class RobotPolicy:
    """One robot's view of a `FleetPolicy`: an `ActionChunkPolicy` with its own warm-start chunk."""

    def __init__(self, fleet: FleetPolicy, name: str, on_close: Callable[[], object] | None = None):
        self.fleet = fleet
        self.name = name
        self.on_close = on_close
        self._closed = False
        self._previous: Any = None  # (n,) tokens of the last chunk decoded for this robot
        self._epoch = 0
        self.warm_start_shift: int | None = None
        """Actions between this robot's last chunk's image and its next call's (the warm guess's
        shift; None: the policy's `n_action_steps`), taken with each call."""

    @property
    def chunk_size(self) -> int:
        return self.fleet.chunk_size

    @property
    def action_dim(self) -> int:
        return self.fleet.action_dim

    @property
    def vla(self) -> Any:
        """The shared policy's model (the runner reads `vla.proprio_dim`)."""
        return self.fleet.policy.vla

    @property
    def warm_start_tokens(self) -> Any:
        """(1, n) tokens of this robot's last chunk (the warm guess of its next call), or None."""
        prev = self._previous
        return None if prev is None else prev[None]

    def reset(self) -> None:
        """Forget this robot's warm-start chunk (the other robots keep theirs)."""
        with self.fleet._cv:
            self._previous = None
            self._epoch += 1

    def stream_action_chunk(
        self, obs: dict[str, Any], action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]:
        """Yield this robot's actions as its row's tokens become final (see `VLAPolicy.stream_action_chunk`).

        The call joins the fleet's next batch. Raises `ObservationError` for a bad observation,
        the decode's exception when this robot's row fails, `FleetClosed` when the fleet stops."""
        call = self.fleet._submit(self, obs, action_deadline)
        try:
            while True:
                try:
                    item = call.out.get(timeout=0.5)
                except queue.Empty:
                    if self.fleet.closed:
                        raise FleetClosed(f"the fleet stopped decoding during {self.name}'s call") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            call.cancelled = True

    def close(self) -> None:
        """Detach this robot from the fleet (the shared policy stays loaded; `FleetPolicy.close` frees it)."""
        if not self._closed:
            self._closed = True
            self.fleet._detach(self)


class FleetPolicy:
    """One `ee_vla.policy.VLAPolicy` decoding the calls of many robots in batches (module docstring).

    Args:
        policy: the loaded policy (in this process; its decoder, engine and device are used as set).
        config: batching settings.
        clock: the decode loop's clock (`time.perf_counter`: action deadlines are in its time).
        start: start the decode thread now (else call `start()`).
    """

    def __init__(
        self,
        policy: Any,
        config: FleetConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
        start: bool = True,
    ):
        self.policy = policy
        self.config = config or FleetConfig()
        self.clock = clock
        pad = self.config.padding
        if pad == "auto":
            pad = "pow2" if getattr(policy, "engine_pool", None) is not None else "none"
        self.padding = pad
        self.sizes = None if pad == "none" else padded_sizes(self.config.max_batch, pad)
        pool = getattr(policy, "engine_pool", None)
        if self.sizes is not None and pool is not None and len(self.sizes) > pool.max_engines:
            # one engine per padded size, all kept: evicting one would rebuild it inside a robot's call
            log.info("the engine pool keeps %d engines, one per padded batch size", len(self.sizes))
            pool.max_engines = len(self.sizes)
        self._cv = threading.Condition()
        self._pending: list[_Call] = []
        self._robots: dict[str, RobotPolicy] = {}
        self._decode_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False
        # statistics
        self.batches = 0
        self.rows = 0
        self.padded_rows = 0
        self.batch_sizes: Counter[int] = Counter()
        """Real rows per batch -> number of batches of that size."""
        self.split_batches = 0
        """Batches whose decode raised and were decoded again one row at a time."""
        self.batch_wall = Window()
        """Seconds per batched decode (prefill to its last row's end)."""
        self.queue_wait = Window()
        """Seconds from a call's arrival to the start of its batch."""
        if start:
            self.start()

    # ---- the policy's shape -----------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return int(self.policy.chunk_size)

    @property
    def action_dim(self) -> int:
        return int(self.policy.action_dim)

    @property
    def _proprio(self) -> bool:
        return bool(getattr(self.policy.vla, "proprio_dim", 0))

    @property
    def cameras(self) -> tuple[str, ...]:
        """The observation keys of the images the policy reads (`VLA.cameras`)."""
        return tuple(getattr(self.policy.vla, "cameras", None) or ("pixels",))

    # ---- robots -------------------------------------------------------------------------------
    def robot(self, name: str, on_close: Callable[[], object] | None = None) -> RobotPolicy:
        """The `ActionChunkPolicy` of robot `name` (one per name; a second call is refused while the
        first is attached). `on_close` is called after its `close()` detached it."""
        with self._cv:
            if name in self._robots:
                raise ValueError(f"robot {name!r} is already attached to this fleet")
            r = RobotPolicy(self, name, on_close)
            self._robots[name] = r
            return r

    def _detach(self, robot: RobotPolicy) -> None:
        with self._cv:
            if self._robots.get(robot.name) is robot:
                del self._robots[robot.name]
            self._cv.notify_all()
        if robot.on_close is not None:
            robot.on_close()

    @property
    def robots(self) -> list[str]:
        with self._cv:
            return list(self._robots)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FleetPolicy:
        """Start the decode thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ee_vla-fleet-decode", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the decode thread (the batch in flight finishes); pending calls fail with `FleetClosed`."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        with self._cv:
            pending, self._pending = self._pending, []
            self.closed = True
        for c in pending:
            c.out.put(FleetClosed(f"the fleet stopped before {c.robot.name}'s call was decoded"))

    def warm_up(self, obs: dict[str, Any] | None = None, sizes: list[int] | None = None) -> dict[int, float]:
        """Decode one batch of each size a batch can have (default: the padded sizes, or 1 and
        `max_batch` without padding), so engines are built, compiled and captured before robots
        call; returns seconds per size. `obs`: one observation (default: a blank image of the
        model's size, "pick up the object", zeros for agent_pos). Robots' warm-start chunks are
        untouched."""
        vla = self.policy.vla
        if obs is None:
            size = int(getattr(vla, "image_size", 64) or 64)
            obs = {c: np.zeros((size, size, 3), np.uint8) for c in self.cameras}
            obs["instruction"] = "pick up the object"
            if getattr(vla, "proprio_dim", 0):
                obs["agent_pos"] = np.zeros(int(vla.proprio_dim), np.float32)
        if sizes is None:
            sizes = self.sizes or sorted({1, self.config.max_batch})
        out: dict[int, float] = {}
        with self._decode_lock:
            saved = self.policy.warm_start_tokens
            for b in sizes:
                batch = _stack([obs] * b, self._proprio, self.cameras)
                t = time.perf_counter()
                self.policy.warm_start_tokens = None
                for _ in range(2):  # cold, then warm from the first (`guess_in_prefill`: another prefill shape)
                    for _ in self.policy.decode_states(batch, None):
                        pass
                out[b] = time.perf_counter() - t
            self.policy.warm_start_tokens = saved
        return out

    def stats(self) -> dict[str, Any]:
        """Batching statistics: batches, rows, padded rows, batch sizes seen, decode and wait times."""
        sizes = dict(sorted(self.batch_sizes.items()))
        return {
            "robots": len(self.robots),
            "batches": self.batches,
            "rows": self.rows,
            "padded_rows": self.padded_rows,
            "split_batches": self.split_batches,
            "batch_sizes": sizes,
            "mean_batch": self.rows / self.batches if self.batches else None,
            "max_batch_seen": max(sizes) if sizes else 0,
            "batch_wall_p50_s": self.batch_wall.percentile(50),
            "batch_wall_p99_s": self.batch_wall.percentile(99),
            "queue_wait_p50_s": self.queue_wait.percentile(50),
            "queue_wait_p99_s": self.queue_wait.percentile(99),
        }

    # ---- calls --------------------------------------------------------------------------------
    def _submit(self, robot: RobotPolicy, obs: dict[str, Any], deadline: Callable[[int], float | None] | None) -> _Call:
        with self._cv:
            if self.closed or self._stop.is_set():
                raise FleetClosed("the fleet is closed")
            call = _Call(robot, obs, deadline, robot._epoch, self.clock(), robot.warm_start_shift)
            self._pending.append(call)
            self._cv.notify_all()
        return call

    def _gather(self) -> list[_Call]:
        """Wait for calls and take the next batch (FIFO, same image shape, at most `max_batch`)."""
        cfg = self.config
        with self._cv:
            while not self._stop.is_set():
                self._pending = [c for c in self._pending if not c.cancelled]
                if not self._pending:
                    self._cv.wait(0.5)
                    continue
                cams = self.cameras
                shape = self._pending[0].shape(cams)
                same = [c for c in self._pending if c.shape(cams) == shape]
                waiting = self._pending[0].t + cfg.gather_s - self.clock()
                if len(same) >= cfg.max_batch or len(same) >= len(self._robots) or waiting <= 0:
                    batch = same[: cfg.max_batch]
                    taken = set(map(id, batch))
                    self._pending = [c for c in self._pending if id(c) not in taken]
                    return batch
                self._cv.wait(waiting)
        return []

    def _run(self) -> None:
        if self.config.decode_nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.decode_nice)
            except (AttributeError, OSError) as e:
                log.debug("could not renice the fleet's decode thread: %s", e)
        while not self._stop.is_set():
            batch = self._gather()
            if not batch:
                continue
            try:
                with self._decode_lock:
                    self._decode(batch)
            except BaseException as e:  # noqa: BLE001 - a bug here must not leave robots waiting
                log.exception("fleet decode thread: unexpected error")
                for c in batch:
                    c.out.put(e if isinstance(e, Exception) else FleetClosed(str(e)))
                if not isinstance(e, Exception):
                    raise

    def _validated(self, batch: list[_Call]) -> list[_Call]:
        """The calls whose observation the policy accepts; the others get the error (bad input)."""
        ok = []
        for c in batch:
            try:
                images, _instrs, _proprio = self.policy.validate(c.obs)
                if images[0].shape[0] != 1:
                    from ee_vla.policy import ObservationError

                    raise ObservationError(
                        f"a robot's call decodes one observation, got a batch of {images[0].shape[0]}"
                    )
            except Exception as e:  # noqa: BLE001 - whatever validation raises is this call's
                c.out.put(e)
                continue
            ok.append(c)
        return ok

    def padded_size(self, rows: int) -> int:
        """The batch size `rows` real rows are decoded at (the smallest padded size that holds them)."""
        return rows if self.sizes is None else next((s for s in self.sizes if s >= rows), rows)

    def _decode(self, batch: list[_Call], split: bool = True) -> None:
        """Decode `batch` (validated here) in one call, streaming each row; on an error, each row alone."""
        batch = self._validated(batch) if split else batch
        if not batch:
            return
        B = len(batch)
        size = self.padded_size(B)
        rows = batch + [batch[0]] * (size - B)
        obs = _stack([c.obs for c in rows], self._proprio, self.cameras)
        t0 = self.clock()
        for c in batch:
            self.queue_wait.add(t0 - c.t)
            c.final_units = c.emitted
            if c.emitted == 0:
                d0 = _deadline(c, 0)
                c.late = d0 is not None and d0 < t0
        self._set_guess(rows, B)

        def unit_deadline(j: int) -> float | None:
            best = None
            for c in batch:
                if c.cancelled or c.late or c.final_units > j:
                    continue
                d = _deadline(c, j)
                if d is not None and (best is None or d < best):
                    best = d
            return best

        try:
            for state in self.policy.decode_states(obs, unit_deadline):
                self._stream(state, batch)
        except Exception as e:  # noqa: BLE001 - decided per row below
            if split and B > 1:
                self.split_batches += 1
                log.warning("a batch of %d failed (%s: %s): decoding its rows one at a time", B, type(e).__name__, e)
                for c in batch:
                    if not c.cancelled:
                        self._decode([c], split=False)
                    else:
                        c.out.put(_END)
                return
            for c in batch:
                c.out.put(e)
            return
        self.batch_wall.add(self.clock() - t0)
        self.batches += 1
        self.rows += B
        self.padded_rows += size - B
        self.batch_sizes[B] += 1
        tokens = self.policy.warm_start_tokens
        with self._cv:
            for i, c in enumerate(batch):
                if not c.cancelled and c.epoch == c.robot._epoch:
                    c.robot._previous = tokens[i].clone()
        for c in batch:
            c.out.put(_END)

    def _set_guess(self, rows: list[_Call], real: int) -> None:
        """The batch's warm-start rows: each robot's previous chunk, -1 where it has none, and its
        robot's `warm_start_shift` (padding rows repeat the first row's)."""
        with self._cv:
            prev = [c.robot._previous if c.epoch == c.robot._epoch else None for c in rows]
        have = [p for p in prev if p is not None]
        if not have:
            self.policy.warm_start_tokens = None
            return
        import torch

        none = torch.full_like(have[0], -1)
        first = prev[0] if prev[0] is not None else none
        stacked = [p if p is not None else none for p in prev[:real]] + [first] * (len(rows) - real)
        self.policy.warm_start_tokens = torch.stack(stacked)
        self.policy.warm_start_shift = [c.shift for c in rows]  # each row shifted by its robot's own

    def _stream(self, state: Any, batch: list[_Call]) -> None:
        """Send each row the actions that this snapshot made final in it."""
        D = self.action_dim
        final = [int(f) // D for f in state.n_final[: len(batch)].tolist()]
        if not any(f > c.emitted for f, c in zip(final, batch, strict=True)):
            return
        toks = state.tokens[: len(batch)].cpu().numpy()
        now = self.clock()
        stats = state.stats
        decode = self.policy.vla.action_tokenizer.decode
        for i, c in enumerate(batch):
            c.final_units = final[i]
            for j in range(c.emitted, final[i]):
                t = toks[i, j * D : (j + 1) * D]
                act = decode(t[None])[0]
                sa = StreamedAction(j, act, t, now, bool(stats.unit_exact[i][j]), int(stats.unit_final_iteration[i][j]))
                if not c.cancelled:
                    c.out.put(sa)
            c.emitted = max(c.emitted, final[i])


class SharedFleet:
    """One `FleetPolicy` for robots that configure one at a time (the rclpy nodes of one process, each
    configured by its own lifecycle): `factory(name)` is a runner's `policy_factory`.

    The first robot's configure loads the policy (in this process, with its parameters' model and
    runtime) and, with `warmup`, decodes a batch of every size; the next robots must ask for the
    same model and runtime (a robot that asks for another fails its configure with the reason);
    the last robot's cleanup closes the fleet and frees the policy.

    Args:
        config: batching settings (`decode_nice` is the first robot's `decode_nice` parameter).
        load: loads the policy of a robot's `PolicyParams` (default: `load_here`).
    """

    def __init__(self, config: FleetConfig, load: Callable[[Any], Any] | None = None):
        self.config = config
        self.load = load or load_here
        self.fleet: FleetPolicy | None = None
        self.key: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def factory(self, name: str) -> Callable[[Any], RobotPolicy]:
        """A `policy_factory` for robot `name`'s runner."""
        return lambda params: self.robot(name, params)

    def robot(self, name: str, params: Any) -> RobotPolicy:
        """Robot `name`'s policy, loading the shared one for the first robot (see the class docstring)."""
        key = (params.model_path, params.runtime_config())
        with self._lock:
            if self.fleet is None:
                import dataclasses

                if getattr(params, "policy_process", False):
                    log.info("the shared policy decodes in this process, on the fleet's thread (not a policy process)")
                config = dataclasses.replace(self.config, decode_nice=params.decode_nice)
                self.fleet, self.key = warmed_fleet(self.load(params), config, params.warmup), key
            elif key != self.key:
                raise ValueError(
                    f"robot {name!r} asks for model {key[0]!r} with {key[1]}, but the robots of this process "
                    f"share {self.key[0]!r} with {self.key[1]}: give every namespace the same model_path and "
                    "decoder, device, dtype, engine and threads parameters"
                )
            return self.fleet.robot(name, on_close=self._closed)

    def _closed(self) -> None:
        with self._lock:
            fleet = self.fleet
            if fleet is None or fleet.robots:
                return
            self.fleet, self.key = None, None
        fleet.close()


def warmed_fleet(policy: Any, config: FleetConfig, warmup: bool) -> FleetPolicy:
    """A `FleetPolicy` around `policy`; with `warmup`, every batch size it can decode is decoded
    once (`FleetPolicy.warm_up`) before it is returned, and the fleet is closed if that fails."""
    fleet = FleetPolicy(policy, config)
    if warmup:
        try:
            took = fleet.warm_up()
        except BaseException:
            fleet.close()
            raise
        log.info("fleet warm-up: %s", ", ".join(f"batch {b} {s:.2f} s" for b, s in took.items()))
    return fleet


def load_here(params: Any) -> Any:
    """The policy of a robot's `PolicyParams`, loaded in this process (threads configured)."""
    from ee_vla.models import check_model_dir
    from ee_vla.threads import configure_threads
    from ros_nodes.policy_process import load_policy_here

    if not params.model_path:
        raise ValueError("model_path is empty: set it to a directory saved by VLAPolicy.save_pretrained")
    check_model_dir(params.model_path)
    configure_threads(params.threads)
    return load_policy_here(params)


def _deadline(call: _Call, j: int) -> float | None:
    """The time by which `call`'s robot needs action `j` (None: no deadline, or its callback failed)."""
    if call.deadline is None:
        return None
    try:
        return call.deadline(j)
    except Exception as e:  # noqa: BLE001 - the robot's callback; its row just has no deadline
        log.debug("action_deadline of %s raised %r", call.robot.name, e)
        return None


def _stack(observations: list[dict[str, Any]], proprio: bool, cameras: tuple[str, ...] = ("pixels",)) -> dict[str, Any]:
    """One batched observation from single (validated) ones: each camera's images (B, H, W, 3), a
    list of instructions and, for a policy with `proprio`, agent_pos (B, P)."""
    out: dict[str, Any] = {c: np.stack([np.asarray(o[c]) for o in observations]) for c in cameras}
    out["instruction"] = [o["instruction"] for o in observations]
    if proprio:
        out["agent_pos"] = np.stack([np.asarray(o["agent_pos"], dtype=np.float64).reshape(-1) for o in observations])
    return out
