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

With `--kernels N`, each step width is also recorded under `torch.profiler` and its N costliest
kernels per forward are kept (JSON ``raw[engine]["kernels_w<w>"]``, `<stem>_kernels.txt`).

Writes `profile_<shape>[_b<B>].json` (+ `.png`: latency histograms and speedup bars). Numbers are
printed and saved, never asserted: machines are noisy.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config as inductor_config

from ee_vla.benchmarks.shapes import ATTN_IMPLEMENTATIONS, SHAPES, Workload, build_workload, check_attn_implementation
from ee_vla.decoding import DecodeConfig, decode
from ee_vla.engine.factory import ENGINES, make_prefill
from ee_vla.engine.static import COMPILE_MODES, SDPA_BACKENDS, check_sdpa_backends
from ee_vla.runtime import DTYPES, RuntimeConfig, config_dict
from ee_vla.timing import LatencyRecorder, environment_info, summarize, synchronize, time_call

log = logging.getLogger(__name__)

DECODERS = ("ar", "jacobi", "ceed")


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
    chunk_size: int = 3
    """Actions per chunk (7 tokens each)."""
    prefix_len: int | None = None
    """LM shapes: prefix tokens (None: the shape's, 276 for OpenVLA)."""
    left_pad: int = 0
    """LM shapes with batch > 1: row b is left-padded by b * left_pad tokens."""
    engines: tuple[str, ...] = ()
    """Engines to compare (eager | static | graph | compiled); empty: eager + graph + compiled on CUDA,
    eager + static otherwise."""
    inductor: tuple[str, ...] = ()
    """Extra `torch._inductor.config` settings for the whole run, KEY=VALUE (e.g. `freezing=True`,
    `coordinate_descent_tuning=True`): to try Inductor's options on a shape without editing code."""
    attn_implementation: str = "sdpa"
    """LM shapes: transformers' attention implementation of the random model (sdpa | eager |
    flex_attention | ee_splitkv; flex_attention only makes sense with the compiled engine, which
    compiles it into the forward; ee_splitkv is `ee_vla.engine.splitkv`'s split-KV kernel for the
    decode steps, SDPA for the prefill)."""
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

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ProfileConfig.shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        for name, v in (
            ("batch_size", self.batch_size),
            ("chunk_size", self.chunk_size),
            ("calls", self.calls),
            ("step_iters", self.step_iters),
        ):
            if v < 1:
                raise ValueError(f"ProfileConfig.{name} must be >= 1, got {v}")
        if self.warmup < 0:
            raise ValueError(f"ProfileConfig.warmup must be >= 0, got {self.warmup}")
        bad = [e for e in self.engines if e not in ENGINES or e == "auto"]
        if bad:
            raise ValueError(f"ProfileConfig.engines must be eager|static|graph|compiled, got {bad}")
        self.runtime = self.runtime.resolved()  # device auto -> cuda|cpu
        self.sdpa_backends = check_sdpa_backends(self.sdpa_backends, "ProfileConfig.sdpa_backends")
        check_attn_implementation(self.attn_implementation, "ProfileConfig.attn_implementation")
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
        if not self.decoders and not self.step_widths:
            raise ValueError("ProfileConfig: nothing to time (no decoders and no step_widths)")
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
        return f"profile_{self.shape}" + (f"_b{self.batch_size}" if self.batch_size != 1 else "")


def _ms(summary: dict) -> dict:
    return {k: (v * 1e3 if k != "n" else v) for k, v in summary.items()}


