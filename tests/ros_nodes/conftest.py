"""Fixtures for the ROS layer tests (ROS-free; rclpy tests skip without rclpy)."""

from __future__ import annotations

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
