"""`ee_vla.evaluation`: eval_info.json schema, episode bookkeeping, AR == Jacobi end to end, bad input.

A tiny random policy on a fake env (conftest) with a few short episodes; `ee_vla/PickCube-v0` gets a
smoke test when sim_envs provides it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import gymnasium
import pytest

from ee_vla.evaluation import (
    DecodeLog,
    EvalConfig,
    EvalConfigError,
    evaluate,
    format_comparison,
    format_summary,
    plot_comparison,
    wilson_interval,
)
from ee_vla.models.vla import ModelLoadError
from ee_vla.runtime import RuntimeConfig, RuntimeConfigError

FAKE_ENV = "test_ee_vla/FakeReach-v0"  # registered by conftest.py
FAKE_ENV_4D = "test_ee_vla/FakeReach4D-v0"

LEROBOT_EPISODE_KEYS = {"episode_ix", "sum_reward", "max_reward", "success", "seed"}
LEROBOT_AGGREGATED_KEYS = {"avg_sum_reward", "avg_max_reward", "pc_success", "eval_s", "eval_ep_s"}


RUNTIME_FIELDS = set(RuntimeConfig.__dataclass_fields__)


def make_cfg(policy, out, **kw) -> EvalConfig:
    """An EvalConfig of the fake env; keyword arguments that are `RuntimeConfig` fields (decoder,
    tau, engine, ...) go to its `runtime`."""
    runtime = {k: kw.pop(k) for k in list(kw) if k in RUNTIME_FIELDS}
    base = dict(
        runtime=RuntimeConfig(**runtime),
        policy=policy,
        env=[FAKE_ENV],
        episodes=3,
        num_envs=1,
        seed=10,
        output_dir=out,
        env_modules=[],
        progress=False,
        print_summary=False,
        warmup=0,
    )
    return EvalConfig(**{**base, **kw})


def episode_key(e: dict) -> tuple:
    return (e["env_id"], e["episode_ix"], e["seed"], e["steps"], e["sum_reward"], e["max_reward"], e["success"])


def check_eval_info(info: dict, cfg: EvalConfig) -> None:
    on_disk = json.loads((cfg.output_dir / "eval_info.json").read_text())
    assert on_disk["per_episode"] == info["per_episode"]
    eps = info["per_episode"]
    assert len(eps) == cfg.episodes * len(cfg.env)
    for env_id in cfg.env:
        block = info["per_env"][env_id]
        mine = block["per_episode"]
        assert [e["episode_ix"] for e in mine] == list(range(cfg.episodes))
        assert [e["seed"] for e in mine] == [cfg.seed + i for i in range(cfg.episodes)]
        assert all(LEROBOT_EPISODE_KEYS <= e.keys() for e in mine)
        assert LEROBOT_AGGREGATED_KEYS <= block["aggregated"].keys()
        agg = block["aggregated"]
        assert agg["pc_success"] == pytest.approx(sum(e["success"] * 100 for e in mine) / len(mine))
        assert agg["avg_sum_reward"] == pytest.approx(sum(e["sum_reward"] for e in mine) / len(mine))
        assert agg["eval_ep_s"] == pytest.approx(agg["eval_s"] / cfg.episodes)
        for e in mine:
            assert e["steps"] >= 1 and isinstance(e["success"], bool)
            if env_id == FAKE_ENV:  # rewards are minus distances, at most 8 steps
                assert e["steps"] <= 8 and e["max_reward"] <= 0 and e["sum_reward"] <= e["max_reward"]
                # the last step's info: its outcome and numbers (the last reward is minus its distance)
                d = e["final_info"]["distance"]
                assert e["outcome"] == ("success" if e["success"] else "close" if d < 1.5 else "far")
                assert set(e["final_info"]) == {"distance"}
        failed = [e["outcome"] for e in mine if not e["success"] and "outcome" in e]
        assert agg["failure_outcomes"] == {k: failed.count(k) for k in set(failed)}
    agg = info["aggregated"]
    assert LEROBOT_AGGREGATED_KEYS <= agg.keys()
    assert agg["pc_success"] == pytest.approx(sum(e["success"] * 100 for e in eps) / len(eps))
    lo, hi = agg["pc_success_ci95"]
    assert 0 <= lo <= agg["pc_success"] <= hi <= 100

    dec = info["decode"]
    n_tok = info["policy"]["tokens_per_chunk"]
    assert dec["chunks"] == sum(dec["iterations_per_chunk"]["histogram"].values())
    assert dec["calls"] == dec["latency_ms"]["n"] >= math.ceil(cfg.episodes / cfg.num_envs)
    for p in ("p50", "p95", "p99"):
        assert dec["latency_ms"][p] > 0
    assert dec["latency_ms"]["p50"] <= dec["latency_ms"]["p95"] <= dec["latency_ms"]["p99"]
    assert dec["tokens_per_s"] == pytest.approx(dec["chunks"] * n_tok / dec["decode_s"])
    assert dec["actions_per_s"] == pytest.approx(dec["tokens_per_s"] / info["policy"]["action_dim"])
    assert 1 <= dec["forward_passes_per_chunk"] <= n_tok and 1 <= dec["forward_passes_per_call"] <= n_tok
    if cfg.num_envs == 1:  # one sample per call: the two means count the same passes
        assert dec["forward_passes_per_chunk"] == pytest.approx(dec["forward_passes_per_call"])
    env = info["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["versions"]["torch"]


def test_eval_info_schema_and_num_envs_do_not_change_episodes(tiny_policy_dir, tmp_path):
    """Same seeds -> same episodes whether 1 or 2 copies run them (episodes end at different steps)."""
    cfg1 = make_cfg(tiny_policy_dir, tmp_path / "n1", decoder="ar", num_envs=1, episodes=4, videos=1)
    cfg2 = make_cfg(tiny_policy_dir, tmp_path / "n2", decoder="ar", num_envs=2, episodes=4, warmup=1)
    info1, info2 = evaluate(cfg1), evaluate(cfg2)
    check_eval_info(info1, cfg1)
    check_eval_info(info2, cfg2)
    assert len({e["steps"] for e in info1["per_episode"]}) > 1  # copies really finish at different times
    assert [episode_key(e) for e in info1["per_episode"]] == [episode_key(e) for e in info2["per_episode"]]
    assert info1["decode"]["iterations_per_chunk"]["histogram"] == {"20": info1["decode"]["chunks"]}  # AR: n - 1
    assert info2["decode"]["mean_batch_size"] > 1
    assert len(info1["video_paths"]) == 1 and info2["video_paths"] == []
    assert (cfg1.output_dir / "videos" / "test_ee_vla_FakeReach-v0" / "episode_0.gif").stat().st_size > 0


def sim_kwargs(env_id: str) -> dict:
    """EvalConfig fields for the MuJoCo env: small images, short episodes, software rendering."""
    return dict(
        env=[env_id], env_modules=["sim_envs"], max_episode_steps=5, env_kwargs={"image_size": 64}, mujoco_gl="osmesa"
    )


@pytest.mark.parametrize("which", ["fake", "sim"])
def test_compare_ar_jacobi_identical_episodes(tiny_policy_dir, tmp_path, capsys, which, sim_env_id):
    """Greedy Jacobi to convergence == AR, so whole episodes must match, reward for reward."""
    extra = {}
    if which == "sim":
        extra = sim_kwargs(sim_env_id)
    cfg = make_cfg(
        tiny_policy_dir, tmp_path, compare=["ar,jacobi"], num_envs=2, episodes=3, print_summary=True, **extra
    )
    result = evaluate(cfg)
    check_eval_info(result["runs"]["ar"], replace(cfg, output_dir=tmp_path / "ar"))
    check_eval_info(result["runs"]["jacobi"], replace(cfg, output_dir=tmp_path / "jacobi"))
    ar, jac = result["runs"]["ar"], result["runs"]["jacobi"]
    assert [e["seed"] for e in ar["per_episode"]] == [e["seed"] for e in jac["per_episode"]] == [10, 11, 12]
    assert [episode_key(e) for e in ar["per_episode"]] == [episode_key(e) for e in jac["per_episode"]]
    assert jac["decode"]["inexact_chunks"] == 0 and jac["decode"]["chunks"] == ar["decode"]["chunks"]
    rows = result["decoders"]
    assert result["baseline"] == "ar"
    assert rows["ar"]["speedup_tokens_per_s"] == 1.0 and rows["ar"]["speedup_forward_passes"] == 1.0
    assert rows["jacobi"]["episodes_identical_to_baseline"] == 3
    assert rows["jacobi"]["speedup_forward_passes"] == pytest.approx(
        rows["ar"]["forward_passes_per_call"] / rows["jacobi"]["forward_passes_per_call"]
    )
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert set(on_disk["decoders"]) == {"ar", "jacobi"} and "runs" not in on_disk
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert (tmp_path / "ar" / "eval_info.json").is_file() and (tmp_path / "jacobi" / "eval_info.json").is_file()
    out = capsys.readouterr().out
    assert "jacobi" in out and "tokens/s" in out
    assert "same eps: episodes with the same return and outcome as ar's" in out  # every column is explained
    assert rows["ar"]["setup_s"] == rows["jacobi"]["setup_s"] == 0 and "one-time engine setup" not in out
    # success per env: in compare.json always, on screen when there are several envs
    assert on_disk["decoders"]["jacobi"]["pc_success_per_env"] == {cfg.env[0]: rows["jacobi"]["pc_success"]}
    assert "success % per env" not in out
    per = {cfg.env[0]: 100.0, "ee_vla/Other-v0": 50.0}
    two = {**result, "env": list(per), "decoders": {n: {**r, "pc_success_per_env": per} for n, r in rows.items()}}
    lines = format_comparison(two).splitlines()
    i = lines.index("success % per env:")
    assert [ln.split()[0] for ln in lines[i + 1 : i + 3]] == ["ar", "jacobi"]
    assert lines[i + 1].endswith(f"{cfg.env[0].split('/')[-1]} 100.0, Other-v0 50.0")
    from matplotlib.image import imread

    one_width = imread(tmp_path / "compare.png").shape[1]
    assert imread(plot_comparison(two, tmp_path / "two.png")).shape[1] > 1.3 * one_width  # + a per-env panel
    rows["jacobi"]["setup_s"] = 0.5
    lines = format_comparison(result).splitlines()
    assert "one-time engine setup inside timed calls, taken out of their latency: jacobi 0.50 s" in lines
    # a variant's long name widens the first column: every row's success stays under its header
    long = {**result, "decoders": {"ar": rows["ar"], "jacobi:init=warm:guess_in_prefill=true": rows["jacobi"]}}
    head, *body = format_comparison(long).splitlines()[1:4]
    end = head.index("success %") + len("success %")
    for line, r in zip(body, (rows["ar"], rows["jacobi"]), strict=True):
        assert line[:end].endswith(f"{r['pc_success']:.1f}") and line[end] == " ", (head, line)


def test_failed_episodes_are_counted_by_the_outcome_their_env_reported(tiny_policy_dir, tmp_path, capsys):
    """The last step's `info["outcome"]` of each failed episode, per env: in eval_info.json, on the
    summary and in the comparison; an env without outcomes (none reported) adds nothing."""
    cfg = make_cfg(tiny_policy_dir, tmp_path / "one", decoder="ar", episodes=8, num_envs=2, print_summary=True)
    info = evaluate(cfg)
    counts = info["per_env"][FAKE_ENV]["aggregated"]["failure_outcomes"]
    failed = [e for e in info["per_episode"] if not e["success"]]
    assert failed and sum(counts.values()) == len(failed) and set(counts) <= {"close", "far"}
    assert list(counts.values()) == sorted(counts.values(), reverse=True)  # most frequent first
    assert info["aggregated"]["failure_outcomes"] == counts
    assert all(e["final_info"]["distance"] >= 0.4 for e in failed)  # the last step's: not a success
    out = capsys.readouterr().out.splitlines()
    i = out.index("failed episodes by outcome:")
    assert out[i + 1].split(maxsplit=1) == [FAKE_ENV, ", ".join(f"{k} {n}" for k, n in counts.items())]

    result = evaluate(make_cfg(tiny_policy_dir, tmp_path / "cmp", compare=["ar", "jacobi"], episodes=8, num_envs=2))
    assert result["decoders"]["ar"]["failure_outcomes_per_env"] == {FAKE_ENV: counts}
    lines = format_comparison(result).splitlines()
    i = lines.index("failed episodes by outcome:")
    short = FAKE_ENV.split("/")[-1]
    assert [ln.split()[:2] for ln in lines[i + 1 : i + 3]] == [["ar", f"{short}:"], ["jacobi", f"{short}:"]]

    block = info["per_env"][FAKE_ENV]
    silent = {**block, "aggregated": {**block["aggregated"], "failure_outcomes": {}}}
    assert "failed episodes by outcome" not in format_summary({**info, "per_env": {FAKE_ENV: silent}})


def test_failure_videos_are_saved_for_the_first_failed_episodes(tiny_policy_dir, tmp_path):
    """`failure_videos=2` beside `videos=1`: episode 0's video, and those of the first two failed
    episodes (episode 0 among them if it failed), each named in its episode's `video`; no other
    episode has one."""
    cfg = make_cfg(tiny_policy_dir, tmp_path, decoder="ar", episodes=6, num_envs=2, videos=1, failure_videos=2)
    info = evaluate(cfg)
    eps = info["per_episode"]
    failed = [e for e in eps if not e["success"]]
    assert len(failed) >= 3  # the tiny random policy rarely reaches the goal: there is a choice to make
    with_video = [e for e in eps if "video" in e]
    assert sorted(info["video_paths"]) == sorted(e["video"] for e in with_video)
    assert all(Path(e["video"]).stat().st_size > 0 for e in with_video)
    assert eps[0].get("video") and all(e["episode_ix"] == 0 or not e["success"] for e in with_video)
    assert sum(not e["success"] for e in with_video) == 2


def test_ceed_warm_start_is_per_copy(tiny_policy_dir, tmp_path):
    """With a 1-iteration cap the output depends on the initial guess; warm guesses must come from each
    copy's own previous chunk, so 1 and 2 copies (finishing at different steps) give the same episodes."""
    kw = dict(decoder="ceed", init="warm", max_iterations=1, episodes=4)
    cfg1 = make_cfg(tiny_policy_dir, tmp_path / "n1", num_envs=1, **kw)
    cfg2 = make_cfg(tiny_policy_dir, tmp_path / "n2", num_envs=2, **kw)
    info1, info2 = evaluate(cfg1), evaluate(cfg2)
    check_eval_info(info2, cfg2)
    assert [episode_key(e) for e in info1["per_episode"]] == [episode_key(e) for e in info2["per_episode"]]
    dec = info2["decode"]
    assert dec["iterations_per_chunk"]["max"] <= 1 and dec["forward_passes_per_call"] <= 2
    assert sum(dec["exit_reasons"].values()) == dec["chunks"]
    assert info2["decode_config"]["max_iterations"] == 1 and info2["decode_config"]["method"] == "ceed"


