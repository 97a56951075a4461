"""ee_vla: fast Vision-Language-Action policies.

Parallel (Jacobi / CEED) decoding of action-token chunks, action streaming, MuJoCo evaluation
environments (`sim_envs`) and a ROS 2 node (`ros_nodes`). Heavy modules are imported lazily.
"""

from ee_vla.threads import quiet_waiting

__version__ = "0.1.0"

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (ee_vla.threads).
quiet_waiting()
