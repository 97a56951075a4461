"""Weight quantisation of a loaded VLA's linear layers, through torchao.

    quantize_weights(vla.model, "int8")   # int8 weights (one scale per output channel), float compute
    quantize_weights(vla.model, "fp8")    # float8 e4m3 weights and per-row dynamic float8 activations (CUDA, sm89+)
    quantize_weights(vla.model, "fp8_tensor")  # the same with one scale per weight and per activation tensor
    quantize_weights(model, "fp8_tensor", calibration=load_calibration("calibration.json"))  # static scales

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

With a calibration (fp8_tensor only), each layer's activation scale is not computed per call but
fixed once: a calibration is the largest magnitude each layer's input reached while the policy ran
representative episodes (`recording_activation_amax`; `ee-vla eval --save-calibration FILE`), and
amax x `STATIC_HEADROOM` / 448 becomes the layer's scale for good (torchao 0.18's prototype static
float8 tensors). A call then casts its activations without first reducing them; an activation
beyond the headroom saturates at e4m3's largest value. The calibration must see what the decode
steps see: real observations, the prompt's first tokens (whose activations can be far larger than
the action tokens') and the decoder's windows.

Greedy decoding of a quantised model is exact with respect to *that* model (Jacobi equals AR on
it), not to the unquantised one: its tokens can differ where two logits are close.

Quantising changes no process-wide setting. torchao's configs would by default switch on some of
Inductor's global options (`set_inductor_config`), coordinate-descent tuning among them, for every
later compilation in the process: that tuning benchmarks a kernel the first time it runs, which
inside a CUDA graph's capture is an error, and it multiplies build times. The configs here turn
that off; `python -m ee_vla.benchmarks.profile --inductor KEY=VALUE` sets Inductor's options for
one run where they are wanted.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from ee_vla.models.fusion import fuse_projections
from ee_vla.runtime import QUANTIZE_MODES

_MARK = "_ee_vla_quantize"
ACTIVATION_AMAX_FLOOR = 1e-12
"""fp8 activations' scales are computed from max(|x|, this): zero rows quantise to zeros, not NaN,
and any real activation is far above it."""
STATIC_HEADROOM = 2.0
"""A calibrated layer's activation scale is amax x this / 448: an input up to this many times the
largest one the calibration saw still fits. float8 e4m3 is a floating-point format (about 18
binades, 3 mantissa bits in each), so the headroom costs precision only to the smallest inputs,
which fall one binade earlier below its normal range. (Recorded again over the seeds it is
evaluated on, some layers of the shipped policy reach 1.3x their calibration's amax.)"""
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
        return q.Int8WeightOnlyConfig(set_inductor_config=False)
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
        granularity=granularity, activation_value_lb=ACTIVATION_AMAX_FLOOR, set_inductor_config=False
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


def quantize_weights(model: torch.nn.Module, mode: str, calibration: Mapping[str, Calibrated] | None = None) -> int:
    """Quantise `model`'s linear layers in place (see the module docstring); returns how many.

    The projections that read the same input (q/k/v, gate/up) are fused into one layer first
    (`ee_vla.models.fusion`): one quantised product and one activation scaling instead of three or
    two. Idempotent for the same mode (a model already quantised with it is left as it is); a model
    quantised with another mode is a QuantizeError (reload it). fp8 skips layers whose dimensions
    are not multiples of 16, which its kernels need (tiny test models), and layers whose weight has
    an all-zero row, which its scaling cannot hold, and says so.

    `calibration` (fp8_tensor only): {layer name: `Calibrated`} (`load_calibration`,
    `recording_activation_amax`) fixes each layer's activation scale once (see the module
    docstring); a layer it does not name stays unquantised, and says so."""
    check_quantize_mode(mode, "quantize")
    if calibration is not None and mode != "fp8_tensor":
        raise QuantizeError(
            f"a calibration fixes per-tensor activation scales: it needs quantize='fp8_tensor', got {mode!r}"
        )
    done = quantized_mode(model)
    if mode == "none" or done == mode:
        return 0
    if done != "none":
        raise QuantizeError(f"the model is already quantised with {done!r}; reload it to use {mode!r}")
    param = next(model.parameters())
    cfg = _config(mode, param.device)
    fuse_projections(model)
    head = _output_layer(model)
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

    if calibration is None:
        _torchao().quantize_(model, cfg, filter_fn=take)
    else:
        chosen = _quantize_static(model, take, calibration, skipped)
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
        " (activation scales calibrated)" if calibration is not None else "",
    )
    return len(chosen)


