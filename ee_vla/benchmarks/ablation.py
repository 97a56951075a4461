"""The CEED paper's ablation ladder (its Table 3) for a teacher and its distilled students, in one command.

    python -m ee_vla.benchmarks.ablation --teacher T --student S [--student-no-mix S0] \
        --env ee_vla/Reach-v0 --env ee_vla/PickCube-v0 --env ee_vla/Push-v0 --env ee_vla/Place-v0 \
        --episodes 50 --num-envs 10 --seed 100000 [--device cuda --dtype bfloat16 --engine graph --vector async]

Each model is evaluated once, `ee-vla eval --compare` over the decoders of its rows with `ar` first,
on the same seeds: every row's tokens/s ratio is against the AR of its own run (same process, same
device), and every row's forward passes against AR's one per token. The rows (`ROWS`):

| row | model | decoder |
|---|---|---|
| AR | teacher | `ar` |
| Jacobi, no training | teacher | `jacobi` |
| + consistency | student without mixed labels (`ee-vla distill --no-mixed-labels`) | `jacobi` |
| + mixed labels | student | `jacobi` |
| + early exit (cap 2) | student | `ceed_cap:init=repeat` |
| + relaxed convergence (tau 1) | student | `ceed_cap:init=repeat:tau=1` |
| + warm start | student | `ceed_cap:tau=1` |
| + warm guess in the prefill, cap 1 | student | `ceed_2pass` |
| CEED preset (tau 1, warm, no cap) | student | `ceed` |

A row whose model is not given (`--student-no-mix`) is left out. Writes `out/ablation.json`,
`out/ablation.md` (the table, with the command and the machine), `out/ablation.png` and each run's
`ee-vla eval` results under `out/<model>/`. With `--resume`, a model whose evaluation in
`out/<model>/` finished with the same settings is not evaluated again: an ablation cut short (a time
limit, a lost machine) runs only the models left.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from ee_vla.runtime import RuntimeConfig

log = logging.getLogger(__name__)

ROWS: tuple[tuple[str, str, str], ...] = (
    ("AR", "teacher", "ar"),
    ("Jacobi, no training", "teacher", "jacobi"),
    ("+ consistency", "student_no_mix", "jacobi"),
    ("+ mixed labels", "student", "jacobi"),
    ("+ early exit (cap 2)", "student", "ceed_cap:init=repeat"),
    ("+ relaxed convergence (tau 1)", "student", "ceed_cap:init=repeat:tau=1"),
    ("+ warm start", "student", "ceed_cap:tau=1"),
    ("+ warm guess in the prefill, cap 1", "student", "ceed_2pass"),
    ("CEED preset (tau 1, warm, no cap)", "student", "ceed"),
)
"""(row, model, decoder spec) of the ladder, in order; each row adds one thing to the row above it
(the last is the shipped CEED setting, for reference)."""

MODELS = ("teacher", "student_no_mix", "student")


@dataclass
class AblationConfig:
    """Evaluate a teacher and its students on the same seeds, one `ee-vla eval --compare` run per
    model, and assemble the ablation table."""

    teacher: Path
    """The AR-trained model the students were distilled from."""
    student: Path
    """Its CEED student (consistency + mixed labels: `ee-vla distill`)."""
    student_no_mix: Path | None = None
    """Its student distilled without mixed labels (`ee-vla distill --no-mixed-labels`), for the
    `+ consistency` row; None = that row is left out."""
    env: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Env ids (repeat the flag); none given: the ee_vla suite (`sim_envs.SUITE_ENV_IDS`)."""
    episodes: int = 50
    """Episodes per env id, seeds seed .. seed + episodes - 1 (the same for every model)."""
    seed: int = 100000
    """Seed of the first episode (100000: the held-out seeds of `ee-vla eval`)."""
    num_envs: int = 10
    """Env copies stepped together (one batched policy call)."""
    vector: Literal["sync", "async"] = "sync"
    """Gymnasium vector env: sync (one process) or async (one subprocess per copy)."""
    max_episode_steps: int | None = None
    """Override of the env spec's step limit."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keyword arguments of gymnasium.make, as in `ee-vla eval --env-kwargs`."""
    runtime: tyro.conf.OmitArgPrefixes[RuntimeConfig] = field(default_factory=RuntimeConfig)
    """How the models run (`--device`, `--dtype`, `--engine`, `--threads`, ...), as in `ee-vla eval`."""
    out: Path = Path("outputs/ablation")
    """Output directory (ablation.json, ablation.md, ablation.png, one folder per model)."""
    overwrite: bool = False
    """Replace the results of an earlier ablation in `out`."""
    resume: bool = False
    """Reuse each model's finished evaluation in `out/<model>/` (its compare.json) when it ran with
    the same settings, and evaluate only the others (replacing what a run cut short left); a
    finished one with other settings is an error."""
    progress: bool = True
    """Show each evaluation's progress bar."""

    def __post_init__(self) -> None:
        from sim_envs import SUITE_ENV_IDS

        self.env = list(self.env) or list(SUITE_ENV_IDS)  # not tyro's default: its append action would add to it
        if self.resume and self.overwrite:
            raise ValueError("AblationConfig: --resume keeps earlier results and --overwrite replaces them; pass one")
        if (Path(self.out) / "ablation.json").exists() and not (self.overwrite or self.resume):
            raise ValueError(
                f"{Path(self.out) / 'ablation.json'} exists (AblationConfig.out); pass --overwrite (or --resume)"
            )
        for model in self.models():
            path = getattr(self, model)
            if not (Path(path) / "config.json").is_file():
                raise ValueError(f"AblationConfig.{model}: {path} is not a model directory (no config.json)")
            if self.finished(model) is None:  # the run's own checks (fields, env ids, policy files), before any run
                self.eval_config(model).check_inputs()

    def models(self) -> list[str]:
        """The models given, in the order they are evaluated."""
        return [m for m in MODELS if getattr(self, m) is not None]

    def rows(self) -> list[tuple[str, str, str]]:
        """The rows whose model is given."""
        given = self.models()
        return [r for r in ROWS if r[1] in given]

    def decoders(self, model: str) -> list[str]:
        """The decoders one model's run compares: `ar` first, then its rows' in order."""
        specs = ["ar"] + [spec for _, m, spec in ROWS if m == model]
        return list(dict.fromkeys(specs))

    def finished(self, model: str) -> dict[str, Any] | None:
        """With `resume`: the model's earlier comparison in `out/<model>/` (compare.json) when one
        finished there with this ablation's settings; None when there is none (or without
        `resume`). One with other settings raises, naming them."""
        from ee_vla.evaluation.report import COMPARE_FILE, config_json

        path = Path(self.out) / model / COMPARE_FILE
        if not self.resume or not path.is_file():
            return None
        saved = json.loads(path.read_text())
        ecfg = self.eval_config(model, overwrite=True)
        ecfg.runtime = ecfg.runtime.resolved()  # as the finished run recorded it (device auto -> cuda|cpu)
        want = json.loads(json.dumps(config_json(ecfg), default=str))
        ignore = ("overwrite", "progress", "print_summary")
        differ = sorted(k for k in set(want) | set(saved.get("config", {})) if k not in ignore
                        and want.get(k) != saved.get("config", {}).get(k))  # fmt: skip
        if differ:
            raise ValueError(
                f"AblationConfig.resume: {path} was run with other settings ({', '.join(differ)}); "
                "give the same ones, another --out, or --overwrite"
            )
        return saved

    def eval_config(self, model: str, overwrite: bool | None = None):
        """The `ee-vla eval` run of one model (`overwrite`: None = the ablation's; with `resume`, a
        model's unfinished run, cut short before its compare.json, is replaced)."""
        from ee_vla.evaluation.config import EvalConfig

        return EvalConfig(
            policy=Path(getattr(self, model)),
            env=list(self.env),
            runtime=self.runtime,
            compare=self.decoders(model),
            episodes=self.episodes,
            num_envs=self.num_envs,
            vector=self.vector,
            seed=self.seed,
            max_episode_steps=self.max_episode_steps,
            env_kwargs=dict(self.env_kwargs),
            output_dir=Path(self.out) / model,
            overwrite=(self.overwrite or self.resume) if overwrite is None else overwrite,
            progress=self.progress,
            print_summary=False,
        )


