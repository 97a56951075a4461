"""Launch the ee_vla policy node (lifecycle) with its parameters.

    ros2 launch ee_vla ee_vla.launch.py model_path:=/models/ceed instruction:="pick up the red cube"
    ros2 launch ee_vla ee_vla.launch.py model_path:=/models/ceed command_type:=array dry_run:=false

Parameters come from config/ee_vla.yaml (found with FindPackageShare), then `extra_params_file`,
then the launch arguments that are not empty. With autostart:=true (default) the node is
configured and then activated through lifecycle events; dry_run stays on unless set to false.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription
from ros_nodes.launch_args import POLICY_LAUNCH_ARGS, node_parameters


def _policy_node(context, *args, **kwargs):
    node = LifecycleNode(
        package="ee_vla",
        executable="policy_node",
        name=LaunchConfiguration("node_name").perform(context),
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=node_parameters(lambda name: LaunchConfiguration(name).perform(context)),
        output="screen",
        emulate_tty=True,
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE),
        condition=autostart,
    )
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE
                    )
                )
            ],
        ),
        condition=autostart,
    )
    return [node, activate_when_configured, configure]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("ee_vla"), "config", "ee_vla.yaml"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params, description="Parameters YAML"),
            DeclareLaunchArgument(
                "extra_params_file", default_value="", description="A second YAML applied over params_file"
            ),
            DeclareLaunchArgument("node_name", default_value="policy_node", description="Node name"),
            DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
            DeclareLaunchArgument(
                "autostart", default_value="true", description="Configure and activate the lifecycle node at launch"
            ),
            *[
                DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: the YAML's value)")
                for name, text in POLICY_LAUNCH_ARGS.items()
            ],
            OpaqueFunction(function=_policy_node),
        ]
    )
