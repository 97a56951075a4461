"""Launch one policy process serving several robots: one lifecycle node per namespace, one shared policy.

    ros2 launch ee_vla fleet.launch.py namespaces:="robot1 robot2 robot3" model_path:=/models/ceed device:=cuda
    ros2 launch ee_vla fleet.launch.py namespaces:="arm_a arm_b" max_batch:=2 batch_gather_s:=0.01 dry_run:=false

The process runs `policy_node --namespaces ...`: nodes /robot1/policy_node, /robot2/policy_node, ...
whose decode calls are batched on one loaded policy (docs/ros.md, "One GPU, many robots").
Parameters come from config/ee_vla.yaml (found with FindPackageShare), then `extra_params_file`,
then the launch arguments that are not empty, and apply to every robot's node (a YAML can still
address one robot: `/robot1/policy_node:`). With autostart:=true (default) each node configures
and activates itself; with false, drive each one with `ros2 lifecycle set /robot1/policy_node ...`.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from ros_nodes.launch_args import FLEET_LAUNCH_ARGS, POLICY_LAUNCH_ARGS, fleet_arguments, node_parameters


def _fleet_process(context, *args, **kwargs):
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    autostart = value("autostart").strip().lower() in ("true", "1")
    node = Node(
        package="ee_vla",
        executable="policy_node",
        arguments=fleet_arguments(value("namespaces"), {name: value(name) for name in FLEET_LAUNCH_ARGS}),
        parameters=node_parameters(value, autostart=autostart),
        output="screen",
        emulate_tty=True,
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("ee_vla"), "config", "ee_vla.yaml"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("namespaces", description="The robots' namespaces, separated by spaces"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="Parameters YAML"),
            DeclareLaunchArgument(
                "extra_params_file", default_value="", description="A second YAML applied over params_file"
            ),
            DeclareLaunchArgument(
                "autostart", default_value="true", description="Each node configures and activates itself"
            ),
            *[
                DeclareLaunchArgument(name, default_value="", description=text)
                for name, text in FLEET_LAUNCH_ARGS.items()
            ],
            *[
                DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: the YAML's value)")
                for name, text in POLICY_LAUNCH_ARGS.items()
            ],
            OpaqueFunction(function=_fleet_process),
        ]
    )
