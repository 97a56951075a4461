"""The engine profiler's (`ee_vla.benchmarks.profile`) measurements: raw forwards and decode calls of
every engine x decoder, HF `generate`, the vision tower; `run_profile` runs them all and saves them."""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import asdict

import numpy as np
import torch

from ee_vla.benchmarks.profile.config import ProfileConfig
from ee_vla.benchmarks.profile.report import format_kernels, format_table, kernel_table, plot_profile
from ee_vla.benchmarks.shapes import VLA_SHAPES, Workload, build_workload
from ee_vla.decoding import DecodeConfig, decode
from ee_vla.engine import attention
from ee_vla.engine.factory import make_prefill
from ee_vla.engine.modes import inductor_overrides
from ee_vla.runtime import config_dict
from ee_vla.timing import LatencyRecorder, environment_info, summarize, synchronize, time_call

log = logging.getLogger(__name__)


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


def _replays_only(cfg: ProfileConfig, wl: Workload, engine: str, widths: list[int]) -> tuple[float, dict]:
    """`cfg.steps_only`: one engine of `widths` built without a prompt; (seconds to build it, its
    graphs' replay times and, with `cfg.kernels`, each replay's costliest kernels)."""
    from ee_vla.engine.cache import _round_up
    from ee_vla.engine.static import StaticEngine

    t = time.perf_counter()
    eng = StaticEngine(
        wl.model,
        batch_size=cfg.batch_size,
        max_prompt_len=_round_up(wl.inputs["input_ids"].shape[1], 16),
        max_new_tokens=wl.n_tokens,
        widths=widths,
        graphs=True,
        compile=cfg.runtime.compile_mode if engine == "compiled" else None,
        sdpa_backends=cfg.sdpa_backends,
        logit_rows=wl.action_range if cfg.action_logits else None,
    )
    built = time.perf_counter() - t
    try:
        out = {f"replay_w{w}_ms": eng.replay_ms(w, cfg.step_iters) for w in widths}
        if cfg.kernels:
            for w in widths:
                out[f"kernels_w{w}"] = kernel_table(lambda w=w: eng.replay(w), wl.device, cfg.kernel_iters, cfg.kernels)
        return built, out
    finally:
        eng.release()


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
            if cfg.steps_only:
                setup_s[engine], raw[engine] = _replays_only(cfg, wl, engine, widths)
                log.info("%s engine: built in %.1f s, replays %s", engine, setup_s[engine], raw[engine])
                continue
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


def _build(cfg: ProfileConfig) -> tuple[Workload, float]:
    """The random model and inputs of `cfg`'s shape, and the seconds they took to build."""
    rt = cfg.runtime
    t = time.perf_counter()
    wl = build_workload(
        cfg.shape,
        rt.device,
        getattr(torch, rt.dtype),
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        prefix_len=cfg.prefix_len,
        left_pad=cfg.left_pad,
        seed=cfg.seed,
        attn_implementation=cfg.attn_implementation,
        cameras=cfg.cameras if cfg.shape in VLA_SHAPES else None,
    )
    synchronize(rt.device)
    build_s = time.perf_counter() - t
    log.info("built %s (%d tokens of prefix) in %.1f s", cfg.shape, wl.inputs["input_ids"].shape[1], build_s)
    if rt.quantize != "none":  # every engine then runs the quantised model (as VLAPolicy does)
        wl.info["quantize"] = _quantize(cfg, wl)
    return wl, build_s


def _prefix_and_chunk(wl: Workload, seed: int) -> dict:
    """The workload's inputs followed by a random chunk of action tokens (generator `seed`)."""
    lo, hi = wl.action_range
    g = torch.Generator().manual_seed(seed)
    B = wl.inputs["input_ids"].shape[0]
    tail = torch.randint(lo, hi + 1, (B, wl.n_tokens), generator=g).to(wl.device)
    inputs = dict(wl.inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tail)], 1)
    return inputs


