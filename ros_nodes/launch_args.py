"""Launch-argument handling for `launch/*.launch.py`, ROS-free so it is tested without ROS.

Launch arguments arrive as strings. An empty string means "not given: keep the params YAML's
value", so the YAML stays the single source of defaults; given values are converted to the
parameter's type and validated here, so a typo fails the launch with the parameter's reason
instead of a node that later refuses to configure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ee_vla.flags import parse_bool
from ros_nodes.fleet import FleetConfig
from ros_nodes.params import check_namespace, dataclass_specs, param_specs, validate_param
from ros_nodes.sim_bridge import SimBridgeParams

POLICY_LAUNCH_ARGS = {
    "model_path": "Directory of the saved ee_vla policy",
    "instruction": "Instruction used until one arrives on the instruction topic",
    "image_topic": "sensor_msgs/Image input topic of the main camera (the policy's pixels)",
    "wrist_image_topic": "sensor_msgs/Image topic of the gripper camera (subscribed if the policy reads wrist_pixels)",
    "instruction_topic": "std_msgs/String instruction topic",
    "command_topic": "Command output topic (default: the command type's consumer)",
    "command_type": "twist | array | trajectory",
    "control_hz": "Command rate in Hz (0: the policy's training rate, from its ee_vla.json)",
    "dry_run": "true: log commands instead of publishing them",
    "decoder": "ceed | ceed_cap | ceed_2pass | jacobi | ar (decoder preset)",
    "max_iterations": "ceed/ceed_cap/ceed_2pass iteration cap (0: the preset's)",
    "tau": "ceed/ceed_cap/ceed_2pass relaxed convergence in bins (-1: the preset's)",
    "deadline_s": "wall-clock budget of one decode call in seconds (0: none)",
    "init": "repeat | prompt | warm (initial guess of jacobi/ceed)",
    "window": "tokens refined per forward pass (0: the preset's, the whole chunk)",
    "guess_in_prefill": "true: the prefill also runs the warm start's guess (jacobi/ceed; false: the preset's)",
    "device": "torch device (auto, cpu, cuda, ...; auto = cuda when available)",
    "dtype": "float32 | bfloat16 | float16 | float64 (model dtype)",
    "engine": "auto | eager | static | graph | compiled (decode engine; auto = CUDA graphs on a GPU)",
    "compile_mode": "inductor | frozen | max-autotune (torch.compile mode of the compiled engine)",
    "threads": "CPU threads of the policy (0: the cores available minus one)",
    "quantize": "none | int8 | fp8 | fp8_tensor (weight quantisation at load; fp8*: CUDA, compute capability >= 8.9)",
    "calibration": "fp8_tensor: file of `ee-vla eval --save-calibration` (empty: activation scales per call)",
    "unnorm_key": "OpenVLA checkpoints: dataset of the action statistics (empty: the only one)",
    "chunk_size": "actions per decode call (0: the model's)",
    "chunk_size_threshold": "decode once the planned actions last at most this fraction of a chunk (1: every image)",
    "chunk_start": "observation | arrival (a chunk's action 0 is due at its image's time, or when it is decoded)",
}
"""Parameters exposed as launch arguments (name -> description); empty = the YAML's value."""


def _convert(ros_type: str, text: str) -> Any:
    if ros_type == "bool":
        return parse_bool(text)
    if ros_type == "double":
        return float(text)
    if ros_type == "integer":
        return int(text)
    if ros_type == "string":
        return text
    raise ValueError(f"launch arguments of type {ros_type} are not supported")


def _typed_overrides(
    args: dict[str, str], types: dict[str, str], check: Callable[[str, Any], str | None], node: str
) -> dict[str, Any]:
    """The launch-argument strings of `args` that are not empty, converted to their parameter's
    ROS type (`types`) and checked by `check(name, value)` (a reason, or None when valid)."""
    out: dict[str, Any] = {}
    for name, text in args.items():
        if name not in types:
            raise ValueError(f"launch argument {name!r} is not a {node} parameter")
        if text is None or text == "":
            continue
        try:
            value = _convert(types[name], text)
        except ValueError as e:
            raise ValueError(f"launch argument {name}:={text!r}: {e}") from None
        reason = check(name, value)
        if reason is not None:
            raise ValueError(f"launch argument {name}:={text!r}: {reason}")
        out[name] = value
    return out


