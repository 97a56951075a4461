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
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from ee_vla.streaming import StreamedAction
from ros_nodes.params import PolicyParams

log = logging.getLogger(__name__)


class PolicyProcessError(RuntimeError):
    """The policy in the child process raised; the message names the original exception."""


def _deadlines(t_first: list[float], first_deadline: float | None, dt: float) -> Callable[[int], float | None]:
    """Action deadlines in the child: from the decode budget until the first action is out (its time
    then in `t_first`), then from the first action's time, one control period apart."""

    def deadline(i: int) -> float | None:
        if t_first:
            return t_first[0] + i * dt
        return None if first_deadline is None else first_deadline + i * dt

    return deadline


def _child(conn: Any, params: dict[str, Any], dt: float) -> None:
    """Child process main: load the policy, then decode on request, streaming actions back."""
    p = PolicyParams(**params)
    try:
        if p.decode_nice:
            os.nice(p.decode_nice)
        if p.torch_threads:
            import torch

            torch.set_num_threads(p.torch_threads)
        from ros_nodes.runner import load_policy_here

        policy = load_policy_here(p)
        proprio = int(getattr(getattr(policy, "vla", None), "proprio_dim", 0) or 0)
        conn.send(("ready", int(policy.chunk_size), int(policy.action_dim), proprio))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", type(e).__name__, str(e)))
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
        _, obs, first_deadline = cmd
        t_first: list[float] = []
        deadline = _deadlines(t_first, first_deadline, dt)
        try:
            for sa in policy.stream_action_chunk(obs, action_deadline=deadline):
                if not t_first:
                    t_first.append(time.perf_counter())
                conn.send(("action", sa.index, sa.action, sa.tokens, sa.t, sa.exact, sa.iteration))
            conn.send(("done",))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", type(e).__name__, str(e)))


class ProcessPolicy:
    """An `ActionChunkPolicy` whose model lives in a child process (spawned, so CUDA works there).

    Args:
        params: `model_path`, `decoder`, `device`, `torch_threads`, `decode_nice` are used.
        start_timeout_s: how long loading may take before configure fails.
    """

    def __init__(self, params: PolicyParams, start_timeout_s: float = 600.0):
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        child_params = dataclasses.asdict(dataclasses.replace(params, policy_process=False))
        child_params = {k: v for k, v in child_params.items() if k in PolicyParams.__dataclass_fields__}
        self._proc = ctx.Process(
            target=_child, args=(child_conn, child_params, 1.0 / params.control_hz), name="ee_vla-policy", daemon=True
        )
        self._proc.start()
        child_conn.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise TimeoutError(f"the policy process did not load {params.model_path!r} within {start_timeout_s} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.close()
            raise PolicyProcessError(
                f"the policy process died while loading (exit code {self._proc.exitcode})"
            ) from None
        if msg[0] == "error":
            self.close()
            raise PolicyProcessError(f"loading the policy failed: {msg[1]}: {msg[2]}")
        _, self.chunk_size, self.action_dim, proprio = msg
        self.vla = SimpleNamespace(proprio_dim=proprio)
        self._busy = False

    def reset(self) -> None:
        self._conn.send(("reset",))

    def stream_action_chunk(
        self, obs: dict[str, Any], action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]:
        """Decode in the child; yields each action as it arrives (closing early drains the rest)."""
        if not self._proc.is_alive():
            raise PolicyProcessError(f"the policy process exited (code {self._proc.exitcode})")
        first = action_deadline(0) if action_deadline is not None else None
        self._conn.send(("decode", obs, first))
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
                    name, text = msg[1], msg[2]
                    if name in ("ObservationError", "ValueError"):
                        raise ValueError(f"{name}: {text}")
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
        """Stop the child process (the model's memory goes with it)."""
        try:
            self._conn.send(("close",))
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()
