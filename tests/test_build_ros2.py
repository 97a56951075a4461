"""scripts/build_ros2.sh and scripts/fetch_ros2_sources.sh (ROS 2 Jazzy from source): what they
build and fetch, and the Makefile targets that run them. The build itself takes tens of minutes and
is not run here."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_ros2.sh"
FETCH = ROOT / "scripts" / "fetch_ros2_sources.sh"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def _run(script, *args, env=None):
    return subprocess.run(["bash", str(script), *args], env={**ENV, **(env or {})}, capture_output=True, text=True)


def test_build_ros2_builds_what_ee_vla_uses_over_cyclonedds_only():
    r = _run(BUILD, "--packages")
    assert r.returncode == 0, r.stderr
    packages = r.stdout.split()
    for name in (
        "rclpy",
        "rmw_cyclonedds_cpp",
        "std_msgs",
        "sensor_msgs",
        "geometry_msgs",
        "trajectory_msgs",
        "diagnostic_msgs",
        "lifecycle_msgs",
        "builtin_interfaces",
        "rcl_interfaces",
        "launch",
        "launch_ros",
        "launch_testing",
        "launch_testing_ros",
        "ros2cli",
        "ros2launch",
        "ros2topic",
        "ros2lifecycle",
        "ros2param",
        "ros2node",
    ):
        assert name in packages
    assert not [p for p in packages if "fastrtps" in p or "connext" in p]


def test_build_ros2_help_names_its_settings_and_system_packages():
    r = _run(BUILD, "--help")
    assert r.returncode == 0, r.stderr
    for setting in ("ROS2_SRC", "EE_VLA_ROS2_PREFIX", "ROS2_BUILD", "PYTHON", "JOBS"):
        assert setting in r.stdout
    apt = _run(BUILD, "--apt").stdout.split()
    assert {"libyaml-dev", "libspdlog-dev", "pybind11-dev"} <= set(apt)


def test_fetch_keeps_only_the_needed_repositories(tmp_path):
    """The Jazzy list is filtered to the repositories of --list; a mirror without them stops the
    fetch with the repository's name."""
    needed = _run(FETCH, "--list").stdout.split()
    assert "ros2/rclpy" in needed and "eclipse-cyclonedds/cyclonedds" in needed
    entries = {**{r: "jazzy" for r in needed}, "eProsima/Fast-DDS": "2.14.x"}
    repos = tmp_path / "jazzy.repos"
    repos.write_text(
        "repositories:\n"
        + "".join(
            f"  {r}:\n    type: git\n    url: https://github.com/{r}.git\n    version: {v}\n"
            for r, v in entries.items()
        )
    )
    src = tmp_path / "src"
    (tmp_path / "mirror").mkdir()
    r = _run(FETCH, "--repos", str(repos), "--mirror", str(tmp_path / "mirror"), env={"ROS2_SRC": str(src)})
    assert r.returncode == 1 and "no mirror of ament/ament_cmake" in r.stderr
    filtered = (src / "ee_vla.repos").read_text()
    assert "Fast-DDS" not in filtered
    assert filtered.count("    version: jazzy\n") == len(needed)


def test_fetch_stops_when_the_list_lacks_a_repository(tmp_path):
    repos = tmp_path / "jazzy.repos"
    repos.write_text("repositories:\n  ros2/rclpy:\n    type: git\n    url: u\n    version: jazzy\n")
    r = _run(FETCH, "--repos", str(repos), env={"ROS2_SRC": str(tmp_path / "src")})
    assert r.returncode != 0 and "missing in the repos file: ros2/rcl" in r.stderr


def test_make_targets_build_and_test_against_the_prefix(tmp_path):
    r = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "ros2", "test-ros", f"ROS2_PREFIX={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f'EE_VLA_ROS2_PREFIX="{tmp_path}"' in r.stdout and "scripts/build_ros2.sh" in r.stdout
    assert f'source "{tmp_path}/setup.bash"' in r.stdout
    # the fake-rclpy tests in a process of their own (no real rclpy loaded), then the rest
    assert "-m pytest -q tests/ros_nodes/test_ros_node_fakes.py" in r.stdout
    assert "-m pytest -q tests/ros_nodes --ignore tests/ros_nodes/test_ros_node_fakes.py" in r.stdout
    # launch_testing's pytest plugins cannot load under pytest 9: the project's pytest config disables them
    assert "-p no:launch_testing -p no:launch_ros" in (ROOT / "setup.cfg").read_text()


def test_fetching_without_network_names_the_offline_way_and_leaves_no_empty_repos_file(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text("#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
    (fake / "curl").chmod(0o755)
    src = tmp_path / "src"
    r = _run(FETCH, env={"PATH": f"{fake}:/usr/bin:/bin", "ROS2_SRC": str(src)})
    assert r.returncode == 1
    assert "could not download" in r.stderr and "--mirror DIR" in r.stderr and "--repos FILE" in r.stderr
    assert not (src / "jazzy.repos").exists()