def _teacher_forced_tokens(cfg: ProfileConfig, wl: Workload) -> torch.Tensor:
    """The argmax action token at each position of one eager forward over the prefix followed by a
    random chunk of action tokens: what each position predicts given the same inputs."""
    lo, hi = wl.action_range
    with torch.inference_mode():
        logits = wl.model(**_prefix_and_chunk(wl, cfg.seed + 1)).logits[:, -wl.n_tokens :, lo : hi + 1]
    return logits.argmax(-1).cpu()


def _quantize(cfg: ProfileConfig, wl: Workload) -> dict:
    """Quantise the workload's model in place; what that changed: memory, seconds, and how often the
    quantised model picks the unquantised one's action token given the same inputs."""
    from ee_vla.models.quantize import quantize_weights, recording_activation_amax

    def weight_bytes() -> int:  # torchao's tensors report their storage through __tensor_flatten__
        total = 0
        for p in wl.model.parameters():
            parts = [getattr(p, n) for n in p.__tensor_flatten__()[0]] if hasattr(p, "__tensor_flatten__") else [p]
            total += sum(t.numel() * t.element_size() for t in parts)
        return total

    before, ref = weight_bytes(), _teacher_forced_tokens(cfg, wl)
    t = time.perf_counter()
    calibration = None
    if cfg.calibrate:  # on another random chunk than the agreement's
        with recording_activation_amax(wl.model) as calibration, torch.inference_mode():
            wl.model(**_prefix_and_chunk(wl, cfg.seed + 2))
    layers = quantize_weights(wl.model, cfg.runtime.quantize, calibration=calibration)
    synchronize(cfg.runtime.device)
    seconds = time.perf_counter() - t
    out = {
        "mode": cfg.runtime.quantize,
        "calibrated": cfg.calibrate,
        "layers": layers,
        "seconds": seconds,
        "weights_gib_before": before / 2**30,
        "weights_gib_after": weight_bytes() / 2**30,
        "teacher_forced_agreement": float((_teacher_forced_tokens(cfg, wl) == ref).float().mean()),
    }
    if calibration is not None:
        amax = [c.amax for c in calibration.values()]
        out["activation_amax"] = {"min": min(amax), "median": float(np.median(amax)), "max": max(amax)}
    log.info("quantize=%s: %s", out["mode"], {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()})
    return out


def _baselines(cfg: ProfileConfig, wl: Workload, errors: dict) -> tuple[dict | None, dict | None]:
    """(vision tower ms, HF generate) of `cfg`; a failure is logged, kept in `errors` and gives None."""
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
    return vision, generate


def _compare(results: dict, tokens: dict, generate: dict | None) -> None:
    """Adds each result's speedups (vs eager AR, vs its engine's AR) and token agreement with eager."""
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


def _save(cfg: ProfileConfig, out: dict) -> None:
    """Writes the JSON (+ PNG, kernel tables) of a profile and prints its tables."""
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


def run_profile(cfg: ProfileConfig) -> dict:
    """Profile every engine x decoder on the shape of `cfg`; returns (and saves) the results."""
    rt = cfg.runtime
    wl, build_s = _build(cfg)
    n = wl.n_tokens
    # the decoders need AR's width and the whole window's; raw timings alone need only their own
    decoding = cfg.decoders and not cfg.steps_only
    widths = sorted({*cfg.step_widths, *((1, max(1, n - 1)) if decoding else ())})
    settings = cfg.inductor_settings
    if settings:
        log.info("torch._inductor.config for this run: %s", settings)
    with (
        inductor_overrides(settings),
        attention.layer_mode(fused=cfg.attn_layer != "transformers", merge_in_kernel=cfg.attn_layer == "fused"),
    ):
        raw, results, tokens, setup_s, errors = _run_engines(cfg, wl, widths)
    vision, generate = (None, None) if cfg.steps_only else _baselines(cfg, wl, errors)
    _compare(results, tokens, generate)
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
    _save(cfg, out)
    return out
