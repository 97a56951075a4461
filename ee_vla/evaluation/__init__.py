"""The one evaluation entry point: a policy x decoder(s) x Gymnasium envs -> `eval_info.json`.

    rt = RuntimeConfig(decoder="ceed", device="cuda")            # ee_vla.runtime
    cfg = EvalConfig(policy="path/to/model", env=["ee_vla/PickCube-v0"], runtime=rt, episodes=50)
    info = evaluate(cfg)                          # writes <output_dir>/eval_info.json
    evaluate(replace(cfg, compare=["ar", "jacobi", "ceed"]))   # + compare.json, compare.png

`ee-vla eval --policy PATH --env ee_vla/PickCube-v0 --decoder jacobi --episodes 50 --num-envs 8`
(or `python -m ee_vla.evaluation ...`) parses an `EvalConfig` with tyro. The output follows
LeRobot's `eval_info.json` (per_episode, aggregated) and adds what LeRobot does not report:
per-call decode latency percentiles, iterations and forward passes per chunk, tokens/s, the device
and library versions (docs/evaluation.md).

* `config`: `EvalConfig` and the checks that need no env instance;
* `rollout`: envs, the batched rollouts (`_Rollout`, how episodes run) and their `DecodeLog`;
* `report`: aggregates, the comparison of decoders, tables, plot and JSON.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tyro

from ee_vla.evaluation.config import (
    DEFAULT_ENV,
    EvalConfig,
    EvalConfigError,
    check_env_ids,
    check_video_backend,
    setup_mujoco_gl,
)
from ee_vla.evaluation.report import (
    COMPARE_FILE,
    COMPARE_PLOT,
    EVAL_INFO_FILE,
    aggregate,
    compare_runs,
    config_json,
    format_comparison,
    format_summary,
    plot_comparison,
    wilson_interval,
    write_json,
)
from ee_vla.evaluation.rollout import DecodeLog, Recorder, _Rollout, check_env_cameras, check_env_compatible
from ee_vla.threads import configure_threads
from ee_vla.timing import environment_info

__all__ = [
    "COMPARE_FILE",
    "COMPARE_PLOT",
    "DEFAULT_ENV",
    "EVAL_INFO_FILE",
    "DecodeLog",
    "EvalConfig",
    "EvalConfigError",
    "Recorder",
    "aggregate",
    "check_env_cameras",
    "check_env_compatible",
    "check_env_ids",
    "compare_runs",
    "evaluate",
    "format_comparison",
    "format_summary",
    "main",
    "plot_comparison",
    "wilson_interval",
]

log = logging.getLogger(__name__)


def new_run_dir(root: Path) -> Path:
    """`root/<date>_<time>`, numbered (`_2`, `_3`, ...) when a run started in the same second."""
    base = root / time.strftime("%Y%m%d_%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    return path


def run_dir_names(decoders: list[str]) -> dict[str, str]:
    """Each compared decoder's folder under the output directory: its name with every character but
    letters, digits, `_`, `.` and `-` replaced by `_` (`ceed_cap:max_iterations=1` ->
    `ceed_cap_max_iterations_1`), so that shells, scp/rsync (which read `:` as a host) and every
    file system take it; a name that two decoders would share gets a `_2`, `_3`, ... suffix."""
    out: dict[str, str] = {}
    for name in decoders:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        folder, k = base, 2
        while folder in out.values():
            folder, k = f"{base}_{k}", k + 1
        out[name] = folder
    return out


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` describes and write its results.

    Returns the eval_info dict (one decoder) or the comparison dict (`compare`: its `runs` hold each
    decoder's eval_info). All input errors are raised before the model is loaded or an episode runs.
    """
    import gymnasium  # noqa: F401  (fail early when the sim extra is missing)

    decode_cfgs = cfg.decode_configs()
    check_video_backend(cfg)
    setup_mujoco_gl(cfg)
    cfg.prepare()
    out_dir = Path(cfg.output_dir) if cfg.output_dir else new_run_dir(Path("outputs/eval"))

    from ee_vla.models.contract import read_contract

    check_env_cameras(cfg, read_contract(cfg.policy).cameras)  # before the weights load
    rt = cfg.runtime
    configure_threads(rt.threads)
    policy = rt.load_policy(cfg.policy, decode_cfgs[cfg.decoders[0]])
    for env_id in cfg.env:
        check_env_compatible(env_id, policy, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    env_info = environment_info(rt.device, rt.dtype)

    runs: dict[str, dict] = {}
    folders = run_dir_names(cfg.decoders)
    with _recording(policy, cfg):
        for name in cfg.decoders:
            policy.decoder = decode_cfgs[name]
            run_dir = out_dir / folders[name] if cfg.compare else out_dir
            runs[name] = _evaluate_decoder(policy, name, cfg, run_dir, env_info)
            if cfg.print_summary and not cfg.compare:
                print(format_summary(runs[name]))
    if not cfg.compare:
        return runs[cfg.decoders[0]]
    result = compare_runs(runs, cfg)
    write_json(out_dir / COMPARE_FILE, {k: v for k, v in result.items() if k != "runs"})
    result["plot_path"] = str(plot_comparison(result, out_dir / COMPARE_PLOT))
    if cfg.print_summary:
        print(format_comparison(result))
    return result


@contextlib.contextmanager
def _recording(policy, cfg: EvalConfig):
    """With `cfg.save_calibration`: record the linear layers' input amax while the body runs, then
    write the calibration (with what it was recorded on)."""
    if cfg.save_calibration is None:
        yield
        return
    from ee_vla.models.quantize import recording_activation_amax, save_calibration

    with recording_activation_amax(policy.vla.model) as table:
        yield
    path = save_calibration(
        cfg.save_calibration,
        table,
        policy=str(cfg.policy),
        env=list(cfg.env),
        episodes=cfg.episodes,
        seed=cfg.seed,
        decoders=cfg.decoders,
        dtype=cfg.runtime.dtype,
        device=cfg.runtime.device,
        env_kwargs=dict(cfg.env_kwargs),
    )
    log.info("calibration of %d layers written to %s", len(table), path)


def _evaluate_decoder(policy, name: str, cfg: EvalConfig, out_dir: Path, env_info: dict) -> dict[str, Any]:
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    dcfg = policy.decoder
    warm = dcfg.init == "warm" and dcfg.method != "ar"
    total = DecodeLog(policy.vla.n_action_tokens, policy.chunk_size)
    per_env: dict[str, dict] = {}
    all_eps: list[dict] = []
    video_paths: list[str] = []
    t0 = time.perf_counter()
    with tqdm(total=len(cfg.env) * cfg.episodes, desc=f"eval {name}", disable=not cfg.progress, unit="ep") as pbar:
        for env_id in cfg.env:
            roll = _Rollout(env_id, policy, cfg, warm, out_dir, pbar, cfg.warmup)
            episodes, eval_s = roll.run()
            if len(episodes) != cfg.episodes:  # a bookkeeping bug, never expected
                raise RuntimeError(f"{env_id}: ran {len(episodes)} episodes, expected {cfg.episodes}")
            total.merge(roll.log)
            per_env[env_id] = {
                "per_episode": episodes,
                "aggregated": aggregate(episodes, eval_s),
                "decode": roll.log.summary(),
                "video_paths": roll.video_paths,
            }
            all_eps += [{"env_id": env_id, **e} for e in episodes]
            video_paths += roll.video_paths
            log.info("%s %s: %.1f%% success", name, env_id, per_env[env_id]["aggregated"]["pc_success"])
    info = {
        "per_episode": all_eps,
        "aggregated": aggregate(all_eps, time.perf_counter() - t0),
        "per_env": per_env,
        "decode": total.summary(),
        "video_paths": video_paths,
        "decoder": name,
        "decode_config": asdict(dcfg),
        "policy": {
            "path": str(cfg.policy),
            "chunk_size": policy.chunk_size,
            "action_dim": policy.action_dim,
            "n_action_steps": policy.n_action_steps,
            "tokens_per_chunk": policy.vla.n_action_tokens,
            "cameras": list(policy.vla.cameras),
        },
        "config": config_json(cfg),
        "environment": env_info,
    }
    write_json(out_dir / EVAL_INFO_FILE, info)
    info["path"] = str(out_dir / EVAL_INFO_FILE)
    return info


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m ee_vla.evaluation --policy PATH --env ID [...]` (the same as `ee-vla eval`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return evaluate(tyro.cli(EvalConfig, args=argv))