class Calibrated(NamedTuple):
    """One layer's input during a calibration: the largest magnitude it reached, and its number of
    dimensions (a static scale has as many)."""

    amax: float
    ndim: int


def _output_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """The layer quantisation leaves alone: the output layer, whose action rows the engines read."""
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


def _calibrated_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The linear layers a calibration covers: every one of the fused model but the output layer."""
    fuse_projections(model)
    head = _output_layer(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


@contextmanager
def recording_activation_amax(model: torch.nn.Module) -> Iterator[dict[str, Calibrated]]:
    """While inside, the largest |input| of each linear layer fp8 may quantise (every one but the
    output layer, after `fuse_projections`, which this applies) is recorded into the dict yielded:
    {layer name: Calibrated(amax, ndim)}. Forward hooks: they run in eager forwards (the eager and
    static engines), not inside CUDA graph replays. A layer never run is absent."""
    table: dict[str, Calibrated] = {}

    def hook(name: str):
        def record(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach()
            amax = float(x.abs().amax()) if x.numel() else 0.0
            if not math.isfinite(amax):
                raise QuantizeError(f"calibration: layer {name!r} received a non-finite activation")
            old = table.get(name)
            table[name] = Calibrated(max(amax, old.amax if old else 0.0), x.ndim)

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in _calibrated_layers(model).items()]
    try:
        yield table
    finally:
        for h in handles:
            h.remove()


def _quantize_static(
    model: torch.nn.Module, take, calibration: Mapping[str, Calibrated], skipped: dict[str, list[str]]
) -> list[str]:
    """Convert each layer `take` accepts and `calibration` names to float8 per-tensor weights with
    a static activation scale of amax x `STATIC_HEADROOM` / 448; the chosen names. Layers `take`
    accepts that the calibration lacks are added to `skipped`."""
    from torchao.prototype.quantization.quant_api import Float8StaticActivationFloat8WeightConfig

    q = _torchao()
    layers = _calibrated_layers(model)
    foreign = sorted(set(calibration) - set(layers))
    if foreign:
        raise QuantizeError(
            f"the calibration names {len(foreign)} layers this model does not have ({foreign[0]}"
            + (", ..." if len(foreign) > 1 else "")
            + "): it was recorded on another model"
        )
    wanted = [name for name, m in layers.items() if take(m, name)]
    missing = [name for name in wanted if name not in calibration]
    if missing:
        skipped["not in the calibration"] = missing
    chosen = [name for name in wanted if name in calibration]
    if not chosen:
        raise QuantizeError("the calibration covers none of the layers to quantise")
    e4m3_max = torch.finfo(torch.float8_e4m3fn).max

    def config(name: str) -> Float8StaticActivationFloat8WeightConfig:
        c = calibration[name]
        amax = max(c.amax, ACTIVATION_AMAX_FLOOR) * STATIC_HEADROOM
        scale = torch.full((1,) * c.ndim, amax / e4m3_max, dtype=torch.float32, device=layers[name].weight.device)
        return Float8StaticActivationFloat8WeightConfig(
            act_quant_scale=scale, granularity=q.PerTensor(), set_inductor_config=False
        )

    q.quantize_(model, q.FqnToConfig(OrderedDict((name, config(name)) for name in chosen)), filter_fn=None)
    return chosen


def save_calibration(path: str | Path, table: Mapping[str, Calibrated], **about) -> Path:
    """Write a calibration (`recording_activation_amax`'s table) as JSON, with `about` (what it was
    recorded on: policy, envs, episodes, ...) kept beside it."""
    if not table:
        raise QuantizeError("the calibration is empty: no linear layer ran while it was recorded")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = {name: {"amax": c.amax, "ndim": c.ndim} for name, c in sorted(table.items())}
    path.write_text(json.dumps({"about": about, "layers": layers}, indent=1) + "\n")
    return path


def load_calibration(path: str | Path) -> dict[str, Calibrated]:
    """A calibration written by `save_calibration`; QuantizeError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"calibration file not found: {path}")
    try:
        layers = json.loads(path.read_text())["layers"]
        table = {str(n): Calibrated(float(v["amax"]), int(v["ndim"])) for n, v in layers.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise QuantizeError(
            f"{path} is not a calibration (JSON with 'layers': {{name: {{'amax', 'ndim'}}}}): {e!r}"
        ) from e
    bad = [n for n, c in table.items() if not (math.isfinite(c.amax) and c.amax >= 0 and c.ndim >= 2)]
    if not table or bad:
        raise QuantizeError(f"{path}: " + (f"layer {bad[0]!r} has an invalid amax or ndim" if bad else "no layers"))
    return table
