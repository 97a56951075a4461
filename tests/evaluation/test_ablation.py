"""`python -m ee_vla.benchmarks.ablation`: one comparison per model, the ladder's rows in order."""

from __future__ import annotations

import json

import pytest

from ee_vla.benchmarks.ablation import ROWS, AblationConfig, main

FAKE_ENV = "test_ee_vla/FakeReach-v0"  # registered by conftest.py


def test_the_ablation_evaluates_each_model_once_and_tabulates_the_ladder(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--teacher", tiny_policy_dir, "--student", tiny_policy_dir, "--student-no-mix", tiny_policy_dir]
    args += ["--env", FAKE_ENV, "--episodes", "2", "--num-envs", "2", "--seed", "10", "--max-episode-steps", "6"]
    args += ["--out", str(out)]
    info = main(args + ["--no-progress"])
    rows = info["rows"]
    assert [(r["row"], r["model"], r["decoder"]) for r in rows] == [tuple(r) for r in ROWS]
    assert info["env"] == [FAKE_ENV] and all(list(r["pc_success_per_env"]) == [FAKE_ENV] for r in rows)
    # one run per model, AR first in each: every ratio is against the AR of the row's own run
    for model in ("teacher", "student_no_mix", "student"):
        compare = json.loads((out / model / "compare.json").read_text())
        assert compare["baseline"] == "ar" and list(compare["decoders"])[0] == "ar"
        assert compare["seeds"] == [10, 11]
    ar = rows[0]
    assert ar["speedup_tokens_per_s"] == 1.0 and ar["forward_passes_per_call"] == 21.0
    # greedy Jacobi to convergence is AR: the same success, fewer or as many passes
    for r in rows[1:4]:
        assert r["decoder"] == "jacobi" and r["pc_success"] == ar["pc_success"]
        assert r["speedup_forward_passes"] == pytest.approx(21.0 / r["forward_passes_per_call"])
    cap = next(r for r in rows if r["decoder"] == "ceed_cap:init=repeat")
    assert cap["iterations_per_chunk"] <= 2.0
    two = next(r for r in rows if r["decoder"] == "ceed_2pass")
    assert two["forward_passes_per_call"] <= 2.0
    md = (out / "ablation.md").read_text()
    assert md.count("\n| ") == len(ROWS) + 1 and "python -m ee_vla.benchmarks.ablation --teacher" in md
    assert (out / "ablation.png").stat().st_size > 0
    assert "| + warm start | student | `ceed_cap:tau=1` |" in capsys.readouterr().out
    # without the no-mixed-labels student its row is left out; an earlier result is not overwritten
    with pytest.raises(SystemExit):
        main(args + ["--no-progress"])
    err = "".join(capsys.readouterr().err.split())  # tyro wraps its message to the terminal's width
    assert "exists(AblationConfig.out);pass--overwrite" in err
    info = main(args[:4] + args[6:] + ["--no-progress", "--overwrite"])
    assert "+ consistency" not in [r["row"] for r in info["rows"]] and len(info["rows"]) == len(ROWS) - 1


def test_without_env_flags_the_ablation_runs_the_suite(tiny_policy_dir, tmp_path):
    cfg = AblationConfig(teacher=tiny_policy_dir, student=tiny_policy_dir, out=tmp_path / "abl")
    assert cfg.env == ["ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0", "ee_vla/Place-v0"]


def test_a_model_that_is_not_a_model_directory_is_refused_before_any_run(tiny_policy_dir, tmp_path):
    with pytest.raises(ValueError, match=r"AblationConfig\.student: .* is not a model directory"):
        AblationConfig(teacher=tiny_policy_dir, student=tmp_path, out=tmp_path / "abl")
    # each model's evaluation is checked when the ablation is configured, not when its run starts
    with pytest.raises(ValueError, match=r"EvalConfig\.episodes must be >= 1"):
        AblationConfig(teacher=tiny_policy_dir, student=tiny_policy_dir, episodes=0, out=tmp_path / "abl")
    with pytest.raises(ValueError, match=r"EvalConfig\.env: 'ee_vla/Nope-v0' is not a registered Gymnasium env id"):
        AblationConfig(teacher=tiny_policy_dir, student=tiny_policy_dir, env=["ee_vla/Nope-v0"], out=tmp_path / "abl")


def test_resume_evaluates_only_the_models_left_and_refuses_other_settings(tiny_policy_dir, tmp_path, monkeypatch):
    """An ablation cut short after its first model: --resume reuses that model's finished run (not
    evaluated again) and evaluates the others; a finished run with other settings is named."""
    import ee_vla.evaluation as evaluation

    out = tmp_path / "abl"
    args = ["--teacher", tiny_policy_dir, "--student", tiny_policy_dir, "--env", FAKE_ENV, "--episodes", "2"]
    args += ["--num-envs", "2", "--seed", "10", "--max-episode-steps", "6", "--out", str(out), "--no-progress"]
    first = main(args)
    teacher = (out / "teacher" / "compare.json").read_text()
    (out / "student" / "compare.json").unlink()  # the student's run was cut short: its decoders' results stay
    (out / "ablation.json").unlink()
    evaluated = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda cfg: evaluated.append(cfg.output_dir.name) or real(cfg))
    info = main(args + ["--resume"])
    assert evaluated == ["student"]
    assert (out / "teacher" / "compare.json").read_text() == teacher
    assert [r["pc_success"] for r in info["rows"]] == [r["pc_success"] for r in first["rows"]]
    assert info["rows"][0]["forward_passes_per_call"] == first["rows"][0]["forward_passes_per_call"]
    with pytest.raises(ValueError, match=r"teacher/compare\.json was run with other settings \(episodes, seed\)"):
        AblationConfig(teacher=tiny_policy_dir, student=tiny_policy_dir, env=[FAKE_ENV], episodes=3, seed=11,
                       num_envs=2, max_episode_steps=6, out=out, resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="pass one"):
        AblationConfig(teacher=tiny_policy_dir, student=tiny_policy_dir, out=out, resume=True, overwrite=True)
