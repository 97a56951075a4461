"""`CommandSink`: the stop command is the last message after every deactivation, whatever thread ticks;
`PolicyRunner.cleanup` leaves torch unloaded in a process that never used it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ros_fakes import commanding_runner, wait_until

pytest.importorskip("cyclonedds")  # the message classes are ros_nodes.dds.msgs'

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.output import CommandSink  # noqa: E402
from ros_nodes.runner import PolicyRunner  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _runner() -> PolicyRunner:
    # A 4-action chunk lasts 4 s at 1 Hz: a ticker thread starved by a loaded machine for a whole
    # chunk would never see it (and rightly publish nothing), which is not what this tests.
    return commanding_runner(control_hz=1.0)


def hammer(sink: CommandSink, sent: list, rounds: int) -> list[int]:
    """A ticker thread calls `sink.tick()` back to back while this thread activates, waits for a
    published action and stops, `rounds` times. Returns the rounds where a message followed the stop
    command (checked once the ticker has finished two more ticks after `stop()` returned)."""
    runner = sink.runner
    ticks = [0]
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            sink.tick()
            ticks[0] += 1

    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    late = []
    try:
        for r in range(rounds):
            sink.activate()
            runner.on_image(np.zeros((8, 8, 3), np.uint8))
            assert runner.process_pending()
            n = len(sent)
            assert wait_until(lambda n=n: len(sent) > n), "the ticker published nothing while active"
            assert sink.stop()
            k = ticks[0]
            assert wait_until(lambda k=k: ticks[0] >= k + 2), "the ticker stopped ticking"
            if np.any(np.asarray(sent[-1].data)):  # the stop command is all zeros, actions are not
                late.append(r)
    finally:
        done.set()
        t.join(timeout=10)
    return late


def test_stop_is_the_last_message_after_every_deactivation():
    runner = _runner()
    sent: list = []
    sink = CommandSink(runner, msgs, sent.append, lambda: (0, 0))
    late = hammer(sink, sent, rounds=300)
    assert late == [], f"a command followed the stop command in {len(late)} of 300 deactivations"
    assert sink.stopped and runner.state == "inactive"


def test_nothing_but_stop_commands_after_stop():
    runner = _runner()
    sent: list = []
    sink = CommandSink(runner, msgs, sent.append, lambda: (0, 0))
    sink.activate()
    runner.on_image(np.zeros((8, 8, 3), np.uint8))
    runner.process_pending()
    emit = runner.tick()
    assert emit is not None and emit.kind == "action"
    assert sink.stop() and not np.any(sent[-1].data)
    n = len(sent)
    assert not sink.tick() and not sink.send(emit)  # an Emit computed before the stop is dropped
    assert len(sent) == n and sink.after_stop == 1
    assert not sink.stop()  # already stopped: nothing more to send
    sink.activate()
    runner.on_image(np.zeros((8, 8, 3), np.uint8))
    runner.process_pending()
    assert sink.tick() and len(sent) == n + 1


def test_cleanup_of_a_runner_that_never_loaded_torch_does_not_import_it():
    """In a fresh interpreter: configure, activate, stop and clean up a runner with a torch-free policy."""
    code = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import numpy as np
import pytest
from ros_fakes import FakePolicy
from ros_nodes.dds import msgs
from ros_nodes.output import CommandSink
from ros_nodes.params import PolicyParams
from ros_nodes.runner import PolicyRunner

runner = PolicyRunner(PolicyParams(warmup=False, instruction="go"), lambda _p: FakePolicy())
runner.configure()
sink = CommandSink(runner, msgs, lambda m: None, lambda: (0, 0))
sink.activate()
sink.stop()
assert "torch" not in sys.modules, "torch was imported before cleanup"
runner.cleanup()
assert runner.state == "unconfigured" and runner.policy is None
print("torch loaded:", "torch" in sys.modules)
import torch  # still importable afterwards
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch loaded: False" in out.stdout
