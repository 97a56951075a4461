"""What an evaluation reports: LeRobot's aggregates with Wilson intervals, the comparison of
decoders run on the same seeds, the one-screen tables, the comparison plot and the JSON files."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ee_vla.runtime import config_dict

if TYPE_CHECKING:
    from ee_vla.evaluation.config import EvalConfig

log = logging.getLogger(__name__)

EVAL_INFO_FILE = "eval_info.json"
COMPARE_FILE = "compare.json"
COMPARE_PLOT = "compare.png"


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a success rate, as fractions in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes,
    which is where small robot evaluations live."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def failure_outcomes(episodes: Sequence[dict]) -> dict[str, int]:
    """How many failed episodes ended in each `outcome` their env reported (`info["outcome"]`),
    most frequent first; episodes without one are not counted."""
    counts = Counter(e["outcome"] for e in episodes if not e["success"] and e.get("outcome") is not None)
    return dict(counts.most_common())


def aggregate(episodes: Sequence[dict], eval_s: float) -> dict[str, Any]:
    """LeRobot's `aggregated` block over per-episode results, plus `failure_outcomes`."""
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    lo, hi = wilson_interval(k, n)
    return {
        "avg_sum_reward": float(np.mean([e["sum_reward"] for e in episodes])) if n else float("nan"),
        "avg_max_reward": float(np.mean([e["max_reward"] for e in episodes])) if n else float("nan"),
        "pc_success": float(np.mean([float(e["success"]) * 100 for e in episodes])) if n else float("nan"),
        "pc_success_ci95": [lo * 100, hi * 100],
        "n_episodes": n,
        "eval_s": eval_s,
        "eval_ep_s": eval_s / n if n else float("nan"),
        "failure_outcomes": failure_outcomes(episodes),
    }


def compare_runs(runs: dict[str, dict], cfg: EvalConfig) -> dict[str, Any]:
    """Side-by-side metrics of decoders run on the same seeds; speedups are relative to `ar` (or the
    first decoder when ar was not run), measured in the same process on the same device."""
    baseline = "ar" if "ar" in runs else next(iter(runs))
    base = runs[baseline]
    base_eps = [(e["env_id"], e["episode_ix"], e["sum_reward"], e["success"]) for e in base["per_episode"]]
    rows: dict[str, dict] = {}
    for name, info in runs.items():
        agg, dec = info["aggregated"], info["decode"]
        eps = [(e["env_id"], e["episode_ix"], e["sum_reward"], e["success"]) for e in info["per_episode"]]
        k = sum(bool(e["success"]) for e in info["per_episode"])
        rows[name] = {
            "pc_success": agg["pc_success"],
            "pc_success_ci95": agg["pc_success_ci95"],
            "pc_success_per_env": {env_id: e["aggregated"]["pc_success"] for env_id, e in info["per_env"].items()},
            "failure_outcomes_per_env": {
                env_id: e["aggregated"]["failure_outcomes"] for env_id, e in info["per_env"].items()
            },
            "successes": k,
            "n_episodes": agg["n_episodes"],
            "avg_sum_reward": agg["avg_sum_reward"],
            "forward_passes_per_call": dec["forward_passes_per_call"],
            "forward_passes_per_chunk": dec["forward_passes_per_chunk"],
            "iterations_per_chunk": dec["iterations_per_chunk"]["mean"],
            "tokens_per_s": dec["tokens_per_s"],
            "actions_per_s": dec["actions_per_s"],
            "latency_ms_p50": dec["latency_ms"]["p50"],
            "latency_ms_p95": dec["latency_ms"]["p95"],
            "latency_ms_p99": dec["latency_ms"]["p99"],
            "speedup_tokens_per_s": dec["tokens_per_s"] / base["decode"]["tokens_per_s"],
            "speedup_forward_passes": base["decode"]["forward_passes_per_call"] / dec["forward_passes_per_call"],
            "episodes_identical_to_baseline": sum(a == b for a, b in zip(eps, base_eps, strict=True)),
            "setup_s": dec["setup_s"],
            "eval_info": info.get("path"),
        }
    return {
        "baseline": baseline,
        "seeds": [cfg.seed + i for i in range(cfg.episodes)],
        "env": list(cfg.env),
        "policy": base["policy"],
        "decoders": rows,
        "environment": base["environment"],
        "config": config_json(cfg),
        "runs": runs,
    }