def test_async_vector_env_matches_sync(tiny_policy_dir, tmp_path):
    sync = evaluate(make_cfg(tiny_policy_dir, tmp_path / "s", decoder="ar", num_envs=2, episodes=2))
    asyn = evaluate(make_cfg(tiny_policy_dir, tmp_path / "a", decoder="ar", num_envs=2, episodes=2, vector="async"))
    assert [episode_key(e) for e in sync["per_episode"]] == [episode_key(e) for e in asyn["per_episode"]]


def test_crashing_episode_is_an_error(tiny_policy_dir, tmp_path):
    cfg = make_cfg(tiny_policy_dir, tmp_path, decoder="ar", env_kwargs={"crash_at_step": 2})
    with pytest.raises(RuntimeError, match="crashed on purpose"):
        evaluate(cfg)
    assert not (tmp_path / "eval_info.json").exists()


# ---- bad input: clear errors before compute ----------------------------------------------------
def test_unknown_env_id_fails_before_the_model_loads(tmp_path):
    cfg = make_cfg(tmp_path / "no_such_model", tmp_path / "out", env=["test_ee_vla/FakeReech-v0"])
    with pytest.raises(EvalConfigError, match="FakeReech-v0.*not a registered.*FakeReach-v0"):
        evaluate(cfg)


