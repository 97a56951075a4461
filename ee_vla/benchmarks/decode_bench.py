"""`ee-vla bench`: decode latency of AR vs Jacobi vs CEED for one policy, measured in one run.

For a saved policy or a random model of a preset, decodes the same observations with every decoder
and reports the ms of the inputs (the observation's tensors on the device and the guess), of the
prefill and of one iteration, the rest of the call (`other`: the observation's checks, the decode
loop's own work, the actions back to the host), iterations and forward passes per chunk, tokens/s,
actions/s, time to the first streamed action, p50/p95/p99 call latency and the speedup vs AR measured
in the same run, with the device and library versions. Saves `bench.json` and PNG plots.
Numbers are printed and saved, never asserted: machines are noisy.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tyro

from ee_vla.decoding import DecodeConfig
from ee_vla.runtime import RuntimeConfig, config_dict
from ee_vla.threads import configure_threads
from ee_vla.timing import LatencyRecorder, environment_info, synchronize

log = logging.getLogger(__name__)


@dataclass
class DecodeBenchConfig:
    """Decode latency of AR, Jacobi and CEED on one machine: the same observations decoded by each
    decoder, timed per call (JSON and PNG plots in `out`)."""

    model: str = "tiny"
    """A policy directory (ee_vla or OpenVLA format), or a preset name for a randomly initialised
    model: tiny | small (ee_vla's) | openvla-7b | openvla-tiny (OpenVLA's network: both vision
    towers and the LLM; needs `--tokenizer`)."""
    decoders: tuple[str, ...] = ()
    """Decoders to compare (presets of DecodeConfig; empty = ar, jacobi and `--decoder`); 'ar' is
    the speedup reference. The decoder options (`--max-iterations`, `--tau`, ...) apply to each
    decoder they are valid for; a decoder given as `PRESET:field=value:...` (e.g.
    `ceed_cap:max_iterations=3:guess_in_prefill=true`) sets its own on top, so that variants of one
    preset compare in one run. `hf_generate` times transformers' `generate` on the eager model
    (greedy, the chunk's tokens; what OpenVLA's `predict_action` runs), image in -> actions out."""
    tokenizer: Path | None = None
    """The random OpenVLA presets: a directory with a Llama-2 tokenizer (tokenizer.json)."""
    runtime: tyro.conf.OmitArgPrefixes[RuntimeConfig] = field(default_factory=RuntimeConfig)
    """How the policy runs (`ee_vla.runtime.RuntimeConfig`, the options of `ee-vla eval`):
    `--decoder`, `--max-iterations`, `--tau`, ..., `--device` (auto = cuda when available),
    `--dtype`, `--engine`, `--compile-mode`, `--threads`."""
    calls: int = 30
    """Timed decode calls per decoder."""
    warmup: int = 3
    """Untimed calls per decoder before timing."""
    batch_size: int = 1
    """Observations decoded per call."""
    cameras: tuple[str, ...] = ()
    """A random ee_vla preset (`--model tiny|small`): the observation keys of the cameras it reads,
    e.g. `pixels wrist_pixels` (each camera adds its image tokens to the prefill); empty = `pixels`.
    A saved policy reads its own (`cameras` in its ee_vla.json), random observations of each."""
    seed: int = 0
    """Seed of the random observations (and of a random model)."""
    out: Path = Path("outputs/bench")
    """Directory for bench.json and plots."""
    plots: bool = True
    """Save PNG plots (latency histogram, iterations histogram, speedup bars)."""

    def __post_init__(self) -> None:
        if self.calls < 1:
            raise ValueError(f"DecodeBenchConfig.calls must be >= 1, got {self.calls}")
        if self.warmup < 0:
            raise ValueError(f"DecodeBenchConfig.warmup must be >= 0, got {self.warmup}")
        if self.batch_size < 1:
            raise ValueError(f"DecodeBenchConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.cameras:
            from ee_vla.models.contract import check_cameras

            self.cameras = check_cameras(tuple(self.cameras), "DecodeBenchConfig.cameras")
        if not self.decoders:
            self.decoders = tuple(dict.fromkeys(("ar", "jacobi", self.runtime.decoder)))
        self.decoders = tuple(self.decoders)
        for d in self.decoders:
            if d != HF_GENERATE:
                self.runtime.decode_config(d)  # raises naming the unknown decoder or the bad option

    def check_inputs(self) -> None:
        """A `model` that names a directory holds a saved policy (no torch: the CLI runs it first)."""
        if Path(self.model).exists() or "/" in self.model:  # a directory, not a preset name
            from ee_vla.models import check_model_dir

            check_model_dir(self.model, "DecodeBenchConfig.model:")
            if self.cameras:
                raise ValueError(
                    f"DecodeBenchConfig.cameras: {self.model} is a saved policy, which reads its own cameras "
                    "(its ee_vla.json); --cameras is for a random preset model"
                )
        elif self.cameras and self.model.startswith("openvla-"):
            raise ValueError(
                f"DecodeBenchConfig.cameras: --model {self.model} reads one camera; --cameras is for tiny|small"
            )
        elif self.model.startswith("openvla-") and (self.tokenizer is None or not self.tokenizer.is_dir()):
            raise ValueError(
                f"DecodeBenchConfig.tokenizer: --model {self.model} needs --tokenizer, a directory with a Llama-2 "
                f"tokenizer, got {self.tokenizer}"
            )


HF_GENERATE = "hf_generate"
"""The baseline decoder name: transformers' `generate` on the eager model."""


