"""The policy node's parameters: one dataclass, validated the same way for every transport.

`PolicyParams` is the single source of truth. The rclpy node declares one ROS parameter per field
(`param_specs()` gives name, default, type and description, the description being the field's
docstring), validates every `set_parameters` request with `validate_param` (rejecting with a reason),
and builds a `PolicyParams` on configure. The DDS `ServeConfig` subclasses it, so `ee-vla serve` takes
the same options with the same checks.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ee_vla.runtime import RuntimeConfig
    from ee_vla.streaming import ScheduleConfig

COMMAND_TYPES = ("twist", "array", "trajectory")
"""twist: geometry_msgs/TwistStamped (MoveIt Servo); array: std_msgs/Float64MultiArray (ros2_control
forward_command_controller); trajectory: trajectory_msgs/JointTrajectory (a whole chunk as timed points)."""

DEFAULT_COMMAND_TOPICS = {
    "twist": "servo_node/delta_twist_cmds",
    "array": "forward_command_controller/commands",
    "trajectory": "joint_trajectory_controller/joint_trajectory",
}
"""Where each command type goes when `command_topic` is empty (the consumers' default topic names)."""

COMMAND_MSG_TYPES = {
    "twist": "geometry_msgs/msg/TwistStamped",
    "array": "std_msgs/msg/Float64MultiArray",
    "trajectory": "trajectory_msgs/msg/JointTrajectory",
}

DECODERS = ("ceed", "ceed_cap", "ceed_2pass", "jacobi", "ar")
"""`ee_vla.decoding.config.PRESETS` (kept here so that this module imports no torch; a test checks they agree)."""
ENGINES = ("auto", "eager", "static", "graph", "compiled")
"""`ee_vla.engine.ENGINES` (kept here so that this module imports no torch; a test checks they agree)."""
COMPILE_MODES = ("inductor", "frozen", "max-autotune", "aot_eager")
"""The keys of `ee_vla.engine.static.COMPILE_MODES` (kept here for the same reason, checked the same way)."""
DTYPES = ("float32", "bfloat16", "float16", "float64")
"""`ee_vla.runtime.DTYPES` (checked the same way)."""
QUANTIZE_MODES = ("none", "int8", "fp8", "fp8_tensor")
"""`ee_vla.runtime.QUANTIZE_MODES` (checked the same way)."""
INIT_GUESSES = ("", "repeat", "prompt", "warm")
"""`ee_vla.runtime.INIT_GUESSES`, and "" for the decoder preset's (checked the same way)."""
RUNTIME_PARAMS = (
    "decoder",
    "max_iterations",
    "tau",
    "deadline_s",
    "init",
    "window",
    "guess_in_prefill",
    "device",
    "dtype",
    "engine",
    "compile_mode",
    "quantize",
    "calibration",
    "threads",
    "unnorm_key",
    "chunk_size",
)
"""The parameters that are `ee_vla.runtime.RuntimeConfig` fields, under the same names (the
`--decoder`, `--max-iterations`, ... of `ee-vla eval`): `runtime_config()` builds one from them.
A ROS parameter has no None: 0 (max_iterations, window, deadline_s, chunk_size), -1 (tau) and ""
(init, unnorm_key, calibration) stand for RuntimeConfig's None: the decoder preset's or the model's value.
`n_action_steps` and `temporal_ensemble` are not among them: on a robot, which action runs when is
the node's timed schedule (`ee_vla.streaming`, with its own `blend` of overlapping chunks)."""

CommandType = Literal["twist", "array", "trajectory"]

CAMERA_TOPIC_PARAMS = {"pixels": "image_topic", "wrist_pixels": "wrist_image_topic"}
"""The parameter that names the sensor_msgs/Image topic of each camera a policy may read (its
observation key, `ee_vla.models.contract.ModelContract.cameras`): the node subscribes to the
topics of the cameras the loaded policy reads, and no others."""


@dataclass
class PolicyParams:
    """Everything the policy node (rclpy or DDS) is configured with."""

    model_path: str = ""
    """Directory of a saved ee_vla policy (`VLAPolicy.from_pretrained`); loaded on configure."""
    decoder: str = "ceed"
    """Decoder preset: ceed (relaxed convergence, tau=1) | ceed_cap (the CEED paper's cap of 2
    iterations) | ceed_2pass (the warm guess run in the prefill, then one iteration: two forward
    passes) | jacobi | ar. The options below override the preset's, as `ee-vla eval`'s do."""
    max_iterations: int = 0
    """ceed, ceed_cap and ceed_2pass only: iteration cap of the early exit (0: the preset's)."""
    tau: int = -1
    """ceed, ceed_cap and ceed_2pass only: relaxed convergence in bins (-1: the preset's)."""
    deadline_s: float = 0.0
    """Wall-clock budget of one decode call in seconds (0: none); not `decode_deadline_s`, which
    drops a chunk whose first action comes too late after its image."""
    init: str = ""
    """jacobi/ceed: initial guess of the window: repeat | prompt | warm (empty: the preset's)."""
    window: int = 0
    """jacobi/ceed: tokens refined per forward pass (0: the preset's, the whole rest of the chunk)."""
    guess_in_prefill: bool = False
    """jacobi/ceed: the prefill also runs the warm start's guess, as the first Jacobi iteration
    (one forward pass fewer when the guess begins right)."""
    device: str = "auto"
    """Torch device the policy runs on (auto: cuda when available, else cpu; cpu, cuda, cuda:1, ...)."""
    dtype: str = "float32"
    """Model dtype: float32 | bfloat16 | float16 | float64."""
    engine: str = "auto"
    """Decode engine: auto (CUDA graphs on a GPU, eager on a CPU) | eager | static | graph | compiled."""
    compile_mode: str = "inductor"
    """Compile mode of the compiled engine: inductor | frozen (faster on big models, more memory) | max-autotune."""
    quantize: str = "none"
    """Weight quantisation at load (torchao): none | int8 (half of bf16's memory) | fp8 | fp8_tensor
    (CUDA, compute capability >= 8.9; scaled per row | per tensor); docs/performance.md has what each
    costs and saves."""
    calibration: str = ""
    """fp8_tensor: a calibration file (`ee-vla eval --save-calibration`) fixing the activation scales
    once instead of per call (empty: per call)."""
    warmup: bool = True
    """On configure, decode one blank image (with `instruction`, or a stand-in) so that the engine is
    built, compiled and its CUDA graphs captured before the first real image; configure waits for it."""
    policy_process: bool = True
    """Run the policy in a child process, so decoding never holds the GIL the command timer needs."""
    threads: int = 0
    """CPU threads of torch (intra-op) decoding the policy; 0 = the cores available minus one, left
    to the command timer and the transport (ee_vla.threads)."""
    unnorm_key: str = ""
    """OpenVLA checkpoints: the dataset whose action statistics un-normalise the actions (empty: the only one)."""
    chunk_size: int = 0
    """Actions per decode call (0: the model's; an OpenVLA fine-tune trained on chunks: its chunk)."""
    decode_nice: int = 10
    """Niceness of the decoding process/thread (Linux, 0-19): the command timer wins a busy CPU."""
    instruction: str = ""
    """Instruction used until one arrives on `instruction_topic` (empty: wait for one)."""
    image_topic: str = "camera/image_raw"
    """sensor_msgs/Image input of the main camera, the policy's `pixels` (subscribed with sensor-data
    QoS: best effort, keep last 5)."""
    wrist_image_topic: str = "wrist_camera/image_raw"
    """sensor_msgs/Image input of the gripper camera, the policy's `wrist_pixels`: subscribed (as
    `image_topic`) only when the policy reads that camera (its ee_vla.json `cameras`)."""
    instruction_topic: str = "instruction"
    """std_msgs/String input; the newest non-empty instruction is used for the next chunk."""
    joint_state_topic: str = "joint_states"
    """sensor_msgs/JointState input, used as the policy's `agent_pos` when `use_joint_state` is true."""
    use_joint_state: bool = False
    """Feed JointState positions to the policy as `agent_pos` (and wait for one before decoding); on
    whatever is set for a policy trained with proprio (`agent_pos` in its contract)."""
    joint_names: tuple[str, ...] = ()
    """Joint order for `agent_pos` and trajectory commands (empty: JointState order; required for trajectory)."""
    command_type: str = "twist"
    """Output message: twist (TwistStamped) | array (Float64MultiArray) | trajectory (JointTrajectory)."""
    command_topic: str = ""
    """Where commands are published (empty: the consumer's default for `command_type`)."""
    diagnostics_topic: str = "/diagnostics"
    """diagnostic_msgs/DiagnosticArray output."""
    control_hz: float = 0.0
    """Rate of the command timer: one action per period. 0 = the policy's training rate (the
    contract in its ee_vla.json; 20 Hz when it records none). A rate that differs from
    the policy's is used, with one warning at configure."""
    dry_run: bool = True
    """Log the commands instead of publishing them (the safe default: opt in to move a robot);
    switched on while commanding, one stop command is published first."""
    action_low: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0)
    """Per-dimension lower limit every command is clipped to (one value per action dim)."""
    action_high: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    """Per-dimension upper limit every command is clipped to (one value per action dim)."""
    linear_scale: float = 0.1
    """twist: metres per second per unit of action dims 0-2."""
    angular_scale: float = 0.5
    """twist: radians per second per unit of action dims 3-5."""
    frame_id: str = "base_link"
    """Header frame of twist/trajectory commands."""
    image_timeout_s: float = 0.5
    """Stale-input watchdog: without a valid image for this long, send one stop command and go quiet."""
    decode_deadline_s: float = 1.0
    """Budget from an image to its chunk's first action; later chunks are dropped (acting on old input)."""
    chunk_size_threshold: float = 0.5
    """Decode the next chunk once the actions still planned last at most this fraction of a chunk (as
    LeRobot's async inference): 0.5 waits until half of the current chunk is sent, so the robot runs
    chunks rather than re-planning after nearly every action, and asks for fewer decodes (a fleet on
    one GPU); 1 decodes each new image as soon as the decoder is free."""
    image_width: int = 0
    """Expected image width in pixels (0: any); other sizes are rejected."""
    image_height: int = 0
    """Expected image height in pixels (0: any); other sizes are rejected."""
    on_new_chunk: str = "replace"
    """What a new chunk does to the rest of the previous one: replace | blend | hold (with
    chunk_start arrival)."""
    chunk_start: str = "observation"
    """When a chunk's first action is due: observation (at its image's arrival, so each action runs
    at the time it was planned for and those that fell due while the chunk decoded are skipped; not
    with on_new_chunk hold) | arrival (when it is decoded: a chunk starts from its action 0 however
    late it comes)."""
    on_empty: str = "hold"
    """No action queued: hold (repeat the last one) | zero (send zeros)."""
    keep_dims_on_zero: tuple[int, ...] = ()
    """Dims that keep their last value when zeroing or stopping (e.g. 6 for an absolute gripper)."""
    max_hold_s: float = 1.0
    """Repeat the last action at most this long before sending zeros (0: no limit)."""
    diagnostics_hz: float = 1.0
    """Rate of /diagnostics messages."""

    def __post_init__(self) -> None:
        for f in fields(PolicyParams):
            reason = validate_param(f.name, getattr(self, f.name))
            if reason is not None:
                raise ValueError(f"{type(self).__name__}.{f.name}: {reason}")
        # Normalise sequences to tuples (ROS hands lists, tyro tuples).
        self.joint_names = tuple(str(n) for n in self.joint_names)
        self.action_low = tuple(float(v) for v in self.action_low)
        self.action_high = tuple(float(v) for v in self.action_high)
        self.keep_dims_on_zero = tuple(int(v) for v in self.keep_dims_on_zero)
        reason = cross_check(self)
        if reason is not None:
            raise ValueError(f"{type(self).__name__}.{reason}")

    def runtime_config(self) -> RuntimeConfig:
        """The `ee_vla.runtime.RuntimeConfig` of these parameters (`RUNTIME_PARAMS`), the one
        `ee-vla eval --decoder ... --max-iterations ...` runs with the same values."""
        from ee_vla.runtime import RuntimeConfig

        return RuntimeConfig(
            decoder=self.decoder,  # type: ignore[arg-type]
            max_iterations=self.max_iterations or None,
            tau=None if self.tau < 0 else self.tau,
            deadline_s=self.deadline_s or None,
            init=self.init or None,  # type: ignore[arg-type]
            window=self.window or None,
            guess_in_prefill=self.guess_in_prefill,
            device=self.device,
            dtype=self.dtype,  # type: ignore[arg-type]
            engine=self.engine,  # type: ignore[arg-type]
            compile_mode=self.compile_mode,  # type: ignore[arg-type]
            quantize=self.quantize,  # type: ignore[arg-type]
            calibration=self.calibration or None,
            threads=self.threads,
            unnorm_key=self.unnorm_key or None,
            chunk_size=self.chunk_size or None,
        )

    def schedule_config(self, control_hz: float | None = None) -> ScheduleConfig:
        """The `ee_vla.streaming.ScheduleConfig` of these parameters: when each action of a chunk
        is due and what is sent between chunks; at `control_hz` (None: the parameter's, once
        `with_contract` has resolved a 0)."""
        from ee_vla.streaming import ScheduleConfig

        return ScheduleConfig(
            control_hz=self.control_hz if control_hz is None else control_hz,
            on_new_chunk=self.on_new_chunk,  # type: ignore[arg-type]
            chunk_start=self.chunk_start,  # type: ignore[arg-type]
            on_empty=self.on_empty,  # type: ignore[arg-type]
            keep_dims_on_zero=self.keep_dims_on_zero,
            max_hold_s=self.max_hold_s if self.max_hold_s > 0 else float("inf"),
        )

    @property
    def resolved_command_topic(self) -> str:
        """`command_topic`, or the default topic of `command_type` when empty."""
        return self.command_topic or DEFAULT_COMMAND_TOPICS[self.command_type]

    def camera_topics(self, cameras: tuple[str, ...] | list[str]) -> dict[str, str]:
        """The image topic of each of `cameras` (a policy's observation keys, `CAMERA_TOPIC_PARAMS`);
        ValueError naming a camera no parameter gives a topic to."""
        unknown = [c for c in cameras if c not in CAMERA_TOPIC_PARAMS]
        if unknown:
            known = ", ".join(f"{c} on {n}" for c, n in CAMERA_TOPIC_PARAMS.items())
            raise ValueError(
                f"the policy reads camera {unknown[0]!r}, which no parameter gives an image topic to "
                f"(the node subscribes {known})"
            )
        return {c: getattr(self, CAMERA_TOPIC_PARAMS[c]) for c in cameras}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PolicyParams:
        """Build from a name -> value mapping (ROS parameters); unknown names raise, None means default."""
        known = {f.name for f in fields(PolicyParams)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_ros(self) -> dict[str, Any]:
        """Name -> ROS-typed value (lists instead of tuples), e.g. to write a params YAML."""
        out: dict[str, Any] = {}
        for f in fields(PolicyParams):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _topic(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty topic name"
    if any(c.isspace() for c in v) or "//" in v or v.endswith("/"):
        return f"{v!r} is not a valid ROS topic name"
    return None


def _one_of(choices: tuple[str, ...]):
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {'|'.join(choices)}, got {v!r}"

    return check


def _positive(v: Any) -> str | None:
    return None if _finite(v) and v > 0 else f"must be a positive finite number, got {v!r}"


def _int_in(v: Any, low: int, high: int) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
    return None if ok else f"must be an integer in [{low}, {high}], got {v!r}"


def _non_negative_int(v: Any) -> str | None:
    return (
        None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16384
        else (f"must be an integer in [0, 16384], got {v!r}")
    )


def _limits(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of numbers, got {v!r}"
    if not all(_finite(x) for x in v):
        return f"must contain only finite numbers, got {list(v)!r}"
    return None


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else f"must be a string, got {type(v).__name__}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _names(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        return f"must be a list of non-empty strings, got {v!r}"
    if len(set(v)) != len(v):
        return f"must not repeat names, got {list(v)!r}"
    return None


def _dims(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 64 for x in v)
    return None if ok else f"must be a list of action dim indices in [0, 64), got {v!r}"


def _non_negative(v: Any) -> str | None:
    return None if _finite(v) and v >= 0 else f"must be a finite number >= 0, got {v!r}"


def _rate(v: Any) -> str | None:
    return None if _finite(v) and 0 < v <= 2000 else f"must be in (0, 2000] Hz, got {v!r}"


def _rate_or_model(v: Any) -> str | None:
    return None if _finite(v) and 0 <= v <= 2000 else f"must be in (0, 2000] Hz, or 0 for the policy's rate, got {v!r}"


def _optional_topic(v: Any) -> str | None:
    return None if v == "" else _topic(v)


_CHECKS = {
    "model_path": _string,
    "decoder": _one_of(DECODERS),
    "max_iterations": lambda v: _int_in(v, 0, 1024),
    "tau": lambda v: _int_in(v, -1, 1024),
    "deadline_s": _non_negative,
    "init": _one_of(INIT_GUESSES),
    "window": lambda v: _int_in(v, 0, 16384),
    "guess_in_prefill": _bool,
    "device": lambda v: None if isinstance(v, str) and v else "must be a non-empty device name (auto, cpu, cuda, ...)",
    "dtype": _one_of(DTYPES),
    "engine": _one_of(ENGINES),
    "compile_mode": _one_of(COMPILE_MODES),
    "quantize": _one_of(QUANTIZE_MODES),
    "calibration": _string,
    "warmup": _bool,
    "policy_process": _bool,
    "threads": lambda v: (
        None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 256
        else f"must be an integer in [0, 256], got {v!r}"
    ),
    "unnorm_key": _string,
    "chunk_size": lambda v: _int_in(v, 0, 64),
    "decode_nice": lambda v: (
        None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 19
        else f"must be an integer in [0, 19], got {v!r}"
    ),
    "instruction": _string,
    "image_topic": _topic,
    "wrist_image_topic": _topic,
    "instruction_topic": _topic,
    "joint_state_topic": _topic,
    "use_joint_state": _bool,
    "joint_names": _names,
    "command_type": _one_of(COMMAND_TYPES),
    "command_topic": _optional_topic,
    "diagnostics_topic": _topic,
    "control_hz": _rate_or_model,
    "dry_run": _bool,
    "action_low": _limits,
    "action_high": _limits,
    "linear_scale": _non_negative,
    "angular_scale": _non_negative,
    "frame_id": _string,
    "image_timeout_s": _positive,
    "decode_deadline_s": _positive,
    "chunk_size_threshold": lambda v: None if _finite(v) and 0 <= v <= 1 else f"must be in [0, 1], got {v!r}",
    "image_width": _non_negative_int,
    "image_height": _non_negative_int,
    "on_new_chunk": _one_of(("replace", "blend", "hold")),
    "chunk_start": _one_of(("arrival", "observation")),
    "on_empty": _one_of(("hold", "zero")),
    "keep_dims_on_zero": _dims,
    "max_hold_s": _non_negative,
    "diagnostics_hz": _rate,
}

LIVE_PARAMS = frozenset(
    {
        "dry_run",
        "action_low",
        "action_high",
        "linear_scale",
        "angular_scale",
        "image_timeout_s",
        "decode_deadline_s",
        "chunk_size_threshold",
        "instruction",
        "frame_id",
    }
)
"""Parameters a running node applies at once; the others take effect on the next configure."""


def validate_param(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for parameter `name` (None when it is)."""
    check = _CHECKS.get(name)
    if check is None:
        return f"unknown parameter {name!r}"
    return check(value)


def cross_check(p: PolicyParams) -> str | None:
    """Constraints between fields: '<field>: <reason>' or None."""
    if len(p.action_low) != len(p.action_high):
        return (
            f"action_high: has {len(p.action_high)} values but action_low has {len(p.action_low)} "
            "(one limit per action dim)"
        )
    bad = [i for i, (lo, hi) in enumerate(zip(p.action_low, p.action_high, strict=True)) if lo > hi]
    if bad:
        return f"action_low: exceeds action_high at dims {bad}"
    if p.command_type == "twist" and len(p.action_low) < 6:
        return f"action_low: twist commands need >= 6 action dims (xyz + rpy), limits have {len(p.action_low)}"
    if p.command_type == "trajectory" and not p.joint_names:
        return "joint_names: trajectory commands need the joint names the action dims map to"
    if p.keep_dims_on_zero and max(p.keep_dims_on_zero) >= len(p.action_low):
        return f"keep_dims_on_zero: dim {max(p.keep_dims_on_zero)} is outside the {len(p.action_low)} action dims"
    try:  # the decoder options must fit the decoder (e.g. no tau for ar), as in `ee-vla eval`
        p.runtime_config()
    except ValueError as e:
        return f"decoder: {e}"
    try:  # the schedule's own rules (e.g. chunk_start observation does not go with on_new_chunk hold)
        p.schedule_config(control_hz=p.control_hz or DEFAULT_CONTROL_HZ)
    except ValueError as e:
        return f"schedule: {e}"
    return None


DEFAULT_CONTROL_HZ = 20.0
"""The command rate when `control_hz` is 0 and the policy does not record its training rate."""


def with_contract(p: PolicyParams) -> tuple[PolicyParams, str | None]:
    """`p` with the defaults the policy's contract (`ee_vla.models.contract`) fixes, and a warning
    when a set rate differs from the one the policy was trained at.

    - `control_hz` 0 becomes the policy's rate, or DEFAULT_CONTROL_HZ when it records none or its
      directory cannot be read (loading it reports that);
    - `use_joint_state` is on for a policy that reads `agent_pos` (it cannot decode without one).

    Reads `ee_vla.json` only: no torch."""
    import dataclasses

    from ee_vla.models import ModelLoadError
    from ee_vla.models.contract import rate_mismatch, read_contract

    try:
        contract = read_contract(p.model_path) if p.model_path else None
    except ModelLoadError:
        contract = None
    if contract is not None and contract.uses_proprio and not p.use_joint_state:
        p = dataclasses.replace(p, use_joint_state=True)
    if p.control_hz == 0:
        hz = contract.control_hz if contract is not None and contract.control_hz else DEFAULT_CONTROL_HZ
        return dataclasses.replace(p, control_hz=hz), None
    warning = rate_mismatch(contract, p.control_hz, "the command timer (control_hz)") if contract else None
    return p, warning


@dataclass(frozen=True)
class ParamSpec:
    """What the rclpy node needs to declare one parameter."""

    name: str
    default: Any
    """ROS-typed default (lists, not tuples)."""
    ros_type: str
    """bool | integer | double | string | double_array | integer_array | string_array."""
    description: str
    live: bool


_ROS_TYPES = {
    "bool": "bool",
    "int": "integer",
    "float": "double",
    "str": "string",
    "tuple[float, ...]": "double_array",
    "tuple[int, ...]": "integer_array",
    "tuple[str, ...]": "string_array",
}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it (how tyro shows help, also used for ROS descriptors)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for prev, node in zip(body, body[1:], strict=False):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def dataclass_specs(cls: type, live: frozenset[str] | set[str] = frozenset()) -> list[ParamSpec]:
    """One spec per field of the parameters dataclass `cls`, in declaration order: its default (a
    tuple as a list), ROS type, docstring as description, and whether it is in `live`."""
    docs = field_docs(cls)
    specs = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        specs.append(
            ParamSpec(
                name=f.name,
                default=list(default) if isinstance(default, tuple) else default,
                ros_type=_ROS_TYPES[str(f.type)],
                description=docs.get(f.name, f.name),
                live=f.name in live,
            )
        )
    return specs


def param_specs() -> list[ParamSpec]:
    """One spec per `PolicyParams` field, in declaration order."""
    return dataclass_specs(PolicyParams, LIVE_PARAMS)


_NS_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_namespace(ns: str) -> str:
    """A ROS namespace without its leading/trailing slashes (`/robot1/` -> `robot1`, `fleet/arm2`
    stays); raises ValueError for one that ROS 2 would refuse."""
    name = str(ns).strip("/")
    tokens = name.split("/")
    if not name or not all(_NS_TOKEN.match(t) for t in tokens):
        raise ValueError(
            f"namespaces: {ns!r} is not a ROS namespace (tokens of letters, digits and _, "
            "not starting with a digit, separated by /)"
        )
    return name
