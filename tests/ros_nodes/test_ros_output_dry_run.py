"""`CommandSink` and `dry_run` switched at run time (`ros2 param set ... dry_run true`): the robot gets
one stop command before the sink goes quiet, never a motion left running."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ros_fakes import commanding_runner

pytest.importorskip("cyclonedds")  # the message classes are ros_nodes.dds.msgs'

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.output import CommandSink  # noqa: E402


def _sink(dry_run: bool, **kw) -> tuple[CommandSink, list]:
    runner = commanding_runner(dry_run=dry_run, control_hz=10.0, **kw)
    sent: list = []
    sink = CommandSink(runner, msgs, sent.append, lambda: (0, 0))
    sink.activate()
    runner.on_image(np.zeros((8, 8, 3), np.uint8))
    assert runner.process_pending()
    return sink, sent


def _set_dry_run(sink: CommandSink, value: bool) -> None:
    """What the node's parameter callback does for `ros2 param set ... dry_run VALUE`."""
    sink.runner.update_params(dataclasses.replace(sink.runner.params, dry_run=value))


def _moving(msg) -> bool:
    return any(v != 0.0 for v in msg.data)


def test_dry_run_switched_on_publishes_one_stop_then_nothing():
    sink, sent = _sink(dry_run=False)
    for _ in range(3):
        assert sink.tick()
    assert len(sent) == 3 and _moving(sent[-1])
    _set_dry_run(sink, True)
    for _ in range(5):
        assert sink.tick()  # still "sent" (logged) for the rate monitor
    assert len(sent) == 4 and list(sent[-1].data) == [0.0] * 7  # one stop command, then quiet
    assert sink.stop()  # deactivate in dry run: logged, no second stop on the wire
    assert len(sent) == 4


def test_stop_right_after_switching_dry_run_on_is_published():
    """No tick between the switch and the deactivation: the deactivation's own stop goes out for real."""
    sink, sent = _sink(dry_run=False)
    assert sink.tick() and _moving(sent[-1])
    _set_dry_run(sink, True)
    assert sink.stop()
    assert len(sent) == 2 and list(sent[-1].data) == [0.0] * 7


def test_dry_run_off_again_publishes_and_the_next_switch_stops_again():
    sink, sent = _sink(dry_run=False, keep_dims_on_zero=(6,))
    assert sink.tick()
    _set_dry_run(sink, True)
    sink.tick()
    n = len(sent)
    _set_dry_run(sink, False)
    assert sink.tick() and len(sent) == n + 1 and _moving(sent[-1])
    last_gripper = sent[-1].data[6]
    _set_dry_run(sink, True)
    sink.tick()
    sink.tick()
    assert len(sent) == n + 2
    stop = list(sent[-1].data)
    assert stop[:6] == [0.0] * 6 and stop[6] == last_gripper  # keep_dims_on_zero: the last published value


def test_dry_run_from_the_start_publishes_nothing():
    sink, sent = _sink(dry_run=True)
    for _ in range(3):
        assert sink.tick()
    assert sink.stop()
    assert sent == []
