"""Launch files: argument handling (ROS-free) and, where ROS 2 is installed, that they build."""

import ast
from pathlib import Path

import pytest

from ros_nodes.launch_args import (
    FLEET_LAUNCH_ARGS,
    POLICY_LAUNCH_ARGS,
    SIM_LAUNCH_ARGS,
    fleet_arguments,
    node_parameters,
    parameter_overrides,
    sim_bridge_overrides,
)
from ros_nodes.params import PolicyParams
from ros_nodes.sim_bridge import SimBridgeParams

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
    assert parameter_overrides({"wrist_image_topic": "hand/image_raw"}) == {"wrist_image_topic": "hand/image_raw"}
    with pytest.raises(ValueError, match="wrist_image_topic:='hand image'"):
        parameter_overrides({"wrist_image_topic": "hand image"})
    with pytest.raises(ValueError, match="engine:='turbo'"):
        parameter_overrides({"engine": "turbo"})
    assert parameter_overrides({"engine": "compiled", "compile_mode": "frozen"})["compile_mode"] == "frozen"
    with pytest.raises(ValueError, match="compile_mode:='fastest'"):
        parameter_overrides({"compile_mode": "fastest"})


def test_node_parameters_stack_the_yaml_the_extra_yaml_and_the_given_arguments():
    """Both launch files give their node the YAML, then the extra YAML if any, then the launch
    arguments that are not empty (typed) and their own fixed values."""
    args = {name: "" for name in POLICY_LAUNCH_ARGS} | {"params_file": "/p.yaml", "extra_params_file": ""}
    assert node_parameters(args.get) == ["/p.yaml"]
    args |= {"extra_params_file": "/x.yaml", "control_hz": "15"}
    assert node_parameters(args.get) == ["/p.yaml", "/x.yaml", {"control_hz": 15.0}]
    assert node_parameters(args.get, autostart=True)[-1] == {"control_hz": 15.0, "autostart": True}
    with pytest.raises(ValueError, match="control_hz:='fast'"):
        node_parameters((args | {"control_hz": "fast"}).get)


def test_sim_launch_arguments_are_typed_and_validated_by_the_bridge_params():
    """sim.launch.py: empty arguments keep sim.yaml's values; given ones are typed by their
    `SimBridgeParams` field and refused with the argument's name when SimBridgeParams refuses them."""
    assert sim_bridge_overrides({name: "" for name in SIM_LAUNCH_ARGS}) == {}
    out = sim_bridge_overrides(
        {"env_id": "ee_vla/Reach-v0", "seed": "100000", "max_episodes": "10", "wrist_camera": " on "}
    )
    assert out == {"env_id": "ee_vla/Reach-v0", "seed": 100000, "max_episodes": 10, "wrist_camera": True}
    SimBridgeParams(**out)
    assert sim_bridge_overrides({"wrist_camera": "false"}) == {"wrist_camera": False}
    with pytest.raises(ValueError, match="wrist_camera:='maybe'"):
        sim_bridge_overrides({"wrist_camera": "maybe"})
    with pytest.raises(ValueError, match="seed:='ten'"):
        sim_bridge_overrides({"seed": "ten"})
    with pytest.raises(ValueError, match="max_episodes:='-1': SimBridgeParams.max_episodes: must be >= 0"):
        sim_bridge_overrides({"max_episodes": "-1"})
    with pytest.raises(ValueError, match="env_id:='Reach': SimBridgeParams.env_id"):
        sim_bridge_overrides({"env_id": "Reach"})
    with pytest.raises(ValueError, match="'speed' is not a sim_bridge parameter"):
        sim_bridge_overrides({"speed": "1"})


def test_fleet_arguments_become_policy_node_options():
    """fleet.launch.py: `namespaces` (spaces or commas) and the batching settings become
    `policy_node --namespaces ...` options; bad values fail the launch naming the argument."""
    assert fleet_arguments("robot1, /robot2/ fleet/arm3", {"max_batch": "", "batch_padding": "pow2"}) == [
        "--namespaces", "robot1", "robot2", "fleet/arm3", "--batch-padding", "pow2",
    ]  # fmt: skip
    assert fleet_arguments("a", {"batch_gather_s": "0.01", "max_batch": "0"})[2:] == [
        "--batch-gather-s", "0.01", "--max-batch", "0",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="namespaces:= is empty"):
        fleet_arguments(" ", {})
    with pytest.raises(ValueError, match="a namespace of its own"):
        fleet_arguments("robot1 /robot1", {})
    with pytest.raises(ValueError, match="'2robot' is not a ROS namespace"):
        fleet_arguments("robot1 2robot", {})
    for name, bad in (("batch_gather_s", "soon"), ("batch_gather_s", "2"), ("max_batch", "-1"), ("batch_padding", "x")):
        with pytest.raises(ValueError, match=f"{name}:='{bad}'"):
            fleet_arguments("robot1", {name: bad})
    with pytest.raises(ValueError, match="not a fleet setting"):
        fleet_arguments("robot1", {"batch": "4"})
    assert set(FLEET_LAUNCH_ARGS) == {"batch_gather_s", "max_batch", "batch_padding"}


@pytest.mark.parametrize("name", ["ee_vla.launch.py", "sim.launch.py", "fleet.launch.py"])
def test_launch_files_define_generate_launch_description(name):
    tree = ast.parse((LAUNCH / name).read_text())
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", ["ee_vla.launch.py", "sim.launch.py", "fleet.launch.py"])
def test_launch_descriptions_build(name):
    pytest.importorskip("launch_ros")
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchContext

    ld = PythonLaunchDescriptionSource(str(LAUNCH / name)).get_launch_description(LaunchContext())
    args = {a.name for a in ld.get_launch_arguments()}
    assert "model_path" in args
    if name == "ee_vla.launch.py":
        assert set(POLICY_LAUNCH_ARGS) | {"params_file", "autostart"} <= args
    if name == "fleet.launch.py":
        assert set(POLICY_LAUNCH_ARGS) | set(FLEET_LAUNCH_ARGS) | {"namespaces", "params_file", "autostart"} <= args
