"""Weight quantisation of a loaded VLA's linear layers, through torchao.

    quantize_weights(vla.model, "int8")   # int8 weights (one scale per output channel), float compute
    quantize_weights(vla.model, "fp8")    # float8 e4m3 weights and per-row dynamic float8 activations (CUDA, sm89+)
    quantize_weights(vla.model, "fp8_tensor")  # the same with one scale per weight and per activation tensor
    quantize_weights(model, "fp8_tensor", calibrate=run_examples)  # activation scales fixed once, by examples

Every `torch.nn.Linear` of the network is converted (language model, projector and vision towers)
except the output layer: the engines read a slice of its rows (the action tokens' logits), and it
is small next to the rest. Before converting, the language model's projections that read the same
input are stacked into one layer (q/k/v, gate/up; `ee_vla.models.fusion`). Quantised weights take
half (int8, fp8) of bf16's memory: a 7B language model drops from about 13 GB to about 7 GB, which
is what lets it fit next to a robot's other software on a small GPU.

Speed is another matter, measured in docs/performance.md: replayed as plain CUDA graphs (the
`graph` engine) or run eagerly on a CPU, the extra kernels cost more than the bytes they save on
small batches. Compiled (`torch.compile` fuses them), a 7B step over 1 or 22 tokens on an H200 is
faster than bf16's in both fp8 modes, most with per-tensor scales (`fp8_tensor`).

fp8 scales each activation by its largest magnitude; an all-zero activation row (a padding token
whose embedding is zero, the junk a CUDA graph's warm-up runs) would get a zero scale and turn into
NaN, which the attention then spreads to every query through masked cache slots (0 x NaN). The
scale is therefore floored (`ACTIVATION_AMAX_FLOOR`), and a layer whose weight has an all-zero row
is left unquantised.

With `calibrate` (fp8_tensor only), each layer's activation scale is not computed per call but
fixed once: `calibrate(model)` runs representative forwards while observers record the largest
magnitude each layer's input reaches, and that amax / 448 becomes the layer's scale for good
(torchao's static float8 flow). A call then casts its activations without first reducing them;
an activation beyond the calibrated range saturates at e4m3's largest value. The calibration must
see what the decode steps see (the prompt's first tokens can carry far larger activations than the
action tokens); the profiler calibrates on its own workload.

Greedy decoding of a quantised model is exact with respect to *that* model (Jacobi equals AR on
it), not to the unquantised one: its tokens can differ where two logits are close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ee_vla.models.fusion import fuse_projections
from ee_vla.runtime import QUANTIZE_MODES

_MARK = "_ee_vla_quantize"
ACTIVATION_AMAX_FLOOR = 1e-12
"""fp8 activations' scales are computed from max(|x|, this): zero rows quantise to zeros, not NaN,
and any real activation is far above it."""
log = logging.getLogger(__name__)


class QuantizeError(ValueError):
    """A quantisation mode this machine or model cannot run (no torchao, no fp8 GPU, a model
    already quantised differently)."""


def check_quantize_mode(mode: str, owner: str) -> None:
    """Raise QuantizeError naming `owner` (e.g. "PolicyConfig.quantize") unless `mode` is known."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"{owner} must be one of {'|'.join(QUANTIZE_MODES)}, got {mode!r}")


def _torchao():
    """torchao.quantization (its import warnings about optional kernels are dropped by `ee_vla`)."""
    try:
        import torchao.quantization as tq
    except ImportError as e:
        raise QuantizeError(
            "quantize needs torchao, which is not installed: pip install 'ee_vla[quant]' (or torchao)"
        ) from e
    return tq


def _config(mode: str, device: torch.device):
    q = _torchao()
    if mode == "int8":
        return q.Int8WeightOnlyConfig()
    if device.type != "cuda":
        raise QuantizeError(f"quantize={mode!r} needs a CUDA GPU (compute capability >= 8.9), the model is on {device}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise QuantizeError(
            f"quantize={mode!r} needs a GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
            f"{torch.cuda.get_device_name(device)} is {major}.{minor}: use quantize='int8'"
        )
    # one scale per row (fp8) or per tensor (fp8_tensor): on an H200 the per-tensor product of a 7B
    # layer over a few rows runs near the memory's speed, the per-row one at half of it
    # (docs/performance.md, linear_bench)
    granularity = q.PerRow() if mode == "fp8" else q.PerTensor()
    return q.Float8DynamicActivationFloat8WeightConfig(
        granularity=granularity, activation_value_lb=ACTIVATION_AMAX_FLOOR
    )


def fp8_unfit(layer: torch.nn.Linear) -> str | None:
    """Why fp8 cannot hold `layer` (its kernels need dimensions that are multiples of 16; a weight
    row of zeros would get a zero scale, hence NaN weights), or None when it can."""
    if layer.in_features % 16 or layer.out_features % 16:
        return "dimensions not multiples of 16"
    if bool((layer.weight.detach().abs().amax(dim=1) == 0).any()):
        return "a weight row of zeros"
    return None


def engine_note(mode: str, engine: str) -> str | None:
    """What a user should know about running `mode` on `engine`, or None: fp8 layers beat bf16's
    speed only where torch.compile fuses their activation scaling (docs/performance.md)."""
    if mode.startswith("fp8") and engine != "compiled":
        return (
            f"quantize={mode} on engine={engine}: fp8 layers save memory here but run slower than "
            "unquantised ones; engine='compiled' fuses their scaling and makes them faster"
        )
    return None


