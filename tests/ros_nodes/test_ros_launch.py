"""Launch files: argument handling (ROS-free) and, where ROS 2 is installed, that they build."""

import ast
from pathlib import Path

import pytest

from ros_nodes.launch_args import POLICY_LAUNCH_ARGS, parameter_overrides
from ros_nodes.params import PolicyParams

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def test_empty_arguments_keep_the_yaml_values():
    assert parameter_overrides({name: "" for name in POLICY_LAUNCH_ARGS}) == {}


def test_arguments_are_typed_and_validated():
    out = parameter_overrides({"control_hz": "50", "dry_run": "false", "command_type": "array", "model_path": "/m"})
    assert out == {"control_hz": 50.0, "dry_run": False, "command_type": "array", "model_path": "/m"}
    PolicyParams.from_mapping(out)
    with pytest.raises(ValueError, match="command_type:='joystick': must be one of twist"):
        parameter_overrides({"command_type": "joystick"})
    with pytest.raises(ValueError, match="dry_run:='maybe'"):
        parameter_overrides({"dry_run": "maybe"})
    with pytest.raises(ValueError, match="control_hz:='fast'"):
        parameter_overrides({"control_hz": "fast"})
    with pytest.raises(ValueError, match="not a policy_node parameter"):
        parameter_overrides({"speed": "1"})
    assert parameter_overrides({"engine": "compiled", "device": "cuda"}) == {"engine": "compiled", "device": "cuda"}
    with pytest.raises(ValueError, match="engine:='turbo'"):
        parameter_overrides({"engine": "turbo"})
    assert parameter_overrides({"engine": "compiled", "compile_mode": "frozen"})["compile_mode"] == "frozen"
    with pytest.raises(ValueError, match="compile_mode:='fastest'"):
        parameter_overrides({"compile_mode": "fastest"})


@pytest.mark.parametrize("name", ["ee_vla.launch.py", "sim.launch.py"])
def test_launch_files_define_generate_launch_description(name):
    tree = ast.parse((LAUNCH / name).read_text())
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", ["ee_vla.launch.py", "sim.launch.py"])
def test_launch_descriptions_build(name):
    pytest.importorskip("launch_ros")
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchContext

    ld = PythonLaunchDescriptionSource(str(LAUNCH / name)).get_launch_description(LaunchContext())
    args = {a.name for a in ld.get_launch_arguments()}
    assert "model_path" in args
    if name == "ee_vla.launch.py":
        assert set(POLICY_LAUNCH_ARGS) | {"params_file", "autostart"} <= args
