"""The engine profiler's (`ee_vla.benchmarks.profile`) kernel tables, printed tables, plots and
the summary over several profile JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ee_vla.timing import synchronize


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
            beside = [f"measured p50 {measured:.3f} ms"] if measured is not None else []
            beside += [f"graph replay alone {replay:.3f} ms"] if replay is not None else []
            lines.append(
                f"{engine} step w{w}: {k['n_kernels']} {what}{runs}, {k['per_forward_ms']:.3f} ms per forward"
                + (f" ({', '.join(beside)})" if beside else "")
            )
            for row in k["top"]:
                name = row["name"] if len(row["name"]) <= 90 else row["name"][:87] + "..."
                lines.append(f"  {row['ms']:8.4f} ms {100 * row['share']:5.1f}% {row['calls']:6.1f}x  {name}")
    return "\n".join(lines)


def format_table(out: dict) -> str:
    """A plain-text table of one profile (what the CLI prints)."""
    env, m, c = out["environment"], out["model"], out["config"]
    lines = [
        f"{c['shape']} ({m['parameters'] / 1e6:.1f}M params, prefix {m['prefix_len']}, "
        + (f"cameras {', '.join(m['cameras'])}, " if len(m.get("cameras", ())) > 1 else "")
        + f"{m['tokens_per_chunk']} tokens/chunk{', vision in prefill' if m['vision_in_prefill'] else ''})  "
        f"device: {env['device_name']}  dtype: {c['dtype']}  batch: {c['batch_size']}  "
        f"torch {env['versions'].get('torch')}  transformers {env['versions'].get('transformers')}",
    ]
    widths = [k for k in next(iter(out["raw"].values()), {}) if k.startswith("step_")]
    head = f"{'engine':<8} {'prefill ms':>10} " + " ".join(f"{k[5:-3] + ' ms':>9}" for k in widths)
    lines += [head, "-" * len(head)]
    for engine, r in out["raw"].items():
        if "prefill_ms" in r:  # absent when only the steps' replays were timed
            lines.append(
                f"{engine:<8} {r['prefill_ms']['p50']:>10.2f} " + " ".join(f"{r[k]['p50']:>9.2f}" for k in widths)
            )
    for engine, r in out["raw"].items():
        replays = ", ".join(f"{k[7:-3]} {v:.2f}" for k, v in r.items() if k.startswith("replay_") and k.endswith("_ms"))
        synced = ", ".join(f"{k[7:-10]} {v:.2f}" for k, v in r.items() if k.endswith("_ms_synced"))
        if replays:
            lines.append(f"{engine:<8} graph replay alone (device time, back to back), ms: {replays}")
        if "prefill_ms" not in r and engine in out.get("engine_setup_s", {}):
            lines.append(f"{engine:<8} built (compiled, captured) in {out['engine_setup_s'][engine]:.1f} s")
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
        if c.get("attn_layer", "transformers") != "transformers":
            parts.append(f"{c['attn_layer']} attention layers")
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
            parts = [f"prefill {r['prefill_ms']['p50']:.2f}"] if "prefill_ms" in r else []  # none when steps_only
            parts += [f"{k[5:-3]} {v['p50']:.2f}" for k, v in r.items() if k.startswith("step_")]
            parts += [
                f"replay {k[7:-3]} {v:.2f}" for k, v in r.items() if k.startswith("replay_") and k.endswith("_ms")
            ]
            head = f"{c['shape']:<12} {c['batch_size']:>2} {engine:<7} raw ms: "
            lines.append(head + ", ".join(parts) + _compile_note(c, engine))
        for name, tg in out.get("targets", {}).items():
            bound = f"<= {tg['target_max']}" if "target_max" in tg else f">= {tg['target_min']}"
            lines.append(
                f"{c['shape']:<12} target {name}: {tg['value']:.2f} ({bound}) {'MET' if tg['met'] else 'NOT MET'}"
            )
        for name, tb in out.get("errors", {}).items():
            lines.append(f"{c['shape']:<12} {c['batch_size']:>2} ERROR in {name}: {tb.strip().splitlines()[-1]}")
    return "\n".join(lines)