def test_a_missing_calibration_file_fails_before_the_model_loads(tiny_policy_dir, tmp_path):
    cfg = make_cfg(tiny_policy_dir, tmp_path, quantize="fp8_tensor", calibration=str(tmp_path / "none.json"))
    with pytest.raises(EvalConfigError, match="calibration file not found: .*none.json"):
        cfg.check_inputs()


def test_policy_dir_missing_files(tiny_policy_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="missing .*model.safetensors"):
        evaluate(make_cfg(broken, tmp_path / "out"))


def test_action_dim_mismatch(tiny_policy_dir, tmp_path):
    with pytest.raises(EvalConfigError, match="FakeReach4D-v0.*action_dim=7"):
        evaluate(make_cfg(tiny_policy_dir, tmp_path, env=[FAKE_ENV_4D]))
    assert not (tmp_path / "eval_info.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decoder": "beam"}, "unknown decoder 'beam'"),
        ({"compare": ["ar,nucleus"]}, "unknown decoder 'nucleus'"),
        ({"compare": ["ar", "ar"]}, "twice"),
        ({"compare": ["ar", "ceed:speed=2"]}, "field=value with a field from"),
        ({"compare": ["ar", "jacobi:max_iterations=2"]}, "decoder 'jacobi:max_iterations=2': .*early-exit"),
        ({"compare": ["ar", "ar:guess_in_prefill=true"]}, "jacobi/ceed option"),
        ({"episodes": 0}, "EvalConfig.episodes"),
        ({"num_envs": 0}, "EvalConfig.num_envs"),
        ({"n_action_steps": 0}, "RuntimeConfig.n_action_steps"),
        ({"decoder": "ar", "tau": 2}, "tau"),
        ({"decoder": "ceed", "window": 0}, "window"),
        ({"vector": "threads"}, "EvalConfig.vector"),
        ({"env": [FAKE_ENV, FAKE_ENV]}, "twice"),
        ({"engine": "turbo"}, "RuntimeConfig.engine"),
        ({"engine": "graph", "device": "cpu"}, "needs a CUDA device"),
        ({"engine": "compiled", "compile_mode": "fastest"}, "RuntimeConfig.compile_mode"),
        ({"save_calibration": "c.json", "quantize": "int8"}, "save_calibration records the unquantised model"),
        ({"save_calibration": "c.json", "engine": "graph", "device": "cuda"}, "hooks, which CUDA graphs skip"),
    ],
)
def test_bad_config_fields(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):  # EvalConfigError, or RuntimeConfigError for runtime options
        make_cfg(tmp_path / "m", tmp_path, **kwargs)


