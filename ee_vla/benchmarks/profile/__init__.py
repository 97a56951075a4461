"""Latency profiler of the decode engines on a model of a named real shape (random weights).

    python -m ee_vla.benchmarks.profile --shape openvla-7b --device cuda --dtype bfloat16 --out outputs/profile
    python -m ee_vla.benchmarks.profile --shape tiny --calls 3          # CPU: eager vs static engine
    python -m ee_vla.benchmarks.profile summarize outputs/profile/*.json

For one shape (`ee_vla.benchmarks.shapes`), one batch size and one device it measures, in one run:

* raw forwards: the prefill, and one step of width w (1 = an AR token; e.g. 22 = a Jacobi window)
  per engine, p50/p95/p99 over many calls (`ee_vla.timing.time_call`, device-synchronised);
* decode calls (prefill + `iter_decode`, as the policy runs them) per engine x decoder: AR, Jacobi
  to convergence and CEED with a FIXED iteration cap (random weights converge randomly, so the cap,
  e.g. 2 iterations plus the prefill, is what CEED's trained model is assumed to reach): call
  latency percentiles, prefill ms, per-iteration ms, iterations per chunk, tokens/s, actions/s,
  time to the first final action, speedup vs eager AR and vs the same engine's AR;
* HF `generate` (greedy, max_new_tokens = chunk tokens) as the stock baseline;
* token agreement of each engine with eager for the same decoder (bf16: near-ties may flip);
* the issue's targets when their entries were measured (7B: one Jacobi iteration over 22 tokens
  <= 5 ms in the graph and compiled engines; CEED at 2 iterations + prefill >= 100 actions/s).

With `--steps-only` (graph and compiled engines) it builds each engine for the step widths alone,
without a prompt, and reports its build seconds and graph replay times: one compiled forward per
width and nothing else (where compiling every shape would take too long, e.g. a quantised 7B).

With `--quantize MODE` the model is quantised before the engines are built, and the report gives
the weights' memory and the teacher-forced token agreement with the unquantised model;
`--quantize fp8_tensor --calibrate` fixes the activation scales from one recorded forward over the
prompt and a random chunk (`ee_vla.models.quantize`), reporting the range of the recorded amax.

With `--kernels N`, each step width is also recorded under `torch.profiler` and its N costliest
kernels per forward are kept (JSON ``raw[engine]["kernels_w<w>"]``, `<stem>_kernels.txt`).

Writes `profile_<shape>[_<N>cameras][_b<B>].json` (+ `.png`: latency histograms and speedup
bars). Numbers are printed and saved, never asserted: machines are noisy.

With `--cameras pixels wrist_pixels` (tiny, small) the random VLA reads those cameras: a random image
of each, its image tokens after the previous camera's in the prefill.

Modules: `config` (`ProfileConfig`), `timing` (the measurements, `run_profile`), `report` (kernel
tables, printed tables, plots, `summarize_files`); the package itself holds the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ee_vla.benchmarks.profile.config import ATTN_LAYERS, DECODERS, ProfileConfig
from ee_vla.benchmarks.profile.report import format_kernels, format_table, kernel_table, plot_profile, summarize_files
from ee_vla.benchmarks.profile.timing import run_profile
from ee_vla.benchmarks.shapes import ATTN_IMPLEMENTATIONS, SHAPES
from ee_vla.engine.static import COMPILE_MODES, SDPA_BACKENDS
from ee_vla.runtime import DTYPES, QUANTIZE_MODES, RuntimeConfig

__all__ = [
    "DECODERS",
    "ProfileConfig",
    "config_from_args",
    "format_kernels",
    "format_table",
    "kernel_table",
    "main",
    "plot_profile",
    "run_profile",
    "summarize_files",
]


def _parser() -> argparse.ArgumentParser:
    d = ProfileConfig()
    p = argparse.ArgumentParser(prog="python -m ee_vla.benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default=d.shape, choices=SHAPES)
    p.add_argument("--device", default="auto", help="torch device (auto = cuda when available)")
    p.add_argument("--dtype", default=d.runtime.dtype, choices=DTYPES)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--cameras",
        nargs="+",
        default=list(d.cameras),
        help="tiny/small: the cameras the random VLA reads, e.g. pixels wrist_pixels (image tokens for each)",
    )
    p.add_argument("--chunk-size", type=int, default=3, help="actions per chunk (7 tokens each)")
    p.add_argument("--prefix-len", type=int, default=None)
    p.add_argument("--left-pad", type=int, default=d.left_pad)
    p.add_argument(
        "--engines", nargs="*", default=list(d.engines), help="eager static graph compiled (default: by device)"
    )
    p.add_argument("--compile-mode", default=d.runtime.compile_mode, choices=list(COMPILE_MODES))
    p.add_argument(
        "--quantize",
        default=d.runtime.quantize,
        choices=list(QUANTIZE_MODES),
        help="weight quantisation of the model's linear layers before the engines are built (torchao)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="with --quantize fp8_tensor: activation scales fixed by one calibration forward, not per call",
    )
    p.add_argument(
        "--inductor",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="torch._inductor.config settings for the run, over the compile mode's own, e.g. "
        "coordinate_descent_tuning=True or triton.enable_pdl=False",
    )
    p.add_argument(
        "--action-logits",
        action="store_true",
        help="static/graph/compiled engines: decode steps compute only the action tokens' logits",
    )
    p.add_argument(
        "--attn-implementation",
        default=d.attn_implementation,
        choices=ATTN_IMPLEMENTATIONS,
        help="LM shapes: transformers' attention of the random model",
    )
    p.add_argument(
        "--attn-layer",
        default=d.attn_layer,
        choices=ATTN_LAYERS,
        help="with ee_splitkv: transformers' attention layers, or the engines' fused ones (split merge in/after it)",
    )
    p.add_argument(
        "--sdpa-backends",
        nargs="+",
        default=None,
        choices=SDPA_BACKENDS,
        help="attention kernels the static/graph/compiled engines may use (default: torch's choice)",
    )
    p.add_argument("--decoders", nargs="*", default=list(d.decoders), choices=DECODERS)
    p.add_argument("--max-iterations", type=int, default=None, help="ceed: iteration cap (default: ceed_cap's, 2)")
    p.add_argument("--tau", type=int, default=None, help="ceed: relaxed convergence in bins (default: 0)")
    p.add_argument("--no-generate", action="store_true", help="skip HF generate")
    p.add_argument("--step-widths", nargs="*", type=int, default=list(d.step_widths))
    p.add_argument("--calls", type=int, default=d.calls)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--step-iters", type=int, default=d.step_iters)
    p.add_argument(
        "--steps-only",
        action="store_true",
        help="time only the step widths' graph replays (graph/compiled engines, no prefill, decoders or generate)",
    )
    p.add_argument("--kernels", type=int, default=d.kernels, help="top kernels per step width (0 = off)")
    p.add_argument("--kernel-iters", type=int, default=d.kernel_iters)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--no-plots", action="store_true")
    return p


def config_from_args(argv: list[str] | None = None) -> ProfileConfig:
    a = _parser().parse_args(argv)
    return ProfileConfig(
        shape=a.shape,
        runtime=RuntimeConfig(
            device=a.device,
            dtype=a.dtype,
            compile_mode=a.compile_mode,
            quantize=a.quantize,
            max_iterations=a.max_iterations,
            tau=a.tau,
            chunk_size=a.chunk_size,
        ),
        batch_size=a.batch_size,
        cameras=tuple(a.cameras),
        prefix_len=a.prefix_len,
        left_pad=a.left_pad,
        engines=tuple(a.engines),
        calibrate=a.calibrate,
        inductor=tuple(a.inductor),
        attn_implementation=a.attn_implementation,
        attn_layer=a.attn_layer,
        action_logits=a.action_logits,
        sdpa_backends=None if a.sdpa_backends is None else tuple(a.sdpa_backends),
        decoders=tuple(a.decoders),
        generate=not a.no_generate,
        step_widths=tuple(a.step_widths),
        calls=a.calls,
        warmup=a.warmup,
        step_iters=a.step_iters,
        steps_only=a.steps_only,
        kernels=a.kernels,
        kernel_iters=a.kernel_iters,
        seed=a.seed,
        out=a.out,
        plots=not a.no_plots,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if argv and argv[0] == "summarize":
        print(summarize_files([Path(p) for p in argv[1:]]))
        return 0
    try:
        cfg = config_from_args(argv)
    except ValueError as e:  # a refused option: its message, not a traceback
        raise SystemExit(f"python -m ee_vla.benchmarks.profile: {e}") from None
    out = run_profile(cfg)
    return 1 if out["errors"] else 0
