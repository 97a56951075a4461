"""Fixtures for the ROS layer tests (ROS-free; rclpy tests skip without rclpy)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fakes import FakeClock, FakePolicy  # noqa: E402


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