def table_rows(cfg: AblationConfig, compares: dict[str, dict]) -> list[dict[str, Any]]:
    """One dict per row from each model's comparison (`compare.json`'s `decoders`)."""
    rows = []
    for row, model, spec in cfg.rows():
        r = compares[model]["decoders"][spec]
        rows.append(
            {
                "row": row,
                "model": model,
                "policy": str(getattr(cfg, model)),
                "decoder": spec,
                "pc_success": r["pc_success"],
                "pc_success_ci95": r["pc_success_ci95"],
                "pc_success_per_env": r["pc_success_per_env"],
                "n_episodes": r["n_episodes"],
                "forward_passes_per_call": r["forward_passes_per_call"],
                "iterations_per_chunk": r["iterations_per_chunk"],
                "speedup_forward_passes": r["speedup_forward_passes"],
                "speedup_tokens_per_s": r["speedup_tokens_per_s"],
                "tokens_per_s": r["tokens_per_s"],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], env_ids: list[str]) -> str:
    """The ablation table in Markdown."""
    short = [e.split("/")[-1].removesuffix("-v0") for e in env_ids]
    head = (
        "| row | model | decoder | success [95% CI] | "
        + " / ".join(short)
        + " | passes per call | fewer passes than AR | iterations per chunk | tokens/s vs its AR |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lo, hi = r["pc_success_ci95"]
        per = " / ".join(f"{r['pc_success_per_env'].get(e, float('nan')):.0f}" for e in env_ids)
        lines.append(
            f"| {r['row']} | {r['model'].replace('_', ' ')} | `{r['decoder']}` | {r['pc_success']:.1f}% "
            f"[{lo:.0f}, {hi:.0f}] | {per} | {r['forward_passes_per_call']:.2f} | "
            f"{r['speedup_forward_passes']:.2f}x | {r['iterations_per_chunk']:.2f} | {r['speedup_tokens_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Success with its interval, and the forward-pass and tokens/s ratios, row by row."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [r["row"] for r in rows]
    y = np.arange(len(rows))[::-1]
    fig = Figure(figsize=(12, 0.5 * len(rows) + 1.5), layout="tight")
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2, sharey=True)
    succ = np.array([r["pc_success"] for r in rows])
    ci = np.array([r["pc_success_ci95"] for r in rows])
    a.errorbar(succ, y, xerr=[succ - ci[:, 0], ci[:, 1] - succ], fmt="o", capsize=3)
    a.set_yticks(y, labels)
    a.set_xlabel("success % (95% interval)")
    h = 0.38
    b.barh(y + h / 2, [r["speedup_forward_passes"] for r in rows], h, label="fewer forward passes than AR")
    b.barh(y - h / 2, [r["speedup_tokens_per_s"] for r in rows], h, label="tokens/s vs AR (same run)")
    b.axvline(1.0, color="gray", lw=0.8)
    b.set_xlabel("x AR")
    b.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def run(cfg: AblationConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate every given model, then write ablation.json / .md / .png; returns the JSON dict."""
    from ee_vla.evaluation import evaluate
    from ee_vla.evaluation.report import write_json

    out = Path(cfg.out)
    compares = {}
    for model in cfg.models():
        done = cfg.finished(model)
        if done is not None:
            log.info("ablation: %s: its finished evaluation in %s (--resume)", model, out / model)
            compares[model] = done
            continue
        ecfg = cfg.eval_config(model)
        log.info("ablation: %s (%s): %s", model, ecfg.policy, " ".join(ecfg.compare))
        result = evaluate(ecfg)
        compares[model] = {k: v for k, v in result.items() if k != "runs"}
    devices = {c["environment"]["device_name"] for c in compares.values()}
    if len(devices) > 1:  # resumed on another machine: each row's ratios hold within its own run
        log.warning("ablation: the models were evaluated on different machines: %s", ", ".join(sorted(devices)))
    environment = compares[cfg.models()[-1]]["environment"]
    rows = table_rows(cfg, compares)
    command = "python -m ee_vla.benchmarks.ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    info = {"command": command, "environment": environment, "env": list(cfg.env), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", info)
    device = f"{environment['device_name']} ({environment['device']}, {environment['dtype']})"
    table = markdown(rows, list(cfg.env))
    seeds = f"seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1} per env"
    (out / "ablation.md").write_text(f"`{command}`\n\n{device}, {seeds}\n\n{table}\n")
    plot(rows, out / "ablation.png")
    print(table)
    print(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'} and {out / 'ablation.png'}")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    return run(tyro.cli(AblationConfig, args=args), args)  # tyro reports a refused config and exits


if __name__ == "__main__":
    main()
