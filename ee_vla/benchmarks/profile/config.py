"""The options of the engine profiler (`ee_vla.benchmarks.profile`): `ProfileConfig`."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

from ee_vla.benchmarks.shapes import SHAPES, VLA_SHAPES, check_attn_implementation
from ee_vla.decoding import DecodeConfig
from ee_vla.engine.factory import ENGINES
from ee_vla.engine.static import check_sdpa_backends
from ee_vla.runtime import RuntimeConfig

DECODERS = ("ar", "jacobi", "ceed")
ATTN_LAYERS = ("transformers", "fused", "fused_torch_merge")
"""`ProfileConfig.attn_layer` values."""


@dataclass
class ProfileConfig:
    """Options of the engine profiler."""

    shape: str = "tiny"
    """Model shape: openvla-7b | qwen2-0.5b (LM only, random prefix) | tiny | small (whole VLA)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """The runtime options of `ee-vla eval` this profiler uses: device (auto = cuda when
    available), dtype (bfloat16 on GPU for the real shapes), compile_mode (of the compiled engine,
    a key of `ee_vla.engine.static.COMPILE_MODES`), and the decoder options max_iterations, tau,
    window and deadline_s (applied to each decoder they are valid for). It compares `engines` x
    `decoders` rather than running one engine and decoder."""
    batch_size: int = 1
    """Observations per call (fixed per engine)."""
    cameras: tuple[str, ...] = ("pixels",)
    """VLA shapes: the observation keys of the cameras the random model reads, e.g. `pixels
    wrist_pixels` (each camera adds its image tokens to the prefill)."""
    prefix_len: int | None = None
    """LM shapes: prefix tokens (None: the shape's, 276 for OpenVLA)."""
    left_pad: int = 0
    """LM shapes with batch > 1: row b is left-padded by b * left_pad tokens."""
    engines: tuple[str, ...] = ()
    """Engines to compare (eager | static | graph | compiled); empty: eager + graph + compiled on CUDA,
    eager + static otherwise."""
    calibrate: bool = False
    """With `runtime.quantize` fp8_tensor: fix each layer's activation scale once, from one forward
    over the prompt and a random chunk of action tokens, instead of computing it from every call's
    activations (`recording_activation_amax`, `quantize_weights(calibration=)`): no reduction
    before each cast."""
    inductor: tuple[str, ...] = ()
    """Extra `torch._inductor.config` settings for the whole run, KEY=VALUE (e.g. `freezing=True`,
    `coordinate_descent_tuning=True`): to try Inductor's options on a shape without editing code.
    They take precedence over the compile mode's own (`triton.enable_pdl=False` turns off the
    modes' programmatic dependent launch)."""
    attn_implementation: str = "sdpa"
    """LM shapes: transformers' attention implementation of the random model (sdpa | eager |
    flex_attention | ee_splitkv; flex_attention only makes sense with the compiled engine, which
    compiles it into the forward; ee_splitkv is `ee_vla.engine.splitkv`'s split-KV kernel for the
    decode steps, SDPA for the prefill)."""
    attn_layer: str = "fused"
    """With `ee_splitkv`, how the static/graph/compiled engines run each attention layer (see
    `ee_vla.engine.attention`): `fused` (the engine's layers, what every other entry point runs:
    rotary embedding, cache write, attention and the merge of the key splits in one kernel),
    `fused_torch_merge` (the same, the splits merged by torch ops after the kernel) or
    `transformers` (transformers' layers, the kernel as their attention function)."""
    sdpa_backends: tuple[str, ...] | None = None
    """Attention kernels the static/graph/compiled engines may use (`StaticEngine(sdpa_backends=)`,
    names of `SDPA_BACKENDS`); None: torch's choice. The eager engine always runs torch's choice."""
    action_logits: bool = False
    """Static/graph/compiled engines: decode steps compute only the action tokens' logits (the
    argmax reads nothing else; `StaticEngine(logit_rows=)`), not the whole vocabulary's."""
    decoders: tuple[str, ...] = DECODERS
    """Decoders per engine: ar | jacobi (to convergence) | ceed with CEED's fixed iteration cap
    (the ceed_cap preset: 2 iterations after the prefill unless `runtime.max_iterations`): random
    weights converge randomly, so the cap is what a trained model is assumed to reach."""
    generate: bool = True
    """Also time HF `generate` (greedy, eager, DynamicCache)."""
    step_widths: tuple[int, ...] = (1, 22)
    """Raw step widths timed per engine (1 = one AR token; 22 = OpenVLA's 3-action window + EOS)."""
    calls: int = 20
    """Timed decode calls per engine x decoder."""
    warmup: int = 2
    """Untimed calls before each timed series."""
    step_iters: int = 50
    """Timed raw forwards per width."""
    steps_only: bool = False
    """Time only the step widths, as CUDA-graph replays of engines built without a prompt (graph and
    compiled engines): no prefill, decoders or generate, so a compiled engine compiles one forward
    per width and nothing else. For the cost of one iteration, and of building it, where compiling
    every shape would take too long (a quantised 7B). The KV cache holds no prompt (the attention
    reads the same number of slots, so the step costs the same)."""
    kernels: int = 0
    """Also record `kernel_iters` forwards of each step width under `torch.profiler` and keep the
    `kernels` kernels (CUDA; CPU: operators, self time) that take the most time per forward, with
    the sum over all of them: where a step's time goes, next to its measured latency. 0 = off."""
    kernel_iters: int = 10
    """Forwards recorded per width for `kernels`."""
    seed: int = 0
    """Seed of the random weights and inputs."""
    out: Path = Path("outputs/profile")
    """Directory for the JSON and PNG."""
    plots: bool = True
    """Save the PNG."""

    @property
    def chunk_size(self) -> int:
        """Actions per chunk (7 tokens each): `runtime.chunk_size`, 3 when not given."""
        return self.runtime.chunk_size or 3

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ProfileConfig.shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        for name, v in (
            ("batch_size", self.batch_size),
            ("calls", self.calls),
            ("step_iters", self.step_iters),
        ):
            if v < 1:
                raise ValueError(f"ProfileConfig.{name} must be >= 1, got {v}")
        if self.left_pad < 0:
            raise ValueError(f"ProfileConfig.left_pad must be >= 0, got {self.left_pad}")
        if self.warmup < 0:
            raise ValueError(f"ProfileConfig.warmup must be >= 0, got {self.warmup}")
        bad = [e for e in self.engines if e not in ENGINES or e == "auto"]
        if bad:
            raise ValueError(f"ProfileConfig.engines must be eager|static|graph|compiled, got {bad}")
        from ee_vla.models.contract import check_cameras

        self.cameras = check_cameras(self.cameras, "ProfileConfig.cameras")
        if self.cameras != ("pixels",) and self.shape not in VLA_SHAPES:
            raise ValueError(
                f"ProfileConfig.cameras applies to the VLA shapes ({', '.join(VLA_SHAPES)}); {self.shape}'s prefix "
                "is random token ids"
            )
        self.runtime = self.runtime.resolved()  # device auto -> cuda|cpu
        self.sdpa_backends = check_sdpa_backends(self.sdpa_backends, "ProfileConfig.sdpa_backends")
        check_attn_implementation(self.attn_implementation, "ProfileConfig.attn_implementation")
        if self.attn_layer not in ATTN_LAYERS:
            raise ValueError(f"ProfileConfig.attn_layer must be {'|'.join(ATTN_LAYERS)}, got {self.attn_layer!r}")
        bad = [d for d in self.decoders if d not in DECODERS]
        if bad:
            raise ValueError(f"ProfileConfig.decoders must be {'|'.join(DECODERS)}, got {bad}")
        if "graph" in self.engines and torch.device(self.runtime.device).type != "cuda":
            raise ValueError(
                f"ProfileConfig.engines: the graph engine needs a CUDA device, got {self.runtime.device!r}"
            )
        if self.kernels < 0 or self.kernel_iters < 1:
            raise ValueError(
                f"ProfileConfig.kernels must be >= 0 and kernel_iters >= 1, got {self.kernels}, {self.kernel_iters}"
            )
        if any(w < 1 for w in self.step_widths):
            raise ValueError(f"ProfileConfig.step_widths must be >= 1, got {self.step_widths}")
        if self.steps_only:
            if not self.step_widths:
                raise ValueError("ProfileConfig.steps_only needs step_widths")
            if torch.device(self.runtime.device).type != "cuda":
                raise ValueError("ProfileConfig.steps_only times CUDA-graph replays: it needs a CUDA device")
            if set(self.engine_list) - {"graph", "compiled"}:
                raise ValueError(
                    f"ProfileConfig.steps_only runs the graph and compiled engines only, got {list(self.engine_list)}"
                )
        if not self.decoders and not self.step_widths:
            raise ValueError("ProfileConfig: nothing to time (no decoders and no step_widths)")
        if self.calibrate and self.runtime.quantize != "fp8_tensor":
            raise ValueError(f"ProfileConfig.calibrate needs quantize fp8_tensor, got {self.runtime.quantize!r}")
        _ = self.inductor_settings  # validates the KEY=VALUE pairs
        self.out = Path(self.out)

    @property
    def inductor_settings(self) -> dict:
        """`inductor` parsed: {key: value} (values as Python literals, else strings); every key must
        be a `torch._inductor.config` setting (dotted for nested ones, e.g. `triton.cudagraphs`)."""
        out = {}
        for item in self.inductor:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"ProfileConfig.inductor entries are KEY=VALUE, got {item!r}")
            obj = inductor_config
            for part in key.split("."):
                if not hasattr(obj, part):
                    raise ValueError(f"ProfileConfig.inductor: torch._inductor.config has no setting {key!r}")
                obj = getattr(obj, part)
            try:
                out[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                out[key] = raw
        return out

    @property
    def engine_list(self) -> tuple[str, ...]:
        if self.engines:
            return self.engines
        cuda = torch.device(self.runtime.device).type == "cuda"
        return ("eager", "graph", "compiled") if cuda else ("eager", "static")

    def decode_config(self, name: str) -> DecodeConfig:
        """ar, jacobi: their presets; ceed: the ceed_cap preset. With the runtime's decoder options
        where they are valid; every decoder starts from the repeated first token (no guess given)."""
        if name == "ceed":
            return self.runtime.decode_config("ceed_cap").with_(init="repeat")
        return self.runtime.decode_config(name)

    @property
    def stem(self) -> str:
        cams = f"_{len(self.cameras)}cameras" if len(self.cameras) > 1 else ""
        return f"profile_{self.shape}{cams}" + (f"_b{self.batch_size}" if self.batch_size != 1 else "")