def parameter_overrides(args: dict[str, str]) -> dict[str, Any]:
    """Typed, validated parameter overrides from launch-argument strings (empty ones skipped).

    Raises:
        ValueError: naming the argument and why its value is invalid.
    """
    return _typed_overrides(args, {s.name: s.ros_type for s in param_specs()}, validate_param, "policy_node")


def node_parameters(value: Callable[[str], str], **fixed: Any) -> list[str | dict[str, Any]]:
    """The `parameters` of the policy node's launch action: the `params_file` YAML, then
    `extra_params_file` when given, then the typed overrides of the POLICY_LAUNCH_ARGS that are not
    empty and the `fixed` values. `value(name)` is the launch argument's string."""
    files: list[str | dict[str, Any]] = [value("params_file")]
    if value("extra_params_file"):
        files.append(value("extra_params_file"))
    overrides = {**parameter_overrides({name: value(name) for name in POLICY_LAUNCH_ARGS}), **fixed}
    return files + ([overrides] if overrides else [])


FLEET_LAUNCH_ARGS = {
    "batch_gather_s": "seconds the oldest pending call waits for other robots' calls (empty: 0.005)",
    "max_batch": "most robots per batched decode (empty or 0: all of them)",
    "batch_padding": "auto | pow2 | step4 | none: the batch sizes static engines are built for (empty: auto)",
}
"""fleet.launch.py's batching arguments (name -> description): `policy_node --namespaces`'s options."""


_FLEET_FIELDS = {
    "batch_gather_s": ("gather_s", float),
    "max_batch": ("max_batch", int),
    "batch_padding": ("padding", str),
}
"""FLEET_LAUNCH_ARGS -> (the `ros_nodes.fleet.FleetConfig` field, the parser of its launch string)."""


def fleet_arguments(namespaces: str, settings: dict[str, str]) -> list[str]:
    """`policy_node`'s command-line arguments for fleet.launch.py: `--namespaces` from `namespaces`
    (separated by spaces or commas) and the batching options of `settings` (FLEET_LAUNCH_ARGS names;
    empty strings skipped).

    Raises:
        ValueError: naming the argument and why its value is invalid.
    """
    names = [n for n in re.split(r"[\s,]+", namespaces or "") if n]
    if not names:
        raise ValueError(
            'launch argument namespaces:= is empty: give the robots\' namespaces, e.g. namespaces:="robot1 robot2"'
        )
    checked = [check_namespace(n) for n in names]
    if len(set(checked)) != len(checked):
        raise ValueError(f"launch argument namespaces: each robot needs a namespace of its own, got {checked}")
    out = ["--namespaces", *checked]
    for name, text in settings.items():
        if name not in FLEET_LAUNCH_ARGS:
            raise ValueError(f"launch argument {name!r} is not a fleet setting ({', '.join(FLEET_LAUNCH_ARGS)})")
        if text is None or text == "":
            continue
        field, parse = _FLEET_FIELDS[name]
        try:
            value = parse(text)
            if field == "max_batch" and value == 0:  # 0: one batch for every robot
                value = len(checked)
            FleetConfig(**{field: value})  # its checks are the fleet's own
        except ValueError:
            raise ValueError(f"launch argument {name}:={text!r}: {FLEET_LAUNCH_ARGS[name]}") from None
        out += ["--" + name.replace("_", "-"), text]
    return out


SIM_LAUNCH_ARGS = {
    "env_id": "Gymnasium env id (empty: sim.yaml's)",
    "seed": "Seed of the first episode (empty: sim.yaml's)",
    "max_episodes": "Stop after N episodes (0: never; empty: sim.yaml's)",
    "wrist_camera": "true: the bridge also publishes the gripper camera on wrist_camera/image_raw "
    "(empty: sim.yaml's; on anyway for a policy that reads wrist_pixels)",
}
"""sim.launch.py's arguments for the sim bridge (name -> description): `SimBridgeParams` fields."""


def _check_sim_param(name: str, value: Any) -> str | None:
    try:
        SimBridgeParams(**{name: value})
    except ValueError as e:
        return str(e)
    return None


def sim_bridge_overrides(args: dict[str, str]) -> dict[str, Any]:
    """Typed, validated sim-bridge parameters from launch-argument strings (empty or blank ones
    skipped; the others stripped), checked by `SimBridgeParams` itself.

    Raises:
        ValueError: naming the argument and why its value is invalid.
    """
    types = {s.name: s.ros_type for s in dataclass_specs(SimBridgeParams)}
    stripped = {name: (text or "").strip() for name, text in args.items()}
    return _typed_overrides(stripped, types, _check_sim_param, "sim_bridge")
