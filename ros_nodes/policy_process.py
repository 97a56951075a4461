"""Run the policy in a child process, behind the same `ActionChunkPolicy` interface.

Why: in one Python process the decoding thread and the control timer share the GIL. Torch on a CPU
holds it through most of a forward pass, and when that thread is descheduled on a busy machine the
timer waits for it, however high its own priority: commands at 200 Hz then jitter by milliseconds.
In a child process the decoder has its own interpreter; the node's process only does I/O and the
timer, and waits for actions on a pipe (GIL released).

Deadlines cross the process boundary as numbers: the child computes action i's deadline as
`first_deadline + i * dt` until its first action is out, then `t_first + i * dt`, which is what the
runner's `ChunkSchedule` answers in ``replace`` mode (both processes read the same monotonic clock
on Linux: `time.perf_counter` is CLOCK_MONOTONIC).

The child belongs to its parent: it ignores SIGINT and SIGTERM (a Ctrl-C or a stop sent to the
whole process group is the parent's to handle; the parent then closes the child), and it dies with
the parent, even one killed with SIGKILL: on Linux through PR_SET_PDEATHSIG, and everywhere through
a thread that exits the child once its parent process is gone.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from ee_vla.streaming import StreamedAction
from ros_nodes.params import PolicyParams, with_contract
from ros_nodes.safety import BadInputError, is_bad_input

log = logging.getLogger(__name__)


class PolicyLoadError(ValueError):
    """The child could not load the policy because of its input (a corrupt model directory, an option
    that does not fit it): a user error, reported in one line by the CLI."""


class PolicyProcessError(RuntimeError):
    """The policy in the child process raised; the message names the original exception."""


class ObservationRejected(BadInputError):
    """The policy in the child process rejected the observation (its `ObservationError`): bad input."""


PARENT_POLL_S = 0.25
"""How often the child checks that its parent is alive (where PR_SET_PDEATHSIG is not available)."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Make this (child) process exit when `parent_pid` exits: PR_SET_PDEATHSIG=SIGKILL on Linux when
    `pdeathsig` (the kernel signals when the parent's spawning thread exits, so the parent only asks
    for it from its main thread), and a daemon thread polling the parent pid everywhere."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.debug("prctl unavailable: %s", e)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # reparented: the parent is gone, nobody will read what is decoded

    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="ee_vla-parent-watch", daemon=True).start()


def _ignore_stop_signals() -> None:
    """Leave Ctrl-C and SIGTERM to the parent (which closes this process when it stops)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _deadlines(t_first: list[float], first_deadline: float | None, dt: float) -> Callable[[int], float | None]:
    """Action deadlines in the child: from the decode budget until the first action is out (its time
    then in `t_first`), then from the first action's time, one control period apart."""

    def deadline(i: int) -> float | None:
        if t_first:
            return t_first[0] + i * dt
        return None if first_deadline is None else first_deadline + i * dt

    return deadline


def load_policy_here(params: PolicyParams) -> Any:
    """The policy of `params.runtime_config()` (`RuntimeConfig.load_policy`), loaded in the calling
    process (torch imported lazily): what the policy process runs, and the runner's choice without one."""
    if not params.model_path:
        raise ValueError("model_path is empty: set it to a directory saved by VLAPolicy.save_pretrained")
    return params.runtime_config().load_policy(params.model_path)


def _child(
    conn: Any,
    params: dict[str, Any],
    dt: float,
    parent_pid: int,
    pdeathsig: bool,
    factory: Callable[[PolicyParams], Any] | None,
) -> None:
    """Child process main: tie its life to the parent's, load the policy, then decode on request,
    streaming actions back."""
    _ignore_stop_signals()
    _die_with_parent(parent_pid, pdeathsig)
    try:
        _serve_parent(conn, params, dt, factory)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the parent closed the pipe: nothing left to do
    # Nothing is left to write, and the interpreter's teardown of a loaded torch takes a second or
    # two, which the parent's shutdown (and launch's SIGTERM grace) would wait for: leave at once.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def _serve_parent(conn: Any, params: dict[str, Any], dt: float, factory: Callable[[PolicyParams], Any] | None) -> None:
    p = PolicyParams(**params)
    try:
        if p.decode_nice:
            os.nice(p.decode_nice)
        from ee_vla.threads import configure_threads

        configure_threads(p.threads)
        policy = (factory or load_policy_here)(p)
        vla = getattr(policy, "vla", None)
        proprio = int(getattr(vla, "proprio_dim", 0) or 0)
        cameras = tuple(getattr(vla, "cameras", None) or ("pixels",))
        conn.send(("ready", int(policy.chunk_size), int(policy.action_dim), proprio, cameras))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        from ee_vla.cli import is_user_error

        conn.send(("error", type(e).__name__, str(e), is_user_error(e)))
        return
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        if cmd[0] == "close":
            return
        if cmd[0] == "reset":
            policy.reset()
            continue
        _, obs, first_deadline, warm_shift = cmd
        t_first: list[float] = []
        deadline = _deadlines(t_first, first_deadline, dt)
        try:
            if hasattr(policy, "warm_start_shift"):
                policy.warm_start_shift = warm_shift
            for sa in policy.stream_action_chunk(obs, action_deadline=deadline):
                if not t_first:
                    t_first.append(time.perf_counter())
                conn.send(("action", sa.index, sa.action, sa.tokens, sa.t, sa.exact, sa.iteration))
            conn.send(("done",))
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", type(e).__name__, str(e), is_bad_input(e)))