def decoder_config(name: str, cfg: DecodeBenchConfig) -> DecodeConfig:
    """Decoder `name` (a preset, or `PRESET:field=value:...`) with the runtime's decoder options
    applied where they are valid, then the spec's own."""
    return cfg.runtime.decode_config(name)


def _policy(cfg: DecodeBenchConfig):
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.vla import PRESETS
    from ee_vla.policy import VLAPolicy

    path = Path(cfg.model)
    if not path.exists() and cfg.model.startswith("openvla-"):
        import torch

        from ee_vla.models.openvla.random import random_openvla

        rt = cfg.runtime
        size = cfg.model.removeprefix("openvla-")
        vla = random_openvla(size, cfg.tokenizer, rt.device, getattr(torch, rt.dtype), rt.chunk_size or 1, cfg.seed)
        return VLAPolicy(vla, rt.policy_config(DecodeConfig.preset("ar")))
    if not path.exists():
        if cfg.model not in PRESETS:
            names = ", ".join([*PRESETS, "openvla-7b", "openvla-tiny"])
            raise ValueError(f"--model {cfg.model!r} is neither a directory nor a preset ({names})")
        chunk = cfg.runtime.chunk_size or 3  # a random preset model's: --chunk-size, else 3
        cams = {"cameras": cfg.cameras} if cfg.cameras else {}
        path = create_random_vla_dir(Path(tempfile.mkdtemp()) / cfg.model, cfg.model, chunk, cfg.seed, **cams)
    return VLAPolicy.from_config(path, cfg.runtime.policy_config(DecodeConfig.preset("ar")))


def _observations(policy, cfg: DecodeBenchConfig) -> dict:
    """`batch_size` random observations: an image of every camera the policy reads, an instruction
    and, for a proprio policy, `agent_pos`."""
    from ee_vla.benchmarks.shapes import random_camera_images

    rng = np.random.default_rng(cfg.seed)
    obs = {
        **random_camera_images(policy.vla, cfg.batch_size, rng),
        "instruction": ["pick up the red cube"] * cfg.batch_size,
    }
    if policy.vla.proprio_dim:
        obs["agent_pos"] = rng.normal(size=(cfg.batch_size, policy.vla.proprio_dim))
    return obs