def config_json(cfg: EvalConfig) -> dict[str, Any]:
    """The `config` block of eval_info.json: every option under its command-line name."""
    return config_dict(cfg)


def write_json(path: Path, data: dict) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot serialise {type(o).__name__}")

    path.write_text(json.dumps(data, indent=2, default=default))
    log.info("wrote %s", path)


def format_summary(info: dict) -> str:
    """One screen: success per env id and overall, then the decode metrics."""
    env, dec = info["environment"], info["decode"]
    cameras = info["policy"].get("cameras", ["pixels"])
    lines = [
        f"ee_vla eval | decoder {info['decoder']} | policy {info['policy']['path']} | "
        + (f"cameras {', '.join(cameras)} | " if len(cameras) > 1 else "")
        + f"{env['device']} ({env['device_name']}) {env['dtype']}",
        f"{'env':<32} {'episodes':>8} {'success %':>9} {'95% CI':>13} "
        f"{'avg sum_r':>10} {'avg max_r':>10} {'eval_s':>8}",
    ]
    rows = [(k, v["aggregated"]) for k, v in info["per_env"].items()] + [("overall", info["aggregated"])]
    for name, a in rows:
        lo, hi = a["pc_success_ci95"]
        lines.append(
            f"{name:<32} {a['n_episodes']:>8} {a['pc_success']:>9.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} "
            f"{a['avg_sum_reward']:>10.3f} {a['avg_max_reward']:>10.3f} {a['eval_s']:>8.1f}"
        )
    failed = {k: v["aggregated"]["failure_outcomes"] for k, v in info["per_env"].items()}
    if any(failed.values()):
        lines.append("failed episodes by outcome:")
        lines += [f"  {env_id:<30} {_outcome_list(counts)}" for env_id, counts in failed.items() if counts]
    lat = dec["latency_ms"]
    lines.append(
        f"decode: {dec['calls']} calls x {dec['mean_batch_size']:.1f} chunks | latency ms p50 {lat['p50']:.1f} "
        f"p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} | iterations/chunk {dec['iterations_per_chunk']['mean']:.2f} | "
        f"forward passes/call {dec['forward_passes_per_call']:.2f} | {dec['tokens_per_s']:.0f} tokens/s | "
        f"{dec['actions_per_s']:.0f} actions/s"
    )
    if dec.get("setup_s", 0) > 0:
        lines.append(_setup_line({info["decoder"]: dec["setup_s"]}))
    lines.append(f"wrote {info.get('path', EVAL_INFO_FILE)}")
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    """The comparison table of `compare_runs` (speedups vs the baseline, measured in this run)."""
    env = result["environment"]
    b = result["baseline"]
    w = max(8, *(len(name) for name in result["decoders"]))  # variants' names are long
    cameras = result.get("policy", {}).get("cameras", ["pixels"])
    lines = [
        f"ee_vla eval --compare | {', '.join(result['env'])} | {len(result['seeds'])} seeds per env | "
        + (f"cameras {', '.join(cameras)} | " if len(cameras) > 1 else "")
        + f"{env['device']} ({env['device_name']}) {env['dtype']}",
        f"{'decoder':<{w}} {'success %':>9} {'95% CI':>13} {'fwd/call':>9} {'iter/chunk':>10} {'tokens/s':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8} {f'x{b} tok/s':>11} {f'x{b} fwd':>9} {'same eps':>9}",
    ]
    for name, r in result["decoders"].items():
        lo, hi = r["pc_success_ci95"]
        lines.append(
            f"{name:<{w}} {r['pc_success']:>9.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} {r['forward_passes_per_call']:>9.2f} "
            f"{r['iterations_per_chunk']:>10.2f} {r['tokens_per_s']:>9.0f} {r['latency_ms_p50']:>8.1f} "
            f"{r['latency_ms_p95']:>8.1f} {r['speedup_tokens_per_s']:>10.2f}x {r['speedup_forward_passes']:>8.2f}x "
            f"{r['episodes_identical_to_baseline']:>4}/{r['n_episodes']}"
        )
    if len(result["env"]) > 1:
        lines.append("success % per env:")
        for name, r in result["decoders"].items():
            per = ", ".join(f"{env_id.split('/')[-1]} {pc:.1f}" for env_id, pc in r["pc_success_per_env"].items())
            lines.append(f"  {name:<{w}} {per}")
    failed = [
        (name, env_id, counts)
        for name, r in result["decoders"].items()
        for env_id, counts in r["failure_outcomes_per_env"].items()
        if counts
    ]
    if failed:
        lines.append("failed episodes by outcome:")
        lines += [f"  {name:<{w}} {env_id.split('/')[-1]}: {_outcome_list(c)}" for name, env_id, c in failed]
    lines.append(
        f"fwd/call: model forward passes per decode call; iter/chunk: parallel iterations after the prefill; "
        f"x{b} tok/s, x{b} fwd: decoded tokens per second and forward passes per call relative to {b} in this "
        f"run; same eps: episodes with the same return and outcome as {b}'s on the same seed"
    )
    setup = {name: r["setup_s"] for name, r in result["decoders"].items() if r.get("setup_s", 0) > 0}
    if setup:
        lines.append(_setup_line(setup))
    if "plot_path" in result:
        lines.append(f"wrote {Path(result['plot_path']).with_name(COMPARE_FILE)} and {result['plot_path']}")
    return "\n".join(lines)


