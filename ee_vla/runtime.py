"""`RuntimeConfig`: how a policy runs (decoder, device, dtype, engine, threads), in one place.

    rt = RuntimeConfig(decoder="ceed_cap", max_iterations=3, device="cuda", engine="compiled")
    policy = rt.load_policy("path/to/model")          # a VLAPolicy decoding as `rt` says
    rt.decode_config()                                  # the DecodeConfig it decodes with

Every entry point that runs a policy takes these options under the same names: `ee-vla eval`,
`ee-vla bench` and `ee-vla dagger` nest a `RuntimeConfig` (their flags stay flat: `--decoder`,
`--max-iterations`, `--tau`, `--device`, ...), the engine profiler takes the ones it uses, and the
ROS node's parameters (`ros_nodes.params.PolicyParams`) carry the same names and build one with
`runtime_config()`. A decoder setting evaluated in simulation is thereby the setting the robot runs.

Why a dataclass of its own rather than `ee_vla.policy.PolicyConfig`: this is what a user *sets*
(a preset name and optional overrides, a device that may be ``auto``), flat and serialisable to a
command line, a YAML file or a JSON report, and importable without torch (config parsing, the ROS
launch process, `--help`). `PolicyConfig` is what `VLAPolicy` *runs with*: the resolved
`DecodeConfig` (replaceable while the policy lives, e.g. to compare decoders on one loaded model)
and a concrete device. `policy_config()` builds one from the other.

This module imports no torch, transformers or MuJoCo (a test checks it); `resolved()` and
`policy_config()` import torch when they must (to resolve ``device="auto"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ee_vla.decoding.config import PRESETS, DecodeConfig, parse_decoder_spec

DecoderName = Literal["ar", "jacobi", "ceed", "ceed_cap", "ceed_2pass"]
"""The decoder presets (`ee_vla.decoding.config.PRESETS`; a test checks they agree)."""
DECODERS: tuple[str, ...] = tuple(PRESETS)
EngineKind = Literal["auto", "eager", "static", "graph", "compiled"]
ENGINES: tuple[str, ...] = ("auto", "eager", "static", "graph", "compiled")
"""Decode engines (`ee_vla.engine.factory.make_prefill`)."""
Dtype = Literal["float32", "bfloat16", "float16", "float64"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")
CompileMode = Literal["inductor", "frozen", "max-autotune", "aot_eager"]
COMPILE_MODES: tuple[str, ...] = ("inductor", "frozen", "max-autotune", "aot_eager")
"""The keys of `ee_vla.engine.static.COMPILE_MODES` (kept here so that this module imports no
torch; a test checks they agree)."""
QuantizeMode = Literal["none", "int8", "fp8", "fp8_tensor"]
QUANTIZE_MODES: tuple[str, ...] = ("none", "int8", "fp8", "fp8_tensor")
"""Weight quantisation at load (`ee_vla.models.quantize`)."""
InitGuess = Literal["repeat", "prompt", "warm"]
INIT_GUESSES: tuple[str, ...] = ("repeat", "prompt", "warm")


class RuntimeConfigError(ValueError):
    """A `RuntimeConfig` that cannot run (a bad value, an option its decoder does not take, an
    engine the device cannot run)."""


@dataclass
class RuntimeConfig:
    """How the policy runs: its decoder and early-exit options, device, dtype, engine and threads."""

    decoder: DecoderName = "ceed"
    """Decoder preset (`DecodeConfig.preset`): ar | jacobi | ceed (relaxed convergence, tau=1) |
    ceed_cap (the CEED paper's fixed cap of 2 iterations) | ceed_2pass (the warm guess run in the
    prefill, then one iteration: two forward passes per call). The options below override the
    preset's."""
    max_iterations: int | None = None
    """ceed, ceed_cap and ceed_2pass only: iteration cap of the early exit (None = the preset's)."""
    tau: int | None = None
    """ceed, ceed_cap and ceed_2pass only: relaxed convergence in bins (None = the preset's)."""
    deadline_s: float | None = None
    """Wall-clock budget of one decode call in seconds (None = none). Breaks exactness of ar/jacobi."""
    init: InitGuess | None = None
    """jacobi/ceed: initial guess of the window: repeat | prompt | warm (None = the preset's)."""
    window: int | None = None
    """jacobi/ceed: tokens refined per forward pass (None = the preset's: the whole rest of the chunk)."""
    guess_in_prefill: bool = False
    """jacobi/ceed: the prefill also runs the initial guess after the prompt, so that it is the
    first Jacobi iteration as well: one forward pass fewer whenever a warm start's guess begins
    right, for a prefill that many tokens longer (docs/decoding.md). False leaves the preset's
    (on for ceed_2pass, off for the others)."""
    n_action_steps: int | None = None
    """Actions executed from each chunk before re-planning; the warm start shifts the previous
    chunk by this many actions (None = the whole chunk; 1 with `temporal_ensemble`)."""
    temporal_ensemble: float | None = None
    """ACT's temporal ensembling: a chunk decoded at every step, and the action executed the
    weighted mean of what the last chunk-size chunks planned for this step, weight exp(-m i) for the
    i-th oldest, m this value (ACT's 0.01: nearly equal weights). None = off; needs
    `n_action_steps` 1 or None (`ee_vla.policy.TemporalEnsemble`)."""
    device: str = "auto"
    """torch device of the policy: auto (cuda when available, else cpu) | cpu | cuda | cuda:1 ..."""
    dtype: Dtype = "float32"
    """Model dtype: float32 | bfloat16 | float16 | float64."""
    engine: EngineKind = "auto"
    """Decode engine (docs/performance.md): auto = CUDA graphs on a GPU, eager on a CPU; static =
    static-shape forwards without graphs; graph = CUDA graphs (CUDA only); compiled = torch.compile
    + CUDA graphs (fastest on large models, compiles each shape at first use)."""
    compile_mode: CompileMode = "inductor"
    """torch.compile mode of the compiled engine: inductor | frozen (faster on a 7B, more memory) |
    max-autotune | aot_eager (tests); ignored by the other engines."""
    threads: int = 0
    """CPU threads of torch (intra-op); 0 = the cores available minus one, left to the rest of the
    loop (env stepping, the command timer; `ee_vla.threads`)."""
    quantize: QuantizeMode = "none"
    """Weight quantisation of the model's linear layers at load, through torchao: none | int8 (int8
    weights: half of bf16's memory) | fp8 (float8 weights and activations, one scale per row; CUDA
    GPUs of compute capability >= 8.9) | fp8_tensor (the same with one scale per tensor). Tokens
    may differ from the unquantised model's where logits are close; speed depends on the engine
    (docs/performance.md)."""
    calibration: str | None = None
    """fp8_tensor: a calibration file (`ee-vla eval --save-calibration`: each layer's largest input
    seen over real episodes) that fixes the activation scales once instead of computing them per
    call: no reduction before each cast, faster on the compiled engine (docs/performance.md).
    None = scales per call."""
    unnorm_key: str | None = None
    """OpenVLA checkpoints: the dataset whose action statistics (norm_stats) un-normalise the
    actions (None = the only one; with several, loading names them)."""
    chunk_size: int | None = None
    """Actions per decode call: None = the model's (its ee_vla.json; 1 for an OpenVLA checkpoint,
    3 for the random models of `ee-vla bench` and the profiler). OpenVLA fine-tunes trained to emit
    chunks are loaded with theirs; an ee_vla model's is fixed by its training."""

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise RuntimeConfigError(
                f"RuntimeConfig.decoder: unknown decoder {self.decoder!r}, choose from {list(DECODERS)}"
            )
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("engine", self.engine, ENGINES)
        if self.engine == "graph" and self.device != "auto" and not str(self.device).startswith("cuda"):
            raise RuntimeConfigError(f"RuntimeConfig.engine: 'graph' needs a CUDA device, got device {self.device!r}")
        _check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _check_choice("quantize", self.quantize, QUANTIZE_MODES)
        if self.calibration is not None and (not isinstance(self.calibration, str) or not self.calibration.strip()):
            raise RuntimeConfigError(f"RuntimeConfig.calibration must be a file path, got {self.calibration!r}")
        if self.calibration is not None and self.quantize != "fp8_tensor":
            raise RuntimeConfigError(
                f"RuntimeConfig.calibration fixes fp8_tensor's activation scales: it needs quantize fp8_tensor, "
                f"got {self.quantize!r}"
            )
        if self.init is not None:
            _check_choice("init", self.init, INIT_GUESSES)
        if not isinstance(self.device, str) or not self.device.strip():
            raise RuntimeConfigError(
                f"RuntimeConfig.device must be a device name (auto, cpu, cuda, ...), got {self.device!r}"
            )
        if self.unnorm_key is not None and (not isinstance(self.unnorm_key, str) or not self.unnorm_key.strip()):
            raise RuntimeConfigError(f"RuntimeConfig.unnorm_key must be a dataset name, got {self.unnorm_key!r}")
        for name in ("max_iterations", "window", "n_action_steps", "chunk_size"):
            _check_int(name, getattr(self, name), low=1, optional=True)
        check_temporal_ensemble(self.temporal_ensemble, self.n_action_steps, "RuntimeConfig", RuntimeConfigError)
        _check_int("tau", self.tau, low=0, optional=True)
        _check_int("threads", self.threads, low=0, optional=False)
        if not isinstance(self.guess_in_prefill, bool):
            raise RuntimeConfigError(
                f"RuntimeConfig.guess_in_prefill must be true or false, got {self.guess_in_prefill!r}"
            )
        if self.deadline_s is not None and not (
            isinstance(self.deadline_s, (int, float)) and not isinstance(self.deadline_s, bool) and self.deadline_s > 0
        ):
            raise RuntimeConfigError(f"RuntimeConfig.deadline_s must be > 0 or None, got {self.deadline_s!r}")
        self.decode_config()  # the options must fit the decoder (e.g. no tau for ar)

    def decode_config(self, name: str | None = None, *, seed: int = 0) -> DecodeConfig:
        """The `DecodeConfig` of decoder preset `name` with this config's options applied. `name`
        may also be a variant of a preset, `PRESET:field=value:...` (`parse_decoder_spec`), whose
        own options then apply over this config's.

        `name` None: this config's `decoder`, and every option given must be valid for it (tau for
        ar is an error). A `name` of a decoder comparison (`ee-vla eval --compare`, `ee-vla bench`):
        each option applies to the decoders it is valid for (max_iterations and tau to the ceed
        ones, deadline_s to all). init, window and guess_in_prefill never apply to ar, which has
        no window to guess.
        `seed` seeds the `prompt` guess."""
        strict = name is None
        spec = self.decoder if name is None else name
        try:
            name, own = parse_decoder_spec(spec)
        except ValueError as e:
            raise RuntimeConfigError(str(e)) from None
        cfg = DecodeConfig.preset(name)
        changes: dict[str, Any] = {"seed": seed}
        if self.deadline_s is not None:
            changes["deadline_s"] = self.deadline_s
        for opt in ("init", "window"):  # ar has no window to guess or size
            if getattr(self, opt) is not None and name != "ar":
                changes[opt] = getattr(self, opt)
        if self.guess_in_prefill and (name != "ar" or strict):
            changes["guess_in_prefill"] = True
        for opt in ("max_iterations", "tau"):
            if getattr(self, opt) is not None and (cfg.method == "ceed" or strict):
                changes[opt] = getattr(self, opt)
        try:
            cfg = cfg.with_(**changes)
        except ValueError as e:
            raise RuntimeConfigError(f"RuntimeConfig options for decoder {name!r}: {e}") from None
        try:
            return cfg.with_(**own)
        except ValueError as e:
            raise RuntimeConfigError(f"decoder {spec!r}: {e}") from None

    def resolved(self) -> RuntimeConfig:
        """A copy with ``device="auto"`` replaced by the device it means (cuda when available, else
        cpu; imports torch), checked to run `engine` (graph needs CUDA)."""
        from ee_vla.engine.factory import resolve_engine

        out = replace(self, device=resolve_device(self.device))
        try:
            resolve_engine(out.engine, out.device)
        except ValueError as e:
            raise RuntimeConfigError(f"RuntimeConfig.engine: {e}") from None
        return out

    def policy_config(self, decoder: DecodeConfig | None = None, *, seed: int = 0):
        """The `ee_vla.policy.PolicyConfig` of this runtime (decoder: `decode_config(seed=seed)`
        unless given; device resolved)."""
        from ee_vla.policy import PolicyConfig

        return PolicyConfig(
            decoder=decoder if decoder is not None else self.decode_config(seed=seed),
            n_action_steps=self.n_action_steps,
            temporal_ensemble=self.temporal_ensemble,
            device=resolve_device(self.device),
            dtype=self.dtype,
            engine=self.engine,
            compile_mode=self.compile_mode,
            unnorm_key=self.unnorm_key,
            chunk_size=self.chunk_size,
            quantize=self.quantize,
            calibration=self.calibration,
        )

    def load_policy(self, path: str | Path, decoder: DecodeConfig | None = None, *, seed: int = 0):
        """`VLAPolicy.from_config(path, self.policy_config(decoder, seed=seed))`. Leaves torch's
        thread count alone: call `ee_vla.threads.configure_threads(self.threads)` first."""
        from ee_vla.policy import VLAPolicy

        return VLAPolicy.from_config(path, self.policy_config(decoder, seed=seed))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; any other name is returned as given
    once checked (imports torch): a device torch can name, and a CUDA device only where CUDA is
    available and has that index. Else `RuntimeConfigError` naming the device."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RuntimeConfigError(f"device={device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeConfigError(
                f"device={device!r} but CUDA is not available on this machine (use --device cpu or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeConfigError(
                f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as the JSON of a report: a nested `RuntimeConfig`'s fields inline under
    their own names (as on the command line), paths as strings."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, RuntimeConfig):
            out.update(asdict(value))
        elif isinstance(value, Path):
            out[f.name] = str(value)
        elif is_dataclass(value) and not isinstance(value, type):
            out[f.name] = asdict(value)
        else:
            out[f.name] = value
    return out


def check_temporal_ensemble(
    m: float | None, n_action_steps: int | None, owner: str, error: type[ValueError] = ValueError
) -> None:
    """A `temporal_ensemble` coefficient that cannot run raises `error` naming `owner`'s fields."""
    if m is None:
        return
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
        raise error(f"{owner}.temporal_ensemble must be a finite number or None, got {m!r}")
    if n_action_steps not in (None, 1):
        raise error(
            f"{owner}.temporal_ensemble decodes a chunk at every step: it needs n_action_steps 1 (or unset), "
            f"got n_action_steps={n_action_steps}"
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RuntimeConfigError(f"RuntimeConfig.{name} must be one of {'|'.join(choices)}, got {value!r}")


def _check_int(name: str, value: Any, *, low: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = f">= {low}" + (" or None" if optional else "")
        raise RuntimeConfigError(f"RuntimeConfig.{name} must be an int {bound}, got {value!r}")