def run_bench(cfg: DecodeBenchConfig) -> dict:
    """Benchmark every decoder on the same inputs; returns (and saves) the results."""
    cfg.check_inputs()
    cfg.runtime = rt = cfg.runtime.resolved()  # device auto -> cuda|cpu (imports torch)
    configure_threads(rt.threads)
    policy = _policy(cfg)
    obs = _observations(policy, cfg)
    n_tok = policy.vla.n_action_tokens * cfg.batch_size
    n_act = policy.chunk_size * cfg.batch_size
    results: dict[str, dict] = {}
    for name in cfg.decoders:
        if name == HF_GENERATE:
            results[name] = _time_generate(policy, obs, cfg)
            log.info("%s: p50 %.2f ms per call", name, results[name]["call_ms"]["p50"])
            continue
        policy.decoder = decoder_config(name, cfg)
        policy.reset()
        for _ in range(cfg.warmup):  # cold, then warm calls: every shape the timed calls use gets built
            policy.predict_action_chunk(obs)
        calls, inputs, prefill, per_iter, other, first_action = (LatencyRecorder() for _ in range(6))
        iterations, passes = [], []
        policy.reset()
        for _ in range(cfg.calls):
            with calls.time(rt.device):
                policy.predict_action_chunk(obs)
            st = policy.last_stats
            inputs.add(st.inputs_s)
            prefill.add(st.prefill_s)
            per_iter.extend(st.iteration_s)
            # the rest: the observation's checks, the decode loop's bookkeeping, the actions out
            other.add(max(0.0, calls.samples[-1] - st.inputs_s - st.prefill_s - sum(st.iteration_s)))
            iterations.append(st.iterations)
            passes.append(st.forward_passes)
            first_action.add(max(row[0] for row in st.unit_final_time_s))
        synchronize(rt.device)
        total = calls.total
        results[name] = {
            "decoder": asdict(policy.decoder),
            "call_ms": calls.summary_ms(),
            "inputs_ms": inputs.summary_ms(),
            "prefill_ms": prefill.summary_ms(),
            "iteration_ms": per_iter.summary_ms(),
            "other_ms": other.summary_ms(),
            "first_action_ms": first_action.summary_ms(),
            "iterations_per_chunk": float(np.mean(iterations)),
            "iterations_hist": np.bincount(iterations).tolist(),
            "forward_passes_per_chunk": float(np.mean(passes)),
            "tokens_per_s": n_tok * cfg.calls / total,
            "actions_per_s": n_act * cfg.calls / total,
            "chunks_per_s": cfg.calls / total,
            "call_s": calls.samples,
        }
        log.info(
            "%s: p50 %.2f ms per call, %.1f actions/s, %.2f iterations per chunk",
            name,
            results[name]["call_ms"]["p50"],
            results[name]["actions_per_s"],
            results[name]["iterations_per_chunk"],
        )
    ref, hf = results.get("ar"), results.get(HF_GENERATE)
    for r in results.values():
        r["speedup_vs_ar"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        r["speedup_vs_hf_generate"] = r["tokens_per_s"] / hf["tokens_per_s"] if hf else None
        r["forward_pass_reduction_vs_ar"] = (
            ref["forward_passes_per_chunk"] / r["forward_passes_per_chunk"] if ref else None
        )
    out = {
        "config": config_dict(cfg),
        "model": {
            "chunk_size": policy.chunk_size,
            "action_dim": policy.action_dim,
            "tokens_per_chunk": policy.vla.n_action_tokens,
            "cameras": list(policy.vla.cameras),
            "prompt_image_tokens": policy.vla.n_image_tokens * len(policy.vla.cameras),
            "parameters": sum(p.numel() for p in policy.vla.model.parameters()),
            "meta": policy.vla.meta,
        },
        "environment": environment_info(rt.device, rt.dtype),
        "results": results,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "bench.json").write_text(json.dumps(out, indent=2))
    if cfg.plots:
        plot_bench(out, cfg.out)
    print(format_table(out))
    log.info("saved %s", cfg.out / "bench.json")
    return out


def _time_generate(policy, obs: dict, cfg: DecodeBenchConfig) -> dict:
    """`generate` (greedy, DynamicCache, one token per forward) on the eager model, image in ->
    actions out: the baseline OpenVLA's `predict_action` runs."""
    import torch

    vla, dev = policy.vla, cfg.runtime.device
    n = vla.n_action_tokens

    def call() -> np.ndarray:
        inputs = vla.build_inputs(vla.camera_images(obs), obs["instruction"], obs.get("agent_pos"))
        with torch.inference_mode():
            out = vla.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return vla.tokens_to_actions(out[:, -n:].cpu().numpy())

    for _ in range(cfg.warmup):
        call()
    calls = LatencyRecorder()
    for _ in range(cfg.calls):
        with calls.time(dev):
            call()
    total = calls.total
    n_tok, n_act = n * cfg.batch_size, policy.chunk_size * cfg.batch_size
    nan = {k: (v if k == "n" else float("nan")) for k, v in calls.summary_ms().items()}
    return {
        "decoder": {"method": HF_GENERATE},
        "call_ms": calls.summary_ms(),
        "inputs_ms": nan,
        "prefill_ms": nan,
        "iteration_ms": nan,
        "other_ms": nan,
        "first_action_ms": calls.summary_ms(),  # generate returns the whole chunk at once
        "iterations_per_chunk": float(n - 1),
        "iterations_hist": [0] * (n - 1) + [cfg.calls],
        "forward_passes_per_chunk": float(n),
        "tokens_per_s": n_tok * cfg.calls / total,
        "actions_per_s": n_act * cfg.calls / total,
        "chunks_per_s": cfg.calls / total,
        "call_s": calls.samples,
    }


def format_table(out: dict) -> str:
    """The results, one row per decoder; `vs gen` = tokens/s relative to `hf_generate` when it ran."""
    env = out["environment"]
    gen = any(r.get("speedup_vs_hf_generate") for r in out["results"].values())
    w = max(11, *(len(name) for name in out["results"]))
    head = (
        f"{'decoder':<{w}} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'inputs':>7} {'prefill':>8} {'iter ms':>8} "
        f"{'other':>7} {'iters':>6} {'fwd':>5} {'tok/s':>8} {'act/s':>8} {'1st act':>8} {'vs ar':>8}"
        + (f" {'vs gen':>8}" if gen else "")
    )
    lines = [
        f"device: {env.get('device_name', out['config']['device'])}  dtype: {out['config']['dtype']}  "
        f"batch: {out['config']['batch_size']}  tokens/chunk: {out['model']['tokens_per_chunk']}  "
        f"cameras: {', '.join(out['model'].get('cameras', ['pixels']))}",
        head,
        "-" * len(head),
    ]
    for name, r in out["results"].items():
        ratios = [r["speedup_vs_ar"]] + ([r.get("speedup_vs_hf_generate")] if gen else [])
        lines.append(
            f"{name:<{w}} {r['call_ms']['p50']:>8.2f} {r['call_ms']['p95']:>8.2f} {r['call_ms']['p99']:>8.2f} "
            f"{r['inputs_ms']['p50']:>7.2f} {r['prefill_ms']['p50']:>8.2f} {r['iteration_ms']['p50']:>8.2f} "
            f"{r['other_ms']['p50']:>7.2f} "
            f"{r['iterations_per_chunk']:>6.2f} "
            f"{r['forward_passes_per_chunk']:>5.1f} {r['tokens_per_s']:>8.1f} {r['actions_per_s']:>8.1f} "
            f"{r['first_action_ms']['p50']:>8.2f}" + "".join(f" {f'{x:.2f}x' if x else '-':>8}" for x in ratios)
        )
    return "\n".join(lines)


def plot_bench(out: dict, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    res = out["results"]
    names = list(res)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    all_ms = np.concatenate([np.asarray(r["call_s"]) * 1e3 for r in res.values()])
    bins = np.linspace(all_ms.min(), all_ms.max(), 25)  # shared: every decoder's bars have one width
    for name, r in res.items():
        axes[0].hist(np.asarray(r["call_s"]) * 1e3, bins=bins, alpha=0.6, label=name)
    # iterations: a group of bars per iteration count that occurred, one bar per decoder
    counts = sorted({k for n in names for k, c in enumerate(res[n]["iterations_hist"]) if c})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        hist = res[name]["iterations_hist"]
        heights = [hist[k] if k < len(hist) else 0 for k in counts]
        axes[1].bar(np.arange(len(counts)) - 0.4 + (i + 0.5) * width, heights, width=width, label=name)
    axes[1].set_xticks(np.arange(len(counts)), [str(k) for k in counts])
    axes[0].set(xlabel="decode call latency (ms)", ylabel="calls", title="latency")
    axes[1].set(xlabel="iterations per chunk", ylabel="calls", title="iterations")
    for ax in axes[:2]:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of calls
        ax.legend()
    speedups = [res[n]["speedup_vs_ar"] or 0 for n in names]
    bars = axes[2].bar(names, speedups, color="tab:green")
    axes[2].bar_label(bars, labels=[f"{v:.2f}x" for v in speedups], padding=2)
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_ylim(0, max([1.0, *speedups]) * 1.15)
    axes[2].set(ylabel="tokens/s relative to AR", title=f"speedup ({out['environment'].get('device_name', '')})")
    fig.tight_layout()
    fig.savefig(directory / "bench.png", dpi=100)
    plt.close(fig)