def _outcome_list(counts: dict[str, int]) -> str:
    return ", ".join(f"{outcome} {n}" for outcome, n in counts.items())


def _setup_line(setup_s: dict[str, float]) -> str:
    """Say how much one-time engine setup (graph captures, engine builds) fell inside timed calls."""
    per = ", ".join(f"{name} {s:.2f} s" for name, s in setup_s.items())
    return f"one-time engine setup inside timed calls, taken out of their latency: {per}"


def plot_comparison(result: dict, path: Path) -> Path:
    """Bar chart: success rate (Wilson 95% error bars) and speedups vs the baseline; with several
    envs, a third panel of success per env, one bar per decoder."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result["decoders"])
    rows = [result["decoders"][n] for n in names]
    envs = list(result["env"]) if len(result["env"]) > 1 else []
    x = np.arange(len(names))
    width = 4 + 1.2 * len(names) + (1.5 + 0.35 * len(envs) * len(names) if envs else 0)
    fig = Figure(figsize=(width, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if envs else 2, width_ratios=[1, 1, 1.6] if envs else None)
    ax1, ax2 = axes[:2]
    pc = np.array([r["pc_success"] for r in rows])
    ci = np.array([r["pc_success_ci95"] for r in rows]).reshape(-1, 2)
    ax1.bar(x, pc, yerr=np.maximum(0.0, np.stack([pc - ci[:, 0], ci[:, 1] - pc])), capsize=4, color="tab:green")
    ax1.set(xticks=x, xticklabels=names, ylim=(0, 100), ylabel="success % (95% Wilson CI)", title="success")
    w = 0.38
    ax2.bar(x - w / 2, [r["speedup_tokens_per_s"] for r in rows], w, label="tokens/s")
    ax2.bar(x + w / 2, [r["speedup_forward_passes"] for r in rows], w, label="forward passes")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xticks=x, xticklabels=names, ylabel=f"speedup vs {result['baseline']}", title="speedup")
    ax2.legend(fontsize=8)
    if envs:
        ax3, xe, we = axes[2], np.arange(len(envs)), 0.8 / len(names)
        for i, (name, r) in enumerate(zip(names, rows, strict=True)):
            per = [r["pc_success_per_env"][e] for e in envs]
            ax3.bar(xe + (i - (len(names) - 1) / 2) * we, per, we, label=name)
        labels = [e.split("/")[-1] for e in envs]
        ax3.set(xticks=xe, ylim=(0, 100), ylabel="success %", title="success per env")
        ax3.set_xticklabels(labels, rotation=30 if len(envs) > 4 else 0, ha="right" if len(envs) > 4 else "center")
        ax3.legend(fontsize=8, ncols=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.savefig(path, dpi=120)
    return path
