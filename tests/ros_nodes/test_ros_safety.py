import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ros_nodes.diagnostics import RateMonitor, Window
from ros_nodes.safety import ActionLimits, CauseLog, Watchdog

REPO = Path(__file__).resolve().parents[2]


def test_clip_per_dim_and_reject_nan():
    lim = ActionLimits([-1, -0.5, 0], [1, 0.5, 0.2])
    assert lim.clip(np.array([2.0, -2.0, 0.1])).tolist() == [1.0, -0.5, 0.1]
    assert lim.clip(np.array([np.nan, 0, 0])) is None
    assert lim.clip(np.array([0.0, 0.0])) is None
    assert lim.clip(np.array([[2.0, 0, 0], [0, 0, 1]])).tolist() == [[1.0, 0, 0], [0, 0, 0.2]]
    with pytest.raises(ValueError, match="low > high"):
        ActionLimits([1.0], [0.0])
    with pytest.raises(ValueError, match="policy outputs 4-dim"):
        lim.check_dim(4)


def test_watchdog_states(clock):
    wd = Watchdog(0.5, clock)
    assert wd.state() == "waiting"
    wd.feed()
    clock.advance(0.4)
    assert wd.state() == "ok"
    clock.advance(0.2)
    assert wd.state() == "stale" and wd.state() == "stale" and wd.trips == 1
    wd.feed()
    assert wd.state() == "ok"
    clock.advance(1.0)
    assert wd.state() == "stale" and wd.trips == 2


def test_watchdog_over_several_inputs_names_the_missing_and_the_stale(clock):
    """One timeout for every camera: waiting while one has had nothing, stale as soon as one is
    older than the timeout (one trip, however the others keep arriving), ok when all are fresh."""
    wd = Watchdog(0.5, clock, inputs=("pixels", "wrist_pixels"))
    assert wd.state() == "waiting" and wd.waiting() == ["pixels", "wrist_pixels"] and wd.age() is None
    wd.feed(name="pixels")
    assert wd.state() == "waiting" and wd.waiting() == ["wrist_pixels"] and wd.age() is None
    wd.feed(name="wrist_pixels")
    clock.advance(0.3)
    wd.feed(name="pixels")
    assert wd.state() == "ok" and wd.age() == pytest.approx(0.3)
    for _ in range(4):  # the front camera keeps going, the wrist one stopped
        clock.advance(0.2)
        wd.feed(name="pixels")
    assert wd.state() == "stale" and wd.stale() == ["wrist_pixels"] and wd.trips == 1
    assert wd.ages()["pixels"] == 0.0 and wd.age() == pytest.approx(1.1)
    wd.feed(name="pixels")
    assert wd.state() == "stale" and wd.trips == 1
    wd.feed(name="wrist_pixels")
    assert wd.state() == "ok" and wd.trips == 1
    wd.feed(name="top_pixels")  # not watched: ignored
    assert wd.inputs == ("pixels", "wrist_pixels")
    wd.reset()
    assert wd.state() == "waiting"


def test_cause_log_once_per_cause_then_rate_limited(clock, caplog):
    logger = logging.getLogger("test.causes")
    cl = CauseLog(logger, period_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.causes"):
        assert cl.log("a", "bad a")
        assert not cl.log("a", "bad a")
        assert cl.log("b", "bad b")
        clock.advance(11)
        assert cl.log("a", "bad a")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad a", "bad b", "bad a (repeated 1 more times since last logged)"]
    assert cl.counts == {"a": 3, "b": 1} and cl.total() == 4


def test_cause_log_memory_is_bounded(clock, caplog):
    """100,000 distinct causes: at most `max_causes` keys kept, the rest counted under one key."""
    cl = CauseLog(logging.getLogger("test.causes"), clock=clock, max_causes=64)
    with caplog.at_level(logging.WARNING, logger="test.causes"):
        for i in range(100_000):
            cl.log(f"encoding:bogus-{i}", f"bad encoding bogus-{i}")
    counts = cl.counts
    assert len(counts) == 65 and counts[CauseLog.OVERFLOW] == 100_000 - 64 and cl.total() == 100_000
    assert len(caplog.records) == 65


def test_rate_monitor_and_window():
    rm = RateMonitor(window_s=1.0)
    for i in range(21):
        rm.event(10.0 + i * 0.05)
    assert rm.rate(11.0) == pytest.approx(20.0, rel=0.06)
    assert rm.rate(20.0) == 0.0
    w = Window(size=3)
    assert w.percentile(50) is None
    for v in (1, 2, 3, 100):
        w.add(v)
    assert w.percentile(50) == 3 and w.last() == 100 and w.count == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_shutdown_began_cannot_kill_the_exiting_process(sig):
    """Once a shutdown signal was handled, a late second one (arriving after the loop's handlers
    are gone) neither kills the process nor raises KeyboardInterrupt."""
    code = (
        "import os, signal, time\n"
        "from ros_nodes.safety import ShutdownSignals\n"
        "with ShutdownSignals() as s:\n"
        f"    os.kill(os.getpid(), {int(sig)})\n"
        "    assert s.event.wait(5)\n"
        f"os.kill(os.getpid(), {int(sig)})\n"
        "time.sleep(0.2)\n"
        "print('EXITED')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "EXITED", (r.returncode, r.stderr[-2000:])
