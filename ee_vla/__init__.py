"""ee_vla: fast Vision-Language-Action policies.

Parallel (Jacobi / CEED) decoding of action-token chunks, action streaming, MuJoCo evaluation
environments (`sim_envs`) and a ROS 2 node (`ros_nodes`). Heavy modules are imported lazily.
"""

from pathlib import Path

from ee_vla.threads import quiet_waiting

__version__ = "0.1.0"

DEFAULT_POLICY = Path(__file__).resolve().parent / "checkpoints" / "default"
"""The shipped default policy (a model directory installed with the package): the tabletop suite's
CEED-distilled student, `VLAPolicy.from_pretrained(ee_vla.DEFAULT_POLICY)` from any directory."""

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (ee_vla.threads).
quiet_waiting()