def _shut_down(conn: Any, proc: Any, grace_s: float = 5.0) -> None:
    """Ask the child to exit; kill it if it is still busy after `grace_s` (it ignores SIGTERM)."""
    try:
        conn.send(("close",))
    except (OSError, ValueError):
        pass
    proc.join(timeout=grace_s)
    if proc.is_alive():
        log.warning("the policy process did not exit within %.0f s of close (busy decoding): killing it", grace_s)
        proc.kill()
        proc.join(timeout=grace_s)
    conn.close()


class ProcessPolicy:
    """An `ActionChunkPolicy` whose model lives in a child process (spawned, so CUDA works there).

    Args:
        params: `model_path`, the runtime parameters (`RUNTIME_PARAMS`: decoder, device, ...) and
            `decode_nice` are used.
        start_timeout_s: how long loading may take before configure fails.
        factory: builds the policy in the child from the params (a picklable top-level function;
            default `load_policy_here`).
    """

    def __init__(
        self,
        params: PolicyParams,
        start_timeout_s: float = 600.0,
        factory: Callable[[PolicyParams], Any] | None = None,
    ):
        params, _ = with_contract(params)  # control_hz 0: the policy's rate (the runner warns, not here)
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        child_params = dataclasses.asdict(dataclasses.replace(params, policy_process=False))
        child_params = {k: v for k, v in child_params.items() if k in PolicyParams.__dataclass_fields__}
        main_thread = threading.current_thread() is threading.main_thread()
        self._proc = ctx.Process(
            target=_child,
            args=(child_conn, child_params, 1.0 / params.control_hz, os.getpid(), main_thread, factory),
            name="ee_vla-policy",
            daemon=True,
        )
        # Started with SIGINT ignored, the child's interpreter keeps ignoring it from its first
        # instruction (Python leaves an inherited SIG_IGN alone), before `_child` runs.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            self._proc.start()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
        child_conn.close()
        # Closed however this object goes away, interpreter exit included (before multiprocessing's
        # own exit handler, whose SIGTERM the child ignores).
        self._finalizer = weakref.finalize(self, _shut_down, self._conn, self._proc)
        try:
            if not self._conn.poll(start_timeout_s):
                raise TimeoutError(f"the policy process did not load {params.model_path!r} within {start_timeout_s} s")
            msg = self._conn.recv()
        except EOFError:
            self.close()
            raise PolicyProcessError(
                f"the policy process died while loading (exit code {self._proc.exitcode})"
            ) from None
        except BaseException:  # a timeout, or Ctrl-C while loading
            self.close()
            raise
        if msg[0] == "error":
            self.close()
            error = PolicyLoadError if msg[3] else PolicyProcessError
            raise error(f"loading the policy failed: {msg[1]}: {msg[2]}")
        _, self.chunk_size, self.action_dim, proprio, cameras = msg
        self.vla = SimpleNamespace(proprio_dim=proprio, cameras=cameras)
        """What the runner reads of the child's model: its `proprio_dim` and `cameras`."""
        self._busy = False
        self.warm_start_shift: int | None = None
        """Sent with each decode: the child's `VLAPolicy.warm_start_shift` for that call."""

    def reset(self) -> None:
        self._conn.send(("reset",))

    def stream_action_chunk(
        self, obs: dict[str, Any], action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]:
        """Decode in the child; yields each action as it arrives (closing early drains the rest)."""
        if not self._proc.is_alive():
            raise PolicyProcessError(f"the policy process exited (code {self._proc.exitcode})")
        first = action_deadline(0) if action_deadline is not None else None
        self._conn.send(("decode", obs, first, self.warm_start_shift))
        finished = False
        try:
            while True:
                msg = self._recv()
                if msg[0] == "action":
                    yield StreamedAction(*msg[1:])
                elif msg[0] == "done":
                    finished = True
                    return
                else:
                    finished = True
                    name, text, bad_input = msg[1], msg[2], msg[3]
                    if bad_input:
                        raise ObservationRejected(f"{name}: {text}")
                    raise PolicyProcessError(f"{name}: {text}")
        finally:
            while not finished:  # the consumer stopped early: let the child finish this chunk
                finished = self._recv()[0] in ("done", "error")

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()
        except EOFError:
            raise PolicyProcessError(f"the policy process died (exit code {self._proc.exitcode})") from None

    def close(self) -> None:
        """Stop the child process (the model's memory goes with it); idempotent."""
        self._finalizer()

    @property
    def pid(self) -> int | None:
        """The child process's id."""
        return self._proc.pid
