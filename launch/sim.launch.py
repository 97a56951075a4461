"""The closed loop without a robot: the policy node plus the sim bridge running an ee_vla env.

    ros2 launch ee_vla sim.launch.py env_id:=ee_vla/Reach-v0 seed:=100000 max_episodes:=10
    ros2 launch ee_vla sim.launch.py model_path:=/models/ceed env_id:=ee_vla/PickCube-v0

The policy is the shipped one unless `model_path` names another. With max_episodes > 0 the launch
ends when the bridge has run them (its last line gives the successes). The bridge reads the policy's
contract (its ee_vla.json): for a policy that reads the gripper camera (`wrist_pixels`) it renders
and publishes that camera on wrist_camera/image_raw, where the policy node subscribes to it.

The policy node is ee_vla.launch.py with config/sim.yaml over config/ee_vla.yaml (Float64MultiArray
commands, the env's 10 Hz, dry_run off: the commands only reach the simulator). MuJoCo renders
headless with MUJOCO_GL (egl on a GPU, osmesa on a CPU).
"""

from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    SetEnvironmentVariable,
    Shutdown,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ee_vla import DEFAULT_POLICY
from launch import LaunchDescription
from ros_nodes.launch_args import SIM_LAUNCH_ARGS, sim_bridge_overrides


def _sim_bridge(context, *args, **kwargs):
    overrides = sim_bridge_overrides({name: LaunchConfiguration(name).perform(context) for name in SIM_LAUNCH_ARGS})
    model_path = LaunchConfiguration("model_path").perform(context)
    if model_path:  # the bridge renders the camera size the policy was trained on
        overrides["model_path"] = model_path
    return [
        Node(
            package="ee_vla",
            executable="sim_bridge_node",
            name="sim_bridge",
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=[LaunchConfiguration("sim_params_file").perform(context)] + ([overrides] if overrides else []),
            output="screen",
            emulate_tty=True,
            on_exit=Shutdown(reason="the sim bridge finished its episodes"),  # max_episodes > 0
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("ee_vla")
    sim_params = PathJoinSubstitution([share, "config", "sim.yaml"])
    policy_launch = PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "ee_vla.launch.py"]))
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model_path", default_value=str(DEFAULT_POLICY), description="Directory of the saved ee_vla policy"
            ),
            *(
                DeclareLaunchArgument(name, default_value="", description=text)
                for name, text in SIM_LAUNCH_ARGS.items()
            ),
            DeclareLaunchArgument("sim_params_file", default_value=sim_params, description="Sim parameters YAML"),
            DeclareLaunchArgument("namespace", default_value="", description="Namespace of both nodes"),
            DeclareLaunchArgument("mujoco_gl", default_value="egl", description="MuJoCo GL backend: egl | osmesa"),
            SetEnvironmentVariable("MUJOCO_GL", LaunchConfiguration("mujoco_gl")),
            IncludeLaunchDescription(
                policy_launch,
                launch_arguments={
                    "model_path": LaunchConfiguration("model_path"),
                    "extra_params_file": LaunchConfiguration("sim_params_file"),
                    "namespace": LaunchConfiguration("namespace"),
                }.items(),
            ),
            OpaqueFunction(function=_sim_bridge),
        ]
    )
