"""What a saved policy expects of the robot or simulator that runs it, read without torch.

A model directory's `ee_vla.json` already fixes the chunk size, the camera image size, the action
and proprio dimensions (the tokenizers' statistics) and the prompt template. Training adds a
`contract` section with what the data fixed and the weights cannot show: the control rate the
demonstrations were recorded at (one action per 1 / control_hz seconds), the environments they
came from and the action space's description (units, gripper convention). `ModelContract` joins
both; eval, serve, the ROS node and the sim bridge take their defaults from it.

    contract = read_contract("ee_vla/checkpoints/default")
    contract.control_hz        # 10.0
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_vla.models.files import EE_VLA_FILE, PROMPT_TEMPLATE, ModelLoadError

CONTRACT_KEY = "contract"
"""The section of `ee_vla.json` that training writes (`recorded_contract`)."""
CAMERAS = ("pixels",)
"""The cameras of a policy that does not name its own (`ee_vla.json` without `cameras`): the one
image of the `pixels` observation."""
MAX_CAMERAS = 8
"""Most cameras a policy may read: each adds its image tokens to every prompt."""


def check_cameras(cameras, what: str = "cameras") -> tuple[str, ...]:
    """`cameras` as a tuple of observation keys, or ValueError naming what is wrong with it: a
    non-empty list of distinct non-empty strings (at most `MAX_CAMERAS`), other than the
    observation's `instruction` and `agent_pos`."""
    if isinstance(cameras, str) or not isinstance(cameras, (list, tuple)):
        raise ValueError(
            f"{what} must be a list of observation keys such as ['pixels', 'wrist_pixels'], got {cameras!r}"
        )
    names = tuple(cameras)
    if not names or len(names) > MAX_CAMERAS:
        raise ValueError(f"{what} must name 1 to {MAX_CAMERAS} cameras, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"{what}: a camera must be a non-empty observation key without spaces, got {name!r}")
        if name in ("instruction", "agent_pos"):
            raise ValueError(f"{what}: {name!r} is an observation key that is not an image")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names a camera twice: {list(names)}")
    return names


@dataclass(frozen=True)
class ModelContract:
    """The inputs a policy was trained on and the rate its actions are meant to be executed at."""

    chunk_size: int
    """Actions per decode call."""
    action_dim: int
    """Numbers per action."""
    image_size: int
    """Side of the square image the policy sees of each camera, in pixels."""
    proprio_dim: int
    """Length of the `agent_pos` observation the policy reads; 0 = it reads none."""
    prompt_template: str
    """How an instruction becomes the prompt: stripped, lower-cased, final punctuation removed, then
    placed at `{instruction}`."""
    control_hz: float | None = None
    """Rate the demonstrations were recorded at: one action per 1 / control_hz seconds. None = not
    recorded (a model directory written without it)."""
    env_ids: tuple[str, ...] = ()
    """Environments the training data came from (empty = not recorded)."""
    action_space: dict[str, Any] = field(default_factory=dict)
    """Description of the actions (names, bounds, units, gripper convention) as the data recorded it."""
    cameras: tuple[str, ...] = CAMERAS
    """The observation keys of the images the policy reads, in the prompt's order (`pixels` = the
    env's main camera, `wrist_pixels` = the suite's gripper camera)."""

    @property
    def uses_wrist_camera(self) -> bool:
        """Whether the policy reads the suite's gripper camera (`wrist_pixels`)."""
        return "wrist_pixels" in self.cameras

    @property
    def uses_proprio(self) -> bool:
        return self.proprio_dim > 0

    @classmethod
    def from_extra(cls, extra: dict, where: str = EE_VLA_FILE) -> ModelContract:
        """The contract of a parsed `ee_vla.json`; ModelLoadError naming `where` if it is malformed."""
        try:
            recorded = extra.get(CONTRACT_KEY) or {}
            proprio = extra.get("proprio_tokenizer")
            contract = cls(
                chunk_size=int(extra["chunk_size"]),
                action_dim=len(extra["action_tokenizer"]["stats"]["q01"]),
                image_size=int(extra["image_size"]),
                proprio_dim=len(proprio["stats"]["q01"]) if proprio else 0,
                prompt_template=str(extra["prompt_template"]),
                control_hz=None if recorded.get("control_hz") is None else float(recorded["control_hz"]),
                env_ids=tuple(str(e) for e in recorded.get("env_ids", ())),
                action_space=dict(recorded.get("action_space") or {}),
                cameras=check_cameras(extra.get("cameras", list(CAMERAS)), "cameras"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelLoadError(f"{where} is corrupt: {e!r}") from e
        if contract.control_hz is not None and not (math.isfinite(contract.control_hz) and contract.control_hz > 0):
            raise ModelLoadError(f"{where}: contract.control_hz must be a positive number, got {contract.control_hz}")
        return contract


def read_contract(model_dir: str | Path) -> ModelContract:
    """The contract of a saved policy directory (reads `ee_vla.json` only; no torch), or of an
    OpenVLA checkpoint (its config: chunk, camera size, the first dataset's action dimensions; no
    proprio, no recorded control rate)."""
    from ee_vla.models.openvla.format import is_openvla_dir, read_openvla

    if is_openvla_dir(model_dir):
        fmt = read_openvla(model_dir)
        first = fmt.action_stats(sorted(fmt.norm_stats)[0])
        return ModelContract(
            chunk_size=fmt.chunk_size,
            action_dim=len(first["q01"]),
            image_size=fmt.transforms[0].size,
            proprio_dim=0,
            prompt_template=PROMPT_TEMPLATE,
        )
    path = Path(model_dir) / EE_VLA_FILE
    try:
        extra = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"{model_dir} is not an ee_vla model directory (no {EE_VLA_FILE})") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is corrupt: {e}") from e
    if not isinstance(extra, dict):
        raise ModelLoadError(f"{path} is corrupt: expected a JSON object")
    return ModelContract.from_extra(extra, where=str(path))


def recorded_contract(env_ids: list[str] | tuple[str, ...], control_hz: float | None, action_space: dict) -> dict:
    """The `contract` section training writes into `ee_vla.json` for data from `env_ids`."""
    return {"control_hz": control_hz, "env_ids": list(env_ids), "action_space": dict(action_space)}


def rate_mismatch(contract: ModelContract, control_hz: float, what: str) -> str | None:
    """A warning when `what` runs at `control_hz` while the policy was trained at another rate;
    None when the rates agree or the model does not record its rate."""
    if contract.control_hz is None or math.isclose(control_hz, contract.control_hz, rel_tol=1e-3):
        return None
    return (
        f"{what} runs at {control_hz:g} Hz but the policy was trained on actions at {contract.control_hz:g} Hz "
        f"(its ee_vla.json): each action will last {contract.control_hz / control_hz:.2g}x as long as in training"
    )
