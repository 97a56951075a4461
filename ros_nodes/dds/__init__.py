"""ROS 2 over plain Cyclone DDS: the ROS 2 wire format without rclpy.

`msgs` holds IDL structs faithful to the official .msg definitions (checked byte for byte against
rosbags' CDR codec in the tests), `transport` the ROS 2 naming (`/x` -> `rt/x`,
`pkg/msg/T` -> `pkg::msg::dds_::T_`) and QoS profiles. Needs the `dds` extra (`cyclonedds`).
"""
