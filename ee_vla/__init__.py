"""ee_vla: fast Vision-Language-Action policies.

Parallel (Jacobi / CEED) decoding of action-token chunks, action streaming, MuJoCo evaluation
environments (`sim_envs`) and a ROS 2 node (`ros_nodes`). Heavy modules are imported lazily.
"""

import logging
from pathlib import Path

from ee_vla.threads import quiet_waiting

__version__ = "0.1.0"

DEFAULT_POLICY = Path(__file__).resolve().parent / "checkpoints" / "default"
"""The shipped default policy (a model directory installed with the package): the tabletop suite's
policy, chunks of 8 actions decoded in parallel by CEED (docs/training.md),
`VLAPolicy.from_pretrained(ee_vla.DEFAULT_POLICY)` from any directory."""

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (ee_vla.threads).
quiet_waiting()


def _drop_optional_kernel_warnings() -> None:
    """transformers imports torchao whenever it is installed (at the first `from_pretrained`), and
    importing it logs a warning per optional compiled kernel the installed torch build cannot load
    and per enum it registers with torch; none concerns what ee_vla runs (`ee_vla.models.quantize`),
    and on a CPU machine every model load would print them. Only those records are dropped."""

    def harmless(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (
            (record.name == "torchao" and msg.startswith("Failed to load") and ".so" in msg)
            or (record.name == "torch.utils._pytree" and "is an Enum subclass and is now natively supported" in msg)
        )

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addFilter(harmless)


_drop_optional_kernel_warnings()
