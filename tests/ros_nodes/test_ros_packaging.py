"""package.xml and setup.py: rosdep keys that exist and match the imports; setup.py runnable from a
linked copy (what `colcon build --symlink-install` runs)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROS_FILES = [
    REPO / "ros_nodes" / "policy_node.py",
    REPO / "ros_nodes" / "sim_bridge_node.py",
    REPO / "ros_nodes" / "rclpy_support.py",
    *sorted((REPO / "launch").glob("*.launch.py")),
]
"""The modules that run only on a ROS 2 install (everything else is ROS-free)."""
PYTHON_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml"}
"""Imported pip/apt packages -> their rosdep keys (from ros/rosdistro rosdep/python.yaml)."""
OWN = {"ros_nodes", "ee_vla", "sim_envs"}


def _deps(kind: str) -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {e.text.strip() for e in root.iter(kind)}


def _top_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN


def test_exec_depends_are_exactly_the_ros_packages_imported():
    """rosdep resolves every exec_depend; a key that names no package (e.g. `rclpy_lifecycle`: the
    lifecycle API is part of rclpy) fails `rosdep install` for the whole workspace."""
    imported = set().union(*(_top_imports(p) for p in ROS_FILES))
    ros_imported = {n for n in imported if n not in PYTHON_KEYS}
    ros_declared = {d for d in _deps("exec_depend") if not d.startswith("python3-")}
    assert ros_declared == ros_imported, (
        f"declared but not imported: {sorted(ros_declared - ros_imported)}; "
        f"imported but not declared: {sorted(ros_imported - ros_declared)}"
    )
    assert {PYTHON_KEYS[n] for n in imported if n in PYTHON_KEYS} <= _deps("exec_depend")


def test_test_depends_cover_what_the_ros_tests_import():
    imported = set().union(*(_top_imports(p) for p in (REPO / "tests" / "ros_nodes").glob("*.py")))
    keys = {"pytest": "python3-pytest", "hypothesis": "python3-hypothesis", "gymnasium": "python3-gymnasium-pip"}
    assert {"pytest", "hypothesis", "gymnasium"} <= imported
    assert set(keys.values()) <= _deps("test_depend")


def test_setup_py_runs_from_a_linked_copy_in_another_directory(tmp_path):
    """colcon's --symlink-install links setup.py into build/<pkg> and runs it there."""
    (tmp_path / "setup.py").symlink_to(REPO / "setup.py")
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ee_vla"
