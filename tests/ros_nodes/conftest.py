"""Fixtures for the ROS layer tests (ROS-free; rclpy tests skip without rclpy)."""

from __future__ import annotations

import logging
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A shell starts a background job (`make test-ros &`, nohup) with SIGINT ignored, and an ignored
# signal stays ignored across exec: `ros2 launch` and the nodes the tests start would then not end
# on the Ctrl-C (SIGINT) the tests send them. Give pytest Python's own handler back, which exec
# resets to the default for every process it starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from domains import held_domain_ids, release_domain_ids  # noqa: E402
from ros_fakes import FakeClock, FakePolicy  # noqa: E402


@pytest.fixture(autouse=True)
def _domain_ids():
    """DDS domain ids claimed by a test and its function-scoped fixtures (`domains.claim_domain_id`)
    are given back when it ends, after those fixtures' teardown; module-scoped fixtures, set up
    before this one, keep theirs."""
    before = held_domain_ids()
    yield
    release_domain_ids(keep=before)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def fake_policy(clock: FakeClock) -> FakePolicy:
    return FakePolicy(clock=clock)


_ROOT_LEVEL = logging.root.level  # before any test module is collected (and imports launch)


@pytest.fixture(autouse=True)
def _plain_logging():
    """Importing ROS 2's `launch` installs its own logger class (which does not propagate, so caplog
    misses its records) and sets the root level to INFO; put both back after each test."""
    yield
    logging.setLoggerClass(logging.Logger)
    logging.root.setLevel(_ROOT_LEVEL)


@pytest.fixture(scope="session")
def two_camera_vla_dir(tmp_path_factory):
    """A tiny random VLA that reads two cameras, `pixels` and `wrist_pixels` (chunks of 3)."""
    from ee_vla.models import create_random_vla_dir

    return create_random_vla_dir(
        tmp_path_factory.mktemp("models") / "two_cameras",
        preset="tiny",
        chunk_size=3,
        cameras=("pixels", "wrist_pixels"),
    )