def _raw_forwards(cfg: ProfileConfig, wl: Workload, prefill) -> dict:
    """Prefill and fixed-width step latency of one engine."""
    dev = wl.device
    out = {
        "prefill_ms": time_call(
            lambda: prefill(wl.model, **wl.inputs), cfg.warmup, max(3, cfg.step_iters // 5), dev
        ).summary_ms()
    }
    step, _, _ = prefill(wl.model, **wl.inputs)
    lo, hi = wl.action_range
    g = torch.Generator().manual_seed(cfg.seed)
    engine = getattr(step, "engine", None)
    for w in cfg.step_widths:
        toks = torch.randint(lo, hi + 1, (cfg.batch_size, w), generator=g).to(dev)
        out[f"step_w{w}_ms"] = time_call(lambda t=toks: step(t, 0), cfg.warmup + 1, cfg.step_iters, dev).summary_ms()
        if engine is not None and engine.uses_graphs:  # the device's share of the step, without the host's
            gw = engine.width_for(w)
            out[f"replay_w{w}_ms"] = engine.replay_ms(gw, cfg.step_iters)
            # one replay at a time, synchronised around it as the step is: the launch and the wait
            one = time_call(lambda gw=gw: engine.replay(gw), cfg.warmup, cfg.step_iters, dev).summary_ms()
            out[f"replay_w{w}_ms_synced"] = one["p50"]
        if cfg.kernels:
            out[f"kernels_w{w}"] = kernel_table(lambda t=toks: step(t, 0), dev, cfg.kernel_iters, cfg.kernels)
    return out


def kernel_table(fn, device, iters: int, top: int) -> dict:
    """Where `fn`'s time goes: `iters` calls of it under `torch.profiler`, grouped by kernel name
    (on CUDA: the device kernels, CUDA-graph replays included; on CPU: operators by self time).
    Returns ``per_forward_ms`` (the sum over every kernel, per call: compare it with the measured
    latency to see the idle gaps), ``n_kernels`` (distinct names) and ``top``, the `top` names with
    the most time: ``name``, ``ms`` and ``calls`` per forward, ``share`` of ``per_forward_ms``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    fn()  # nothing lazy (a first capture, an allocation) inside the recording
    synchronize(dev)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(iters):
            fn()
        synchronize(dev)
    total: dict[str, float] = {}
    calls: dict[str, int] = {}
    for e in prof.events():
        if cuda and e.device_type != DeviceType.CPU:
            us = e.device_time_total
        elif not cuda and e.device_type == DeviceType.CPU and not e.is_async:
            us = e.self_cpu_time_total
        else:
            continue
        if us <= 0:
            continue
        total[e.name] = total.get(e.name, 0.0) + us
        calls[e.name] = calls.get(e.name, 0) + 1
    all_ms = sum(total.values()) / 1e3 / iters
    rows = sorted(total, key=total.get, reverse=True)[:top]
    return {
        "device": dev.type,
        "iters": iters,
        "per_forward_ms": all_ms,
        "n_kernels": len(total),
        "launches": sum(calls.values()) / iters,
        "top": [
            {
                "name": name,
                "ms": total[name] / 1e3 / iters,
                "calls": calls[name] / iters,
                "share": total[name] / 1e3 / iters / all_ms if all_ms else 0.0,
            }
            for name in rows
        ],
    }


def format_kernels(out: dict) -> str:
    """The `kernels_w*` tables of a profile as text (empty when none was recorded)."""
    lines = []
    for engine, r in out["raw"].items():
        for key, k in r.items():
            if not key.startswith("kernels_w"):
                continue
            w = key[len("kernels_w") :]
            measured = r.get(f"step_w{w}_ms", {}).get("p50")
            replay = r.get(f"replay_w{w}_ms")
            what = "kernels" if k["device"] == "cuda" else "operators (self CPU time)"
            runs = f" ({k['launches']:.0f} runs)" if "launches" in k else ""
            lines.append(
                f"{engine} step w{w}: {k['n_kernels']} {what}{runs}, {k['per_forward_ms']:.3f} ms per forward"
                + (f" (measured p50 {measured:.3f} ms" if measured is not None else "")
                + (f", graph replay alone {replay:.3f} ms" if replay is not None else "")
                + (")" if measured is not None else "")
            )
            for row in k["top"]:
                name = row["name"] if len(row["name"]) <= 90 else row["name"][:87] + "..."
                lines.append(f"  {row['ms']:8.4f} ms {100 * row['share']:5.1f}% {row['calls']:6.1f}x  {name}")
    return "\n".join(lines)


def _vision_ms(cfg: ProfileConfig, wl: Workload) -> dict | None:
    """The vision tower + projector alone (VLA shapes), the part of the prefill no engine changes."""
    px = wl.inputs.get("pixel_values")
    if not wl.vision_in_prefill or px is None:
        return None

    def vision():
        with torch.inference_mode():
            return wl.model.get_image_features(pixel_values=px)

    return time_call(vision, cfg.warmup, max(3, cfg.step_iters // 5), wl.device).summary_ms()


def _decode_series(cfg: ProfileConfig, wl: Workload, prefill, dc: DecodeConfig) -> tuple[dict, torch.Tensor]:
    """`calls` timed decode calls (prefill + iter_decode); returns the summary and the last tokens."""
    dev = wl.device

    def one():
        t0 = time.perf_counter()
        step, first, pre_s = prefill(wl.model, **wl.inputs)
        return decode(
            step, first, wl.n_tokens, dc, action_range=wl.action_range, unit=wl.unit, t_start=t0, prefill_s=pre_s
        )

    for _ in range(cfg.warmup):
        one()
    rec, prefill_s, per_iter, first_action, iterations = LatencyRecorder(), [], [], [], []
    tokens = None
    for _ in range(cfg.calls):
        with rec.time(dev):
            tokens, st = one()
        prefill_s.append(st.prefill_s)
        per_iter.extend(st.iteration_s)
        iterations.append(st.iterations)
        first_action.append(max(row[0] for row in st.unit_final_time_s))
    total = rec.total
    n_act = wl.n_tokens // wl.unit * cfg.batch_size
    return {
        "decoder": asdict(dc),
        "call_ms": rec.summary_ms(),
        "prefill_ms": _ms(summarize(prefill_s)),
        "iteration_ms": _ms(summarize(per_iter)),
        "first_action_ms": _ms(summarize(first_action)),
        "iterations_per_chunk": float(np.mean(iterations)),
        "forward_passes_per_chunk": float(np.mean(iterations)) + 1,
        "tokens_per_s": wl.n_tokens * cfg.batch_size * cfg.calls / total,
        "actions_per_s": n_act * cfg.calls / total,
        "call_s": rec.samples,
    }, tokens


def _generate_series(cfg: ProfileConfig, wl: Workload) -> dict:
    """HF `generate` (greedy, eager, DynamicCache) of one chunk, timed like a decode call."""
    n = wl.n_tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def gen():
        with torch.inference_mode():
            return wl.model.generate(**wl.inputs, **kw)

    rec = time_call(gen, cfg.warmup, cfg.calls, wl.device)
    total = rec.total
    return {
        "call_ms": rec.summary_ms(),
        "tokens_per_s": n * cfg.batch_size * cfg.calls / total,
        "actions_per_s": n // wl.unit * cfg.batch_size * cfg.calls / total,
        "call_s": rec.samples,
    }


def _targets(raw: dict, results: dict) -> dict:
    """The issue's engine targets, where measured (values in the units named), per fast engine."""
    out = {}
    for engine in ("graph", "compiled"):
        w22 = raw.get(engine, {}).get("step_w22_ms")
        if w22:
            out[f"{engine}_jacobi_iteration_w22_ms_p50"] = {
                "value": w22["p50"],
                "target_max": 5.0,
                "met": w22["p50"] <= 5.0,
            }
        ceed = results.get(engine, {}).get("ceed")
        if ceed:
            v = ceed["actions_per_s"]
            out[f"{engine}_ceed_actions_per_s"] = {
                "value": v,
                "target_min": 100.0,
                "met": v >= 100.0,
                "iterations_cap": ceed["decoder"]["max_iterations"],
            }
    return out


def _run_engines(cfg: ProfileConfig, wl: Workload, widths: list[int]):
    """Build each engine of `cfg` in turn and time its raw forwards and decoders; returns
    (raw, results, tokens, setup_s, errors)."""
    n = wl.n_tokens
    raw: dict[str, dict] = {}
    results: dict[str, dict] = {}
    tokens: dict[tuple[str, str], torch.Tensor] = {}
    setup_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for engine in cfg.engine_list:
        try:  # one engine failing (e.g. a capture error) must not cost the others' numbers
            t = time.perf_counter()
            prefill = make_prefill(
                engine,
                wl.model,
                n,
                device=cfg.runtime.device,
                widths=widths,
                compile_mode=cfg.runtime.compile_mode,
                sdpa_backends=None if engine == "eager" else cfg.sdpa_backends,
                logit_rows=wl.action_range if cfg.action_logits and engine != "eager" else None,
            )
            prefill(wl.model, **wl.inputs)  # builds the engine (and captures its graphs) once
            synchronize(cfg.runtime.device)
            setup_s[engine] = time.perf_counter() - t
            log.info("%s engine ready in %.2f s", engine, setup_s[engine])
            raw[engine] = _raw_forwards(cfg, wl, prefill)
            results[engine] = {}
            for name in cfg.decoders:
                results[engine][name], tokens[engine, name] = _decode_series(cfg, wl, prefill, cfg.decode_config(name))
                log.info("%s %s: p50 %.2f ms", engine, name, results[engine][name]["call_ms"]["p50"])
        except Exception:
            log.exception("the %s engine failed on %s", engine, cfg.shape)
            errors[engine] = traceback.format_exc()
            raw.pop(engine, None)
            results.pop(engine, None)
        finally:
            prefill = None  # free the engine's cache and graphs before the next one
    return raw, results, tokens, setup_s, errors


def run_profile(cfg: ProfileConfig) -> dict:
    """Profile every engine x decoder on the shape of `cfg`; returns (and saves) the results."""
    rt = cfg.runtime
    dtype = getattr(torch, rt.dtype)
    t = time.perf_counter()
    wl = build_workload(
        cfg.shape,
        rt.device,
        dtype,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        prefix_len=cfg.prefix_len,
        left_pad=cfg.left_pad,
        seed=cfg.seed,
        attn_implementation=cfg.attn_implementation,
    )
    synchronize(rt.device)
    build_s = time.perf_counter() - t
    log.info("built %s (%d tokens of prefix) in %.1f s", cfg.shape, wl.inputs["input_ids"].shape[1], build_s)
    n = wl.n_tokens
    # the decoders need AR's width and the whole window's; raw timings alone need only their own
    widths = sorted({*cfg.step_widths, *((1, max(1, n - 1)) if cfg.decoders else ())})
    settings = cfg.inductor_settings
    if settings:
        log.info("torch._inductor.config for this run: %s", settings)
    with inductor_config.patch(settings) if settings else contextlib.nullcontext():
        raw, results, tokens, setup_s, errors = _run_engines(cfg, wl, widths)
    try:
        vision = _vision_ms(cfg, wl)
    except Exception:
        log.exception("timing the vision tower failed on %s", cfg.shape)
        errors["vision"], vision = traceback.format_exc(), None
    try:
        generate = _generate_series(cfg, wl) if cfg.generate else None
    except Exception:
        log.exception("HF generate failed on %s", cfg.shape)
        errors["hf_generate"], generate = traceback.format_exc(), None
    ref = results.get("eager", {}).get("ar")
    for engine, per in results.items():
        for name, r in per.items():
            own = per.get("ar")
            r["speedup_vs_eager_ar"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
            r["speedup_vs_engine_ar"] = r["tokens_per_s"] / own["tokens_per_s"] if own else None
            eager = tokens.get(("eager", name))
            r["token_agreement_vs_eager"] = (
                float((tokens[engine, name] == eager).float().mean()) if eager is not None else None
            )
    if generate is not None and ref:
        generate["speedup_vs_eager_ar"] = generate["tokens_per_s"] / ref["tokens_per_s"]
    out = {
        "config": config_dict(cfg),
        "model": {
            "shape": cfg.shape,
            "parameters": sum(p.numel() for p in wl.model.parameters()),
            "tokens_per_chunk": n,
            "actions_per_chunk": n // wl.unit,
            "vision_in_prefill": wl.vision_in_prefill,
            "engine_widths": widths,
            **wl.info,
        },
        "environment": environment_info(rt.device, rt.dtype),
        "build_s": build_s,
        "engine_setup_s": setup_s,
        "raw": raw,
        "vision_ms": vision,
        "results": results,
        "hf_generate": generate,
        "targets": _targets(raw, results),
        "errors": errors,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / f"{cfg.stem}.json"
    path.write_text(json.dumps(out, indent=2))
    if cfg.plots:
        plot_profile(out, cfg.out / f"{cfg.stem}.png")
    kernels = format_kernels(out)
    if kernels:
        (cfg.out / f"{cfg.stem}_kernels.txt").write_text(kernels + "\n")
        print(kernels)
    print(format_table(out))
    log.info("saved %s", path)
    return out


def format_table(out: dict) -> str:
    """A plain-text table of one profile (what the CLI prints)."""
    env, m, c = out["environment"], out["model"], out["config"]
    lines = [
        f"{c['shape']} ({m['parameters'] / 1e6:.1f}M params, prefix {m['prefix_len']}, "
        f"{m['tokens_per_chunk']} tokens/chunk{', vision in prefill' if m['vision_in_prefill'] else ''})  "
        f"device: {env['device_name']}  dtype: {c['dtype']}  batch: {c['batch_size']}  "
        f"torch {env['versions'].get('torch')}  transformers {env['versions'].get('transformers')}",
    ]
    widths = [k for k in next(iter(out["raw"].values()), {}) if k.startswith("step_")]
    head = f"{'engine':<8} {'prefill ms':>10} " + " ".join(f"{k[5:-3] + ' ms':>9}" for k in widths)
    lines += [head, "-" * len(head)]
    for engine, r in out["raw"].items():
        lines.append(f"{engine:<8} {r['prefill_ms']['p50']:>10.2f} " + " ".join(f"{r[k]['p50']:>9.2f}" for k in widths))
    for engine, r in out["raw"].items():
        replays = ", ".join(f"{k[7:-3]} {v:.2f}" for k, v in r.items() if k.startswith("replay_") and k.endswith("_ms"))
        synced = ", ".join(f"{k[7:-10]} {v:.2f}" for k, v in r.items() if k.endswith("_ms_synced"))
        if replays:
            lines.append(f"{engine:<8} graph replay alone (device time, back to back), ms: {replays}")
        if synced:
            lines.append(f"{engine:<8} one replay, synchronised around it (p50), ms: {synced}")
    head = (
        f"{'engine':<8} {'decoder':<8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'prefill':>8} {'iter ms':>8} "
        f"{'iters':>6} {'tok/s':>8} {'act/s':>8} {'1st act':>8} {'vs eager AR':>11} {'agree':>6}"
    )
    lines += ["", head, "-" * len(head)]
    for engine, per in out["results"].items():
        for name, r in per.items():
            sp, ag = r["speedup_vs_eager_ar"], r["token_agreement_vs_eager"]
            lines.append(
                f"{engine:<8} {name:<8} {r['call_ms']['p50']:>8.2f} {r['call_ms']['p95']:>8.2f} "
                f"{r['call_ms']['p99']:>8.2f} "
                f"{r['prefill_ms']['p50']:>8.2f} {r['iteration_ms']['p50']:>8.2f} {r['iterations_per_chunk']:>6.2f} "
                f"{r['tokens_per_s']:>8.1f} {r['actions_per_s']:>8.1f} {r['first_action_ms']['p50']:>8.2f} "
                f"{(f'{sp:.2f}x' if sp else '-'):>11} {(f'{ag:.2f}' if ag is not None else '-'):>6}"
            )
    v = out.get("vision_ms")
    if v:
        pre = out["raw"].get("eager", {}).get("prefill_ms", {}).get("p50")
        share = f" = {100 * v['p50'] / pre:.0f}% of the eager prefill" if pre else ""
        lines.append(f"vision tower + projector: p50 {v['p50']:.2f} ms{share}")
    g = out.get("hf_generate")
    if g:
        sp = g.get("speedup_vs_eager_ar")
        lines.append(
            f"{'hf':<8} {'generate':<8} {g['call_ms']['p50']:>8.2f} {g['call_ms']['p95']:>8.2f} "
            f"{g['call_ms']['p99']:>8.2f} {'':>8} {'':>8} {'':>6} {g['tokens_per_s']:>8.1f} "
            f"{g['actions_per_s']:>8.1f} {'':>8} {(f'{sp:.2f}x' if sp else '-'):>11}"
        )
    for name, tg in out.get("targets", {}).items():
        bound = f"<= {tg['target_max']}" if "target_max" in tg else f">= {tg['target_min']}"
        lines.append(f"target {name}: {tg['value']:.2f} ({bound}) {'MET' if tg['met'] else 'NOT MET'}")
    for name, tb in out.get("errors", {}).items():
        lines.append(f"ERROR in {name}: {tb.strip().splitlines()[-1]}")
    return "\n".join(lines)


def plot_profile(out: dict, path: Path) -> None:
    """Latency histogram per engine x decoder (and HF generate), speedup bars vs eager AR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {f"{e}/{d}": r for e, per in out["results"].items() for d, r in per.items()}
    if out.get("hf_generate"):
        series["hf/generate"] = out["hf_generate"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    ms = {name: np.asarray(r["call_s"]) * 1e3 for name, r in series.items()}
    if ms:
        lo = min(v.min() for v in ms.values())
        hi = max(v.max() for v in ms.values())
        bins = np.geomspace(lo * 0.95, hi * 1.05, 60)  # shared log bins: series of very different speeds
        for name, v in ms.items():
            axes[0].hist(v, bins=bins, alpha=0.5, label=name)
    axes[0].set(
        xlabel="decode call latency (ms, prefill included)",
        ylabel="calls",
        xscale="log",
        title=f"{out['config']['shape']} b{out['config']['batch_size']} {out['config']['dtype']}",
    )
    axes[0].legend(fontsize=7)
    names = [n for n, r in series.items() if r.get("speedup_vs_eager_ar")]
    palette = {
        "eager": "tab:blue",
        "static": "tab:orange",
        "graph": "tab:green",
        "compiled": "tab:red",
        "hf": "tab:gray",
    }
    colors = [palette.get(n.split("/")[0], "tab:purple") for n in names]
    axes[1].bar(names, [series[n]["speedup_vs_eager_ar"] for n in names], color=colors)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set(ylabel="tokens/s relative to eager AR", title=f"speedup ({out['environment'].get('device_name', '')})")
    axes[1].tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compile_note(c: dict, engine: str) -> str:
    """' (compile mode, Inductor settings, attention backends)' of an engine's line when not the
    defaults."""
    if engine == "eager":
        return ""
    parts = []
    if engine == "compiled":
        mode = c.get("compile_mode", "inductor")
        parts = ([mode] if mode != "inductor" else []) + list(c.get("inductor", ()))
    if c.get("attn_implementation", "sdpa") != "sdpa":
        parts.append(c["attn_implementation"])
    if c.get("sdpa_backends"):
        parts.append("sdpa " + "/".join(c["sdpa_backends"]))
    if c.get("action_logits"):
        parts.append("action logits only")
    return f" ({', '.join(parts)})" if parts else ""


def summarize_files(paths: list[Path]) -> str:
    """One line per engine x decoder over several profile JSONs (the GPU job's closing table)."""
    lines = [
        f"{'shape':<12} {'b':>2} {'engine':<7} {'decoder':<8} {'p50 ms':>8} {'iter ms':>8} {'iters':>6} "
        f"{'act/s':>8} {'vs eager AR':>11}"
    ]
    for p in paths:
        if not Path(p).is_file():
            lines.append(f"{p}: no such profile (did its step fail?)")
            continue
        out = json.loads(Path(p).read_text())
        c = out["config"]
        for engine, per in out["results"].items():
            for name, r in per.items():
                sp = r["speedup_vs_eager_ar"]
                lines.append(
                    f"{c['shape']:<12} {c['batch_size']:>2} {engine:<7} {name:<8} {r['call_ms']['p50']:>8.2f} "
                    f"{r['iteration_ms']['p50']:>8.2f} {r['iterations_per_chunk']:>6.2f} "
                    f"{r['actions_per_s']:>8.1f} {(f'{sp:.2f}x' if sp else '-'):>11}"
                )
        if out.get("hf_generate"):
            g = out["hf_generate"]
            lines.append(
                f"{c['shape']:<12} {c['batch_size']:>2} {'hf':<7} {'generate':<8} {g['call_ms']['p50']:>8.2f} "
                f"{'':>8} {'':>6} {g['actions_per_s']:>8.1f}"
            )
        for engine, r in out["raw"].items():
            steps = ", ".join(f"{k[5:-3]} {v['p50']:.2f}" for k, v in r.items() if k.startswith("step_"))
            steps += "".join(
                f", replay {k[7:-3]} {v:.2f}" for k, v in r.items() if k.startswith("replay_") and k.endswith("_ms")
            )
            lines.append(
                f"{c['shape']:<12} {c['batch_size']:>2} {engine:<7} raw ms: "
                f"prefill {r['prefill_ms']['p50']:.2f}, {steps}{_compile_note(c, engine)}"
            )
        for name, tg in out.get("targets", {}).items():
            bound = f"<= {tg['target_max']}" if "target_max" in tg else f">= {tg['target_min']}"
            lines.append(
                f"{c['shape']:<12} target {name}: {tg['value']:.2f} ({bound}) {'MET' if tg['met'] else 'NOT MET'}"
            )
        for name, tb in out.get("errors", {}).items():
            lines.append(f"{c['shape']:<12} {c['batch_size']:>2} ERROR in {name}: {tb.strip().splitlines()[-1]}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = ProfileConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default=d.shape, choices=SHAPES)
    p.add_argument("--device", default="auto", help="torch device (auto = cuda when available)")
    p.add_argument("--dtype", default=d.runtime.dtype, choices=DTYPES)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--chunk-size", type=int, default=d.chunk_size)
    p.add_argument("--prefix-len", type=int, default=None)
    p.add_argument("--left-pad", type=int, default=d.left_pad)
    p.add_argument(
        "--engines", nargs="*", default=list(d.engines), help="eager static graph compiled (default: by device)"
    )
    p.add_argument("--compile-mode", default=d.runtime.compile_mode, choices=list(COMPILE_MODES))
    p.add_argument(
        "--inductor",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="torch._inductor.config settings for the run, e.g. freezing=True coordinate_descent_tuning=True",
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
            device=a.device, dtype=a.dtype, compile_mode=a.compile_mode, max_iterations=a.max_iterations, tau=a.tau
        ),
        batch_size=a.batch_size,
        chunk_size=a.chunk_size,
        prefix_len=a.prefix_len,
        left_pad=a.left_pad,
        engines=tuple(a.engines),
        inductor=tuple(a.inductor),
        attn_implementation=a.attn_implementation,
        action_logits=a.action_logits,
        sdpa_backends=None if a.sdpa_backends is None else tuple(a.sdpa_backends),
        decoders=tuple(a.decoders),
        generate=not a.no_generate,
        step_widths=tuple(a.step_widths),
        calls=a.calls,
        warmup=a.warmup,
        step_iters=a.step_iters,
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
    out = run_profile(config_from_args(argv))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