def test_compare_applies_ceed_options_to_ceed_only(tmp_path):
    cfg = make_cfg(tmp_path / "m", tmp_path, compare=["ar", "jacobi", "ceed"], tau=2, max_iterations=3, init="prompt")
    dc = cfg.decode_configs()
    assert (dc["ceed"].tau, dc["ceed"].max_iterations, dc["ceed"].init) == (2, 3, "prompt")
    assert (dc["jacobi"].tau, dc["jacobi"].max_iterations, dc["jacobi"].init) == (0, None, "prompt")
    assert dc["ar"].method == "ar" and dc["ar"].tau == 0


def test_cli_parsing_with_tyro():
    import tyro

    cfg = tyro.cli(
        EvalConfig,
        args=["--policy", "m", "--env", "a/A-v0", "--env", "b/B-v0", "--compare", "ar,jacobi,ceed", "--episodes", "5"],
    )
    assert cfg.env == ["a/A-v0", "b/B-v0"] and cfg.compare == ["ar", "jacobi", "ceed"] and cfg.episodes == 5
    assert tyro.cli(EvalConfig, args=["--policy", "m"]).env == ["ee_vla/PickCube-v0"]


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 1, 0.2065, 1.0)],
)
def test_wilson_interval(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_pick_cube_smoke(tiny_policy_dir, tmp_path, sim_env_id):
    cfg = make_cfg(
        tiny_policy_dir, tmp_path, decoder="ceed", num_envs=2, episodes=3, videos=1, **sim_kwargs(sim_env_id)
    )
    info = evaluate(cfg)
    check_eval_info(info, cfg)
    assert all(e["steps"] <= 5 for e in info["per_episode"])
    assert len(info["video_paths"]) == 1


def test_an_evaluation_records_a_calibration_that_fp8_tensor_then_runs_on(tiny_policy_dir, tmp_path, monkeypatch):
    """`--save-calibration`: the evaluation's episodes record each linear layer's largest input;
    that file then fixes the activation scales of `--quantize fp8_tensor --calibration`, on which
    greedy Jacobi still equals AR episode for episode. (fp8 needs a GPU; torchao's float8 tensors
    also compute on the CPU, so the device check is lifted here.)"""
    from ee_vla.models import quantize
    from ee_vla.models.quantize import load_calibration, quantized_mode

    cal = tmp_path / "calibration.json"
    evaluate(
        make_cfg(tiny_policy_dir, tmp_path / "record", decoder="ceed", num_envs=2, episodes=2, save_calibration=cal)
    )
    table = load_calibration(cal)
    about = json.loads(cal.read_text())["about"]
    assert (
        about["env"] == [FAKE_ENV] and about["episodes"] == 2 and about["seed"] == 10 and about["decoders"] == ["ceed"]
    )
    assert any(n.endswith("qkv_proj") for n in table) and all(c.amax > 0 and c.ndim == 3 for c in table.values())
    monkeypatch.setattr(quantize, "_config", lambda mode, device: None)
    cfg = make_cfg(
        tiny_policy_dir,
        tmp_path / "fp8",
        compare=["ar,jacobi"],
        episodes=2,
        quantize="fp8_tensor",
        calibration=str(cal),
    )
    result = evaluate(cfg)
    ar, jac = result["runs"]["ar"], result["runs"]["jacobi"]
    assert ar["config"]["calibration"] == str(cal) and ar["config"]["quantize"] == "fp8_tensor"
    assert [episode_key(e) for e in ar["per_episode"]] == [episode_key(e) for e in jac["per_episode"]]
    policy = cfg.runtime.load_policy(tiny_policy_dir)
    assert quantized_mode(policy.vla.model) == "fp8_tensor"
    static = [
        n
        for n, m in policy.vla.model.named_modules()
        if getattr(getattr(m, "weight", None), "act_quant_scale", None) is not None
    ]
    assert static and set(static) <= set(table)
    for name in set(table) - set(static):  # kept: fp8's kernels need dimensions that are multiples of 16
        m = policy.vla.model.get_submodule(name)
        assert m.in_features % 16 or m.out_features % 16, name


def test_static_engine_evaluates_the_same_way(tiny_policy_dir, tmp_path):
    """`engine="static"` (the GPU engines' static-shape forwards, bucketed image prefill included)
    runs the policy in eval; greedy Jacobi == AR holds through it, episode for episode."""
    cfg = make_cfg(tiny_policy_dir, tmp_path, compare=["ar,jacobi"], num_envs=2, episodes=2, engine="static")
    result = evaluate(cfg)
    ar, jac = result["runs"]["ar"], result["runs"]["jacobi"]
    assert ar["config"]["engine"] == "static"
    assert [episode_key(e) for e in ar["per_episode"]] == [episode_key(e) for e in jac["per_episode"]]


def test_warm_up_builds_an_engine_for_every_batch_size_before_timing(tiny_policy_dir, tmp_path, monkeypatch):
    """With a static engine, no engine is built while decode calls are timed: the warm-up decodes
    once at each batch size 1..num_envs, and the pool keeps that many engines."""
    from ee_vla.engine.factory import EnginePool

    built, timing = [], []
    orig_engine = EnginePool.engine

    def engine(self, batch_size, prompt_len):
        before = self.engines.get(batch_size)
        eng = orig_engine(self, batch_size, prompt_len)
        if eng is not before:
            built.append((batch_size, bool(timing)))
        return eng

    orig_add = DecodeLog.add

    def add(self, stats, seconds, setup_s=0.0):
        timing.append(True)  # the first timed call has returned: later builds happened while timing
        return orig_add(self, stats, seconds, setup_s)

    monkeypatch.setattr(EnginePool, "engine", engine)
    monkeypatch.setattr(DecodeLog, "add", add)
    cfg = make_cfg(tiny_policy_dir, tmp_path, num_envs=3, episodes=5, engine="static", warmup=1)
    evaluate(cfg)
    assert sorted(b for b, _ in built) == [1, 2, 3] and not any(during for _, during in built)


@pytest.mark.parametrize("guess_in_prefill", [False, True])
def test_warm_up_builds_each_env_prompt_bucket_before_timing(tiny_policy_dir, tmp_path, monkeypatch, guess_in_prefill):
    """A later env id whose instruction is much longer needs another prompt bucket: it is built in
    that env's warm-up, never inside a timed decode call (a CUDA-graph capture would be timed). With
    the guess in the prefill, every batch size's prefill with the guess is built there too."""
    from ee_vla.engine.static import StaticEngine
    from ee_vla.evaluation.rollout import _Rollout

    from .conftest import FAKE_ENV_LONG

    built, timed = [], []
    orig_prefill, orig_decode = StaticEngine._bucketed_prefill, _Rollout._decode

    def bucketed(self, *args, **kwargs):
        known = set(self._prompts)  # keyed by (bucket, guess tokens)
        out = orig_prefill(self, *args, **kwargs)
        for bucket, guess in set(self._prompts) - known:
            built.append((self.batch_size, bucket, bool(timed), guess))
        return out

    def decode(self, *args, **kwargs):
        timed.append(True)
        try:
            return orig_decode(self, *args, **kwargs)
        finally:
            timed.pop()

    monkeypatch.setattr(StaticEngine, "_bucketed_prefill", bucketed)
    monkeypatch.setattr(_Rollout, "_decode", decode)
    cfg = make_cfg(
        tiny_policy_dir,
        tmp_path,
        env=[FAKE_ENV, FAKE_ENV_LONG],
        num_envs=2,
        episodes=3,
        engine="static",
        decoder="ceed",
        guess_in_prefill=guess_in_prefill,
    )
    info = evaluate(replace(cfg, warmup=1))
    assert len({bucket for _, bucket, _, _ in built}) >= 2  # the long instruction got its own bucket
    assert not any(during for _, _, during, _ in built), built
    with_guess = {batch for batch, _, _, guess in built if guess}
    assert with_guess == ({1, 2} if guess_in_prefill else set())  # every batch size, with its guess
    assert info["per_env"][FAKE_ENV]["aggregated"]["eval_s"] > 0


def test_warm_start_decodes_every_copy_in_one_call(tiny_policy_dir, tmp_path, monkeypatch):
    """Copies with a previous chunk and copies that just began an episode share one policy call:
    the latter get a row of -1 (no guess) in `warm_start_tokens`."""
    from ee_vla.evaluation.rollout import _Rollout
    from ee_vla.policy import VLAPolicy

    decodes, calls, mixed = [], [], []
    orig_decode, orig_predict = _Rollout._decode, VLAPolicy.predict_action_chunk

    def decode(self, obs, slots, *args, **kwargs):
        decodes.append(len(slots))
        return orig_decode(self, obs, slots, *args, **kwargs)

    def predict(self, obs):
        w = self.warm_start_tokens
        if w is not None:
            no_guess = (w < 0).all(1)
            assert ((w < 0).any(1) == no_guess).all()  # a row is a whole chunk or none
            mixed.append(bool(no_guess.any() and not no_guess.all()))
        calls.append(1)
        return orig_predict(self, obs)

    monkeypatch.setattr(_Rollout, "_decode", decode)
    monkeypatch.setattr(VLAPolicy, "predict_action_chunk", predict)
    evaluate(make_cfg(tiny_policy_dir, tmp_path, decoder="ceed", init="warm", num_envs=3, episodes=8))
    assert len(calls) == len(decodes) > 0
    assert any(mixed)  # copies finish at different steps: some calls mix both kinds of rows


def test_setup_work_inside_a_timed_call_is_not_decode_time(tiny_policy_dir, tmp_path, monkeypatch):
    """A prompt-bucket capture inside a timed call (here: 0.3 s of fake capture in the third call)
    reaches the decode log as that call's `setup_s`, which takes it out of the call's latency."""
    import time

    from ee_vla.engine.factory import EnginePool

    calls, added = [], []
    orig_call, orig_add = EnginePool.__call__, DecodeLog.add

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.3)
            self.setup_s += 0.3
        return orig_call(self, *args, **kwargs)

    def add(self, stats, seconds, setup_s=0.0):
        added.append((seconds, setup_s))
        orig_add(self, stats, seconds, setup_s)
        assert self.latency.samples[-1] == pytest.approx(seconds - setup_s)

    monkeypatch.setattr(EnginePool, "__call__", call)
    monkeypatch.setattr(DecodeLog, "add", add)
    cfg = make_cfg(tiny_policy_dir, tmp_path, decoder="ar", num_envs=1, episodes=2, engine="static", warmup=1)
    info = evaluate(cfg)
    dec = info["decode"]
    assert "one-time engine setup inside timed calls, taken out of their latency: ar 0.30 s" in format_summary(info)
    assert len(added) == len(calls) - 1 == dec["calls"]  # the warm-up call (the engine's build) is not timed
    seconds, setup = added[1]  # the third pool call is the second timed one
    assert setup == pytest.approx(0.3) and seconds >= 0.3
    assert [s for _, s in added].count(0.0) == len(added) - 1
    assert dec["setup_calls"] == 1 and dec["setup_s"] == pytest.approx(0.3)


