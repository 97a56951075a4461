"""ee_vla's ROS 2 layer: a policy node, a sim bridge, and the same logic over plain Cyclone DDS.

Everything the nodes do lives in ROS-free modules that are tested without ROS:

* `params`      - every node parameter as one validated dataclass (and the ROS descriptors made from it);
* `images`      - sensor_msgs/Image fields <-> RGB numpy arrays (rgb8/bgr8/rgba8/bgra8/mono8);
* `safety`      - per-dim clipping, the stale-input watchdog, once-per-cause logging;
* `diagnostics` - publish-rate and decode-latency statistics, DiagnosticStatus contents;
* `messages`    - building command/diagnostic/image messages for either transport;
* `runner`      - the policy runner: lifecycle, control tick, `ee_vla.streaming.ChunkSchedule` glue; its
  parts `runner_inputs` (input callbacks), `runner_decode` (worker thread, decode deadline),
  `runner_status` (/diagnostics) and `runner_types` (`Emit`, `ActionChunkPolicy`);
* `output`      - publishing the runner's commands, or logging them in dry-run mode;
* `policy_process` - the policy in a child process (the command timer never waits for torch's GIL);
* `fleet`       - one loaded policy serving many robots: their decode calls batched, each row streamed
  to its own runner (`serve --namespaces`, `policy_node --namespaces`);
* `launch_args` - typed, validated launch-argument overrides;
* `sim_bridge`  - stepping an `ee_vla/*` Gymnasium env with incoming commands;
* `bench`       - the DDS delivery/jitter/latency benchmark (`python -m ros_nodes.bench`; the soak mode
  in `bench_soak`, what both modes share in `bench_common`); `bench_fleet` - robots served by one
  device, batched vs one call at a time (`python -m ros_nodes.bench_fleet`).

Two transports drive the same runner: `policy_node` / `sim_bridge_node` (rclpy lifecycle / plain
nodes, imported only on a ROS 2 machine) and `serve` / `sim_serve` (Cyclone DDS with ROS 2 wire naming,
for a machine without ROS). rclpy is never imported by the ROS-free modules.
"""