def quantized_mode(model: torch.nn.Module) -> str:
    """The mode `quantize_weights` applied to `model` ("none" when it was not quantised)."""
    return getattr(model, _MARK, "none")


def quantize_weights(
    model: torch.nn.Module, mode: str, calibrate: Callable[[torch.nn.Module], object] | None = None
) -> int:
    """Quantise `model`'s linear layers in place (see the module docstring); returns how many.

    The projections that read the same input (q/k/v, gate/up) are fused into one layer first
    (`ee_vla.models.fusion`): one quantised product and one activation scaling instead of three or
    two. Idempotent for the same mode (a model already quantised with it is left as it is); a model
    quantised with another mode is a QuantizeError (reload it). fp8 skips layers whose dimensions
    are not multiples of 16, which its kernels need (tiny test models), and layers whose weight has
    an all-zero row, which its scaling cannot hold, and says so.

    `calibrate` (fp8_tensor only): a function running representative forwards of `model`, which
    fix each layer's activation scale once (static scaling, see the module docstring)."""
    check_quantize_mode(mode, "quantize")
    if calibrate is not None and mode != "fp8_tensor":
        raise QuantizeError(
            f"calibrate fixes per-tensor activation scales: it needs quantize='fp8_tensor', got {mode!r}"
        )
    done = quantized_mode(model)
    if mode == "none" or done == mode:
        return 0
    if done != "none":
        raise QuantizeError(f"the model is already quantised with {done!r}; reload it to use {mode!r}")
    param = next(model.parameters())
    cfg = _config(mode, param.device)
    fuse_projections(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen: list[str] = []
    skipped: dict[str, list[str]] = {}

    def take(module: torch.nn.Module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or module is head:
            return False
        why = fp8_unfit(module) if mode.startswith("fp8") else None
        if why is not None:
            skipped.setdefault(why, []).append(name)
            return False
        chosen.append(name)
        return True

    if calibrate is None:
        _torchao().quantize_(model, cfg, filter_fn=take)
    else:
        chosen = list(calibrate_fp8(model, take, calibrate))
    for why, names in skipped.items():
        log.warning(
            "quantize=%s: %d linear layers kept in %s (%s: %s)",
            mode,
            len(names),
            param.dtype,
            why,
            names[0] + (", ..." if len(names) > 1 else ""),
        )
    setattr(model, _MARK, mode)
    log.info(
        "quantize=%s: %d linear layers quantised%s",
        mode,
        len(chosen),
        " (activation scales calibrated)" if calibrate is not None else "",
    )
    return len(chosen)


def _unobserve(model: torch.nn.Module, layers: dict[str, torch.nn.Linear]) -> None:
    for name, m in layers.items():
        parent, _, attr = name.rpartition(".")
        plain = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        setattr(model.get_submodule(parent) if parent else model, attr, plain)


def calibrate_fp8(
    model: torch.nn.Module,
    take: Callable[[torch.nn.Module, str], bool],
    calibrate: Callable[[torch.nn.Module], object],
) -> dict[str, float]:
    """Convert the linear layers `take(module, name)` accepts to float8 weights with one scale per
    tensor and a *static* activation scale each: observers record the largest magnitude of each
    layer's input while `calibrate(model)` runs, then every layer keeps amax / 448 as its input's
    scale. A layer the calibration never runs stays unquantised (a warning names it); none run at
    all is a QuantizeError. Returns {layer name: calibrated input amax}. Runs on any device (the module docstring);
    `quantize_weights` reaches it for fp8_tensor with `calibrate`, on a GPU that has fp8."""
    from torchao.prototype.quantization.quant_api import (
        Float8ObservedLinear,
        Float8StaticActivationFloat8WeightConfig,
    )

    q = _torchao()
    observed = lambda module, name: isinstance(module, Float8ObservedLinear)  # noqa: E731
    q.quantize_(model, Float8StaticActivationFloat8WeightConfig(step="prepare", granularity=q.PerTensor()), take)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Float8ObservedLinear)}
    try:
        with torch.inference_mode():
            calibrate(model)
        missed = [name for name, m in layers.items() if getattr(m.input_act_obs, "min_val", None) is None]
        if len(missed) == len(layers):
            raise QuantizeError(
                f"calibration ran none of the {len(layers)} layers to quantise: the calibrate function "
                "must run forwards of the model"
            )
    except BaseException:
        _unobserve(model, layers)  # the plain layers the model had, so that it still runs as before
        raise
    if missed:  # e.g. a layer whose weight the model reads without calling it (nn.MultiheadAttention)
        log.warning(
            "quantize=fp8_tensor: %d linear layers kept unquantised (never run by the calibration: %s)",
            len(missed),
            missed[0] + (", ..." if len(missed) > 1 else ""),
        )
        _unobserve(model, {name: layers.pop(name) for name in missed})
    amax = {
        name: float(torch.maximum(m.input_act_obs.min_val.abs(), m.input_act_obs.max_val.abs()).max())
        for name, m in layers.items()
    }
    q.quantize_(model, Float8StaticActivationFloat8WeightConfig(step="convert", granularity=q.PerTensor()), observed)
    return amax