def test_decode_log_takes_setup_out_of_latency():
    from ee_vla.decoding.core import DecodeStats

    log = DecodeLog(n_tokens=21, chunk_size=3)
    stats = DecodeStats(n_tokens=21, batch_size=2, prefill_s=0.4)
    stats.forward_passes, stats.unit_final_iteration = 5, [[1, 2, 4], [1, 2, 3]]
    stats.unit_exact, stats.exit_reason = [[True] * 3] * 2, ["converged"] * 2
    log.add(stats, 0.5, setup_s=0.35)
    s = log.summary()
    assert s["latency_ms"]["p50"] == pytest.approx(150) and s["prefill_ms"]["p50"] == pytest.approx(50)
    assert s["setup_s"] == pytest.approx(0.35) and s["setup_calls"] == 1
    assert s["tokens_per_s"] == pytest.approx(2 * 21 / 0.15)


def test_every_decoder_preset_can_be_evaluated(tmp_path):
    """The eval CLI's decoder choices are the decoding presets, and the cap/tau options reach every
    early-exit preset."""
    from typing import get_type_hints

    from ee_vla.decoding.config import PRESETS

    assert set(get_type_hints(RuntimeConfig)["decoder"].__args__) == set(PRESETS)
    cfg = make_cfg(tmp_path / "m", tmp_path, compare=list(PRESETS), max_iterations=3, tau=0)
    decs = cfg.decode_configs()
    assert decs["ceed_cap"].max_iterations == 3 and decs["ceed"].max_iterations == 3
    assert decs["ar"].max_iterations != 3


def test_python_m_entry_point_parses_the_eval_options():
    """`python -m ee_vla.evaluation` is `ee-vla eval`: its help lists the flat runtime flags."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "ee_vla.evaluation", "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    for flag in ("--policy", "--compare", "--decoder", "--max-iterations", "--tau", "--device", "--engine"):
        assert flag in run.stdout, flag


def test_an_env_at_another_rate_than_the_policys_training_is_named(tiny_policy_dir, tmp_path, caplog):
    """The fake env steps at 10 Hz (its render_fps): a policy whose contract says 10 Hz runs quietly,
    one trained at 80 Hz gets a warning naming both rates before any episode."""
    import logging
    import shutil

    for hz, warned in ((10.0, False), (80.0, True)):
        model = tmp_path / f"m{int(hz)}"
        shutil.copytree(tiny_policy_dir, model)
        extra = json.loads((model / "ee_vla.json").read_text())
        extra["contract"] = {"control_hz": hz, "env_ids": [FAKE_ENV], "action_space": {}}
        (model / "ee_vla.json").write_text(json.dumps(extra))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ee_vla.evaluation"):
            evaluate(make_cfg(model, tmp_path / f"out{int(hz)}", episodes=1))
        named = [m for m in caplog.messages if "trained on actions at 80 Hz" in m and "10 Hz" in m]
        assert bool(named) == warned, caplog.messages


def _env_without_image_size(action_dim: int = 7):
    return gymnasium.spec(FAKE_ENV).entry_point(action_dim=action_dim)


def test_envs_render_at_the_policys_image_size(tiny_policy_dir, tmp_path, sim_env_id, monkeypatch):
    """The tiny policy sees 64x64 images: the sim env renders 64x64 pixels for it (not its 128x128
    default, resized), an `image_size` in env_kwargs wins, and an env without that argument gets none
    (given for it, it is an error that names it)."""
    from types import SimpleNamespace

    from ee_vla.evaluation.rollout import env_kwargs_for

    policy = SimpleNamespace(vla=SimpleNamespace(image_size=64, cameras=("pixels",)))
    cfg = make_cfg(tiny_policy_dir, tmp_path / "a", env=[sim_env_id])
    assert env_kwargs_for(sim_env_id, cfg, policy) == {"image_size": 64}
    cfg.env_kwargs = {"image_size": 96}
    assert env_kwargs_for(sim_env_id, cfg, policy) == {"image_size": 96}
    if "test_ee_vla/NoImageSize-v0" not in gymnasium.registry:
        gymnasium.register("test_ee_vla/NoImageSize-v0", entry_point=_env_without_image_size)
    with pytest.raises(EvalConfigError, match="NoImageSize-v0.*image_size: not an argument of this env"):
        env_kwargs_for("test_ee_vla/NoImageSize-v0", cfg, policy)
    cfg.env_kwargs = {}
    assert env_kwargs_for("test_ee_vla/NoImageSize-v0", cfg, policy) == {}

    seen = []
    from ee_vla.evaluation import rollout

    real = rollout._make_env

    def spy(env_id, modules, steps, kwargs, horizon=0):
        env = real(env_id, modules, steps, kwargs, horizon)
        seen.append(env.observation_space["pixels"].shape)
        return env

    monkeypatch.setattr(rollout, "_make_env", spy)
    evaluate(make_cfg(tiny_policy_dir, tmp_path / "c", env=[sim_env_id], episodes=1, num_envs=1, vector="sync"))
    assert seen and set(seen) == {(64, 64, 3)}, seen


def test_an_openvla_checkpoint_is_evaluated_with_its_unnorm_key(openvla_dir, tmp_path):
    """`ee-vla eval --policy OPENVLA_DIR --unnorm-key K`: the checkpoint loads natively and runs
    episodes; without the key (it has two datasets' statistics) the error names them."""
    info = evaluate(make_cfg(openvla_dir, tmp_path / "a", episodes=2, unnorm_key="bridge_orig", decoder="ceed"))
    assert len(info["per_episode"]) == 2 and info["policy"]["chunk_size"] == 1
    with pytest.raises(ModelLoadError, match="fractal20220817_data"):
        evaluate(make_cfg(openvla_dir, tmp_path / "b", episodes=1))


def test_compare_runs_variants_of_a_preset_with_their_own_options(tmp_path):
    cfg = make_cfg(
        tmp_path / "m",
        tmp_path,
        compare=["ar", "ceed", "ceed:guess_in_prefill=true:tau=0", "ceed_cap:max_iterations=1"],
        max_iterations=3,
    )
    dc = cfg.decode_configs()
    assert (dc["ceed"].tau, dc["ceed"].max_iterations, dc["ceed"].guess_in_prefill) == (1, 3, False)
    variant = dc["ceed:guess_in_prefill=true:tau=0"]
    assert (variant.tau, variant.max_iterations, variant.guess_in_prefill) == (0, 3, True)
    assert dc["ceed_cap:max_iterations=1"].max_iterations == 1


def test_a_variant_runs_in_a_folder_whose_name_every_tool_takes(tiny_policy_dir, tmp_path):
    """`PRESET:field=value` decoders get folders without `:` or `=` (scp and rsync read `:` as a
    host); compare.json points at them."""
    from ee_vla.evaluation import run_dir_names

    assert run_dir_names(["ar", "ceed_cap:max_iterations=1:guess_in_prefill=true", "a/b", "a_b"]) == {
        "ar": "ar",
        "ceed_cap:max_iterations=1:guess_in_prefill=true": "ceed_cap_max_iterations_1_guess_in_prefill_true",
        "a/b": "a_b",
        "a_b": "a_b_2",
    }
    cfg = make_cfg(tiny_policy_dir, tmp_path, compare=["ar", "ceed_cap:max_iterations=1"], episodes=1)
    result = evaluate(cfg)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["ar", "ceed_cap_max_iterations_1"]
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert on_disk["decoders"]["ceed_cap:max_iterations=1"]["eval_info"] == str(
        tmp_path / "ceed_cap_max_iterations_1" / "eval_info.json"
    )
    assert result["runs"]["ceed_cap:max_iterations=1"]["decode_config"]["max_iterations"] == 1


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_with_an_inference_delay_each_chunk_acts_that_many_steps_after_its_observation(
    tiny_policy_dir, tmp_path, monkeypatch, delay
):
    """The next chunk is decoded while the current one's last `delay` actions run: after each
    decode but the episode's first, `delay` steps still execute the previous chunk, then (chunk_start
    arrival) the new chunk's 3 actions run; every chunk's actions run once each, in order."""
    import gymnasium
    import numpy as np

    from ee_vla.policy import VLAPolicy

    events, real_predict = [], VLAPolicy.predict_action_chunk

    def predict(self, obs):
        k = sum(1 for e in events if e[0] == "decode")
        events.append(("decode", k))
        return np.full_like(real_predict(self, obs), 0.01 * k)  # chunk k's actions say k

    env_cls = gymnasium.spec(FAKE_ENV).entry_point
    real_step = env_cls.step

    def step(self, action):
        events.append(("step", round(float(action[0]) * 100)))
        return real_step(self, action)

    monkeypatch.setattr(VLAPolicy, "predict_action_chunk", predict)
    monkeypatch.setattr(env_cls, "step", step)
    cfg = make_cfg(tiny_policy_dir, tmp_path, episodes=1, seed=15, inference_delay=delay, chunk_start="arrival")
    evaluate(cfg)  # a 6-step episode
    expected, queue, k = [], [], 0
    for _ in range(6):
        if len(queue) <= delay:
            expected.append(("decode", k))
            queue += [k] * 3
            k += 1
        expected.append(("step", queue.pop(0)))
    assert events == expected
    if delay == 1:
        D, S = "decode", "step"
        assert events == [(D, 0), (S, 0), (S, 0), (D, 1), (S, 0), (S, 1), (S, 1), (D, 2), (S, 1)]


def test_with_temporal_ensembling_a_chunk_is_decoded_every_step_and_the_plans_for_it_averaged(
    tiny_policy_dir, tmp_path, monkeypatch
):
    """`temporal_ensemble` 0 (equal weights): a decode before every step, and step t executes the
    mean of what the chunks decoded at steps t-2..t (chunks of 3) planned for step t; a new episode
    starts without the last one's chunks."""
    import gymnasium
    import numpy as np

    from ee_vla.policy import VLAPolicy

    events, real_predict = [], VLAPolicy.predict_action_chunk

    def predict(self, obs):
        k = sum(1 for e in events if e[0] == "decode")
        events.append(("decode", k))
        chunk = np.zeros_like(real_predict(self, obs))
        chunk[..., 0] = 0.01 * (10 * k + np.arange(3))  # chunk k's action i says 10 k + i
        return chunk

    env_cls = gymnasium.spec(FAKE_ENV).entry_point
    real_step = env_cls.step

    def step(self, action):
        events.append(("step", round(float(action[0]) * 100, 3)))
        return real_step(self, action)

    monkeypatch.setattr(VLAPolicy, "predict_action_chunk", predict)
    monkeypatch.setattr(env_cls, "step", step)
    info = evaluate(make_cfg(tiny_policy_dir, tmp_path, episodes=2, seed=15, temporal_ensemble=0.0))
    lengths = [e["steps"] for e in info["per_episode"]]
    assert lengths[0] > 3  # an episode longer than a chunk: every step averages up to three plans
    expected, k = [], 0
    for steps in lengths:
        first = k
        for _step in range(steps):
            expected.append(("decode", k))
            planned = [10 * j + (k - j) for j in range(max(first, k - 2), k + 1)]
            expected.append(("step", round(float(np.mean(planned)), 3)))
            k += 1
    assert events == expected


def test_temporal_ensembling_needs_a_decode_every_step(tiny_policy_dir, tmp_path):
    with pytest.raises(RuntimeConfigError, match=r"temporal_ensemble decodes a chunk at every step.*n_action_steps=2"):
        make_cfg(tiny_policy_dir, tmp_path, temporal_ensemble=0.01, n_action_steps=2)
    for bad in (float("nan"), float("inf"), True):
        with pytest.raises(RuntimeConfigError, match="RuntimeConfig.temporal_ensemble must be a finite number"):
            make_cfg(tiny_policy_dir, tmp_path, temporal_ensemble=bad)


def test_an_inference_delay_must_leave_a_chunk_action_to_decode_behind(tiny_policy_dir, tmp_path):
    with pytest.raises(EvalConfigError, match=r"inference_delay=3 must be below .*n_action_steps=3"):
        evaluate(make_cfg(tiny_policy_dir, tmp_path, inference_delay=3))
    with pytest.raises(EvalConfigError, match=r"inference_delay=2 must be below .*n_action_steps=2"):
        evaluate(make_cfg(tiny_policy_dir, tmp_path / "b", inference_delay=2, n_action_steps=2))
    with pytest.raises(EvalConfigError, match=r"EvalConfig.inference_delay must be >= 0"):
        make_cfg(tiny_policy_dir, tmp_path / "c", inference_delay=-1)


def test_a_delayed_chunk_starts_at_the_action_planned_for_its_arrival(tiny_policy_dir, tmp_path, monkeypatch):
    """With a delay of 1 step and chunk_start observation (the default), a chunk decoded while
    another runs starts at its action 1 (action 0 was meant for the step its decode took); the
    episode's first chunk runs whole; the warm guess shifts by the 2 actions run between decodes."""
    import gymnasium
    import numpy as np

    from ee_vla.policy import VLAPolicy

    events, shifts, real_predict = [], [], VLAPolicy.predict_action_chunk

    def predict(self, obs):
        k = sum(1 for e in events if e[0] == "decode")
        events.append(("decode", k))
        shifts.append(self.warm_start_shift)
        chunk = real_predict(self, obs)
        return (10 * k + np.arange(chunk.shape[1]))[None, :, None] / 1000 + 0 * chunk  # action j of chunk k: k, j

    env_cls = gymnasium.spec(FAKE_ENV).entry_point
    real_step = env_cls.step

    def step(self, action):
        events.append(("step", divmod(round(float(action[0]) * 1000), 10)))
        return real_step(self, action)

    monkeypatch.setattr(VLAPolicy, "predict_action_chunk", predict)
    monkeypatch.setattr(env_cls, "step", step)
    cfg = make_cfg(tiny_policy_dir, tmp_path, episodes=1, seed=15, inference_delay=1)
    assert cfg.chunk_start == "observation"
    evaluate(cfg)  # a 6-step episode
    D, S = "decode", "step"
    assert events == [
        (D, 0), (S, (0, 0)), (S, (0, 1)), (D, 1), (S, (0, 2)), (S, (1, 1)),
        (D, 2), (S, (1, 2)), (S, (2, 1)),
    ]  # fmt: skip
    assert set(shifts) == {2}
    with pytest.raises(EvalConfigError, match="chunk_start must be arrival.observation, got 'late'"):
        make_cfg(tiny_policy_dir, tmp_path / "b", chunk_start="late")
