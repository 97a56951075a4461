"""The scripts: shell recipes parse (and pass shellcheck where it is installed), the default-policy
recipe chains its stages, the MT10 recipe checks its stages, the CPU load benchmark tabulates."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_script_parses(name):
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPTS / name)], check=True)


def test_train_mt10_rejects_an_unknown_stage():
    r = subprocess.run(
        ["bash", str(SCRIPTS / "train_mt10.sh")],
        env={"PATH": "/usr/bin:/bin", "STAGES": "colect"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown stage 'colect'" in r.stderr


def _recipe(tmp_path, **env):
    """scripts/reproduce_default_policy.sh with DRY_RUN=1: its commands, one list of words each."""
    r = subprocess.run(
        ["bash", str(SCRIPTS / "reproduce_default_policy.sh")],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert lines, r.stdout
    return [line[2:].split() for line in lines]


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_reproduce_default_policy_rejects_an_unknown_stage():
    r = subprocess.run(
        ["bash", str(SCRIPTS / "reproduce_default_policy.sh")],
        env={"PATH": "/usr/bin:/bin", "STAGES": "colect"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown stage 'colect'" in r.stderr


def test_reproduce_default_policy_chains_its_stages(tmp_path):
    """Each training run starts from the model the stage before it wrote, each on-policy collection
    runs the latest model, the student distilled from the last DAgger round goes through the
    paraphrase round, whose distilled student goes through the fresh-scenes round, whose distilled
    student is fine-tuned to chunks of 8 actions, which is fine-tuned once more without the random
    image shift and shipped, and the result lands outside the shipped checkpoint."""
    cmds = _recipe(tmp_path)
    made = []  # model dirs written so far, in order
    trains = []
    for cmd in cmds:
        init = _flag(cmd, "--init-from") or _flag(cmd, "--teacher") or _flag(cmd, "--policy")
        if init is not None:
            assert init in made, f"{' '.join(cmd)}: {init} is not a model an earlier stage wrote"
        if "--policy" in cmd:  # on-policy data comes from the latest model
            assert init == made[-1]
        if ("train" in cmd or "distill" in cmd) and "--collect-only" not in cmd:
            made.append(_flag(cmd, "--out-dir") + "/model")
            trains.append(cmd)
    outs = [_flag(c, "--out-dir").rsplit("/", 1)[1] for c in trains]
    assert outs == [
        "grounding",
        "bc1",
        "bc",
        "first_ceed",
        "ft1",
        "ft2",
        "ft4",
        "ft7",
        "dagger1",
        "dagger2",
        "dagger3",
        "ceed",
        "para",
        "para_ceed",
        "scenes",
        "scenes_ceed",
        "chunk8",
        "noshift",
        "negated",
    ]
    student, para, para_student, scenes, scenes_student, chunk8, noshift, shipped = trains[-8:]
    assert _flag(student, "--teacher").endswith("dagger3/model")
    assert _flag(para, "--init-from").endswith("/ceed/model")
    assert _flag(para_student, "--teacher").endswith("para/model")
    assert _flag(scenes, "--init-from").endswith("para_ceed/model")
    assert _flag(scenes_student, "--teacher").endswith("scenes/model")
    assert _flag(chunk8, "--init-from").endswith("scenes_ceed/model") and _flag(chunk8, "--chunk-size") == "8"
    assert _flag(noshift, "--init-from").endswith("chunk8/model") and _flag(noshift, "--chunk-size") == "8"
    assert _flag(shipped, "--init-from").endswith("noshift/model") and _flag(shipped, "--chunk-size") == "8"
    # every stage before the last two trains with the random image shift; those two without it, and
    # each keeps the average of its weights
    last_two = (noshift, shipped)
    assert {_flag(c, "--aug-shift") for c in trains if "train" in c and c not in last_two} == {"0.03"}
    for run in last_two:
        assert [_flag(run, f) for f in ("--aug-shift", "--ema-decay")] == ["0", "0.998"]
        assert run.count("--aug-shift") == 1
    for s in (student, para_student, scenes_student):
        assert [_flag(s, f) for f in ("--ar-weight", "--lr", "--label-smoothing")] == ["3", "5e-5", "0"]
        assert "--freeze-vision" in s

    # the fresh-scenes, chunk8 and shipped stages each train on explored scenes of every task beside
    # demonstrations (a dry run prints a collection each time a stage asks for it: the chunk8 stage
    # reuses the scenes stage's; the shipped stage records fresh demonstrations and scenes)
    def data(run):
        return set(run[run.index("--data") + 1 : run.index("--out-dir")])

    def envs(cmd):  # `--env A B C`: the words after --env up to the next flag
        after = cmd[cmd.index("--env") + 1 :]
        return after[: next(i for i, w in enumerate(after) if w.startswith("--"))]

    explored = {_flag(c, "--out"): c for c in cmds if "collect" in c and "--explore-steps" in c}
    suite = sorted(["ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0", "ee_vla/Place-v0"])
    for run in (scenes, chunk8, noshift, shipped):
        assert sorted(e for out in data(run) & set(explored) for e in envs(explored[out])) == suite
    assert not data(noshift) & data(chunk8) and not data(shipped) & (data(noshift) | data(chunk8))
    # the paraphrase and fresh-scenes rounds record varied wording, never the held-out phrasings; the
    # last stage's data adds the phrasings with negations
    worded = [c for c in cmds if ("collect" in c or "dagger" in c) and "--instructions" in c]
    assert len({_flag(c, "--out") for c in worded}) == 17
    negated = {_flag(c, "--out") for c in worded if _flag(c, "--instructions") == "augmented_negated"}
    assert negated == data(shipped)
    assert {_flag(c, "--instructions") for c in worded} == {"augmented", "augmented_negated"}
    assert {_flag(c, "--out").rsplit("/", 1)[1] for c in worded} <= {
        d.rsplit("/", 1)[1] for c in cmds if "distill" in c or "train" in c for d in c if d.startswith("data/")
    }
    rounds = {_flag(c, "--out-dir").rsplit("/", 1)[1]: c for c in trains if "dagger" in _flag(c, "--out-dir")}
    assert [_flag(rounds[f"dagger{r}"], "--seed") for r in (1, 2, 3)] == ["7", "8", "19"]
    assert [_flag(rounds[f"dagger{r}"], "--stop-after") for r in (1, 2, 3)] == ["2000", "1900", "1700"]
    dagger_seeds = [_flag(c, "--seed") for c in cmds if "dagger" in c and "--policy" in c]
    assert dagger_seeds == ["207000", "208000", "209000", "210000", "211000", "212000", "216000"]
    assert len(rounds["dagger2"][rounds["dagger2"].index("--data") + 1 : rounds["dagger2"].index("--out-dir")]) == 3
    assert cmds[-1][:2] == ["cp", "-r"] and cmds[-1][2].endswith("negated/model/.")
    assert sum(c[:2] == ["cp", "-r"] for c in cmds) == 1
    assert "checkpoints" not in cmds[-1][3]


def test_reproduce_default_policy_ships_the_last_stage_run(tmp_path):
    cmds = _recipe(tmp_path, STAGES="distill")
    copies = [c for c in cmds if c[:2] == ["cp", "-r"]]
    assert len(copies) == 1 and copies[0][2].endswith("/ceed/model/.") and "para" not in copies[0][2]


def test_reproduce_default_policy_splits_gpus(tmp_path):
    """NPROC=2: DDP at the same global batch for the every-object runs, the on-policy tasks split
    over both GPUs, and each round trains on both halves."""
    cmds = _recipe(tmp_path, NPROC="2", STAGES="every_object dagger")
    ddp = [c for c in cmds if c[0] == "torchrun"]
    assert len(ddp) == 3 and all(_flag(c, "--batch-size") == "512" and _flag(c, "--nproc_per_node") == "2" for c in ddp)
    round1 = [c for c in cmds if "dagger" in c and _flag(c, "--seed") == "207000"]
    assert sorted(c[1] for c in round1) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
    envs = [[c[i + 1] for i, w in enumerate(c) if w == "--env"] for c in round1]
    suite = ["ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0", "ee_vla/Place-v0"]
    assert sorted(sum(envs, [])) == sorted(suite) and all(envs)
    train1 = next(c for c in cmds if _flag(c, "--out-dir") and _flag(c, "--out-dir").endswith("dagger1"))
    data = train1[train1.index("--data") + 1 : train1.index("--out-dir")]
    assert {_flag(c, "--out") for c in round1} <= set(data) and len(data) == 3


def _load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_load_bench_reads_eval_outputs_and_tabulates(tmp_path):
    bench = _load_script("cpu_load_bench")
    for dec, p50 in (("ar", 100.0), ("ceed", 40.0)):
        (tmp_path / dec).mkdir()
        info = {"decode": {"latency_ms": {"p50": p50, "p99": 2 * p50}}, "aggregated": {"pc_success": 50.0}}
        (tmp_path / dec / "eval_info.json").write_text(json.dumps(info))
    lat = bench.demo_latencies(tmp_path)
    assert lat == {
        "ar": {"p50_ms": 100.0, "p99_ms": 200.0, "pc_success": 50.0},
        "ceed": {"p50_ms": 40.0, "p99_ms": 80.0, "pc_success": 50.0},
    }
    loaded = {d: {**v, "p50_ms": 3 * v["p50_ms"]} for d, v in lat.items()}
    rows = {"quiet": {"wall_s": 60.0, "decoders": lat}, "loaded": {"wall_s": 90.0, "decoders": loaded}}
    table = bench.format_table({"cases": {"demo": rows}})
    ar_row = next(line for line in table.splitlines() if " ar " in line).split()
    assert ar_row[:4] == ["demo", "ar", "60s", "90s"] and "1.50" in ar_row and "3.00" in ar_row
    with pytest.raises(RuntimeError, match="eval_info.json"):
        bench.demo_latencies(tmp_path / "ar" / "missing")


def test_cpu_load_bench_runs_the_demo_command_under_load(tmp_path):
    """The whole script on a tiny evaluation (one 2-step episode per task), quiet and loaded."""
    bench = _load_script("cpu_load_bench")
    out = bench.main(
        ["--cases", "demo", "--episodes", "1", "--out", str(tmp_path), "--extra", "--max-episode-steps", "2"]
    )
    rows = out["cases"]["demo"]
    assert set(rows) == {"quiet", "loaded"} and set(rows["loaded"]["decoders"]) == {"ar", "ceed"}
    assert json.loads((tmp_path / "cpu_load_bench.json").read_text())["competitors"] == 1


def test_localisation_probe_finds_a_signal_and_not_noise():
    """The probe's fit: a nonlinear function of the features is predicted well on held-out rows,
    an unrelated quantity no better than its mean."""
    import numpy as np

    probe = _load_script("probe_localisation")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 12))
    signal = np.stack([3 * np.sin(x[:, 0]), x[:, 1] * x[:, 2]], 1)
    noise = rng.normal(size=(1500, 2))
    test = np.arange(1500) % 5 == 0
    err = np.sqrt(((probe.fit_probe(x, signal, test) - signal[test]) ** 2).mean(0))
    assert (err < 0.35 * signal[test].std(0)).all()
    err = np.sqrt(((probe.fit_probe(x, noise, test) - noise[test]) ** 2).mean(0))
    assert (err > 0.9 * noise[test].std(0)).all()


def test_localisation_probe_reports_each_env_of_collected_demos(tmp_path, tiny_vla_dir, capsys):
    """End to end on a random model and five PickCube demonstrations: one row per env id, every
    fifth episode held out, the standard deviations those of the held-out frames' ground truth;
    a file without the privileged task points is refused, a missing model named (exit 2)."""
    import numpy as np

    from sim_envs.collect import CollectConfig, collect
    from sim_envs.demo_file import DemoWriter, Episode, load_dataset

    data = tmp_path / "pick"
    collect(CollectConfig(env=("ee_vla/PickCube-v0",), episodes=5, out=data, seed=3, image_size=32))
    probe = _load_script("probe_localisation")
    out = tmp_path / "probe.json"
    assert probe.main(["--policy", str(tiny_vla_dir), "--data", str(data), "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    ((env_id, r),) = result["envs"].items()
    first = next(iter(load_dataset(data)))
    truth = probe.probe_targets(first)
    assert env_id == "ee_vla/PickCube-v0" and r["episodes"] == 5 and r["held_out_frames"] == len(first)
    assert list(r["std_cm"].values()) == pytest.approx(truth.std(0), abs=0.01)
    assert all(np.isfinite(v) for v in r["rmse_cm"].values())
    assert "ee_vla/PickCube-v0" in capsys.readouterr().out  # the printed table has its row

    bare = tmp_path / "bare"
    with DemoWriter(bare, ["ee_vla/PickCube-v0"], {}, {}) as w:
        for seed in range(5):
            w.add(
                Episode(
                    actions=np.zeros((4, 7), np.float32),
                    instruction="pick up the red cube",
                    pixels=np.zeros((4, 32, 32, 3), np.uint8),
                    agent_pos=np.zeros((4, 7), np.float32),
                    env_id="ee_vla/PickCube-v0",
                    seed=seed,
                    success=True,
                )
            )
    with pytest.raises(ValueError, match="task_points"):
        probe.probe(tiny_vla_dir, [bare], progress=False)
    assert probe.main(["--policy", str(tmp_path / "missing"), "--data", str(data), "--no-progress"]) == 2
    assert "missing is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mode, before_push, pushing, after_push",
    [
        ("policy", False, False, False),
        ("expert", True, True, True),
        ("expert-approach", True, False, False),
        ("expert-recovery", False, False, True),
        ("expert-outside-push", True, False, True),
        ("expert-push", False, True, False),
        ("expert-yaw", False, False, False),  # the policy acts, with the expert's rotation
    ],
)
def test_push_diagnosis_hands_each_mode_its_part_of_the_task(mode, before_push, pushing, after_push):
    """Who acts (True: the expert) before the first push, while pushing, and outside a push after it."""
    diag = _load_script("push_diagnosis")
    assert diag.expert_acts(mode, "over", pushed=False) is before_push
    assert diag.expert_acts(mode, "push", pushed=True) is pushing
    assert diag.expert_acts(mode, "back_off", pushed=True) is after_push


def test_push_diagnosis_runs_every_mode_on_the_same_seeds(tmp_path, tiny_vla_dir, capsys):
    """End to end on a random model: the expert alone succeeds, the random policy does not; every
    policy episode is counted in one landing group; an unknown mode and a missing model exit 2."""
    diag = _load_script("push_diagnosis")
    out = tmp_path / "push.json"
    argv = ["--policy", str(tiny_vla_dir), "--episodes", "2", "--modes", "policy", "expert", "--json", str(out)]
    assert diag.main([*argv, "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["modes"]["expert"]["successes"] == 2 and r["modes"]["policy"]["successes"] == 0
    assert [e["seed"] for e in r["modes"]["policy"]["per_episode"]] == [100000, 100001]
    assert sum(row["episodes"] for row in r["landing"]) == 2 == sum(row["episodes"] for row in r["landing_yaw"])
    printed = capsys.readouterr().out
    assert "expert-approach" not in printed and "where the policy's pusher came down" in printed
    assert "the gripper's yaw against the push direction" in printed
    came_down = [e for e in r["modes"]["policy"]["per_episode"] if e["landing_camera_cm"]]
    assert sum(row["episodes"] for row in r["landing_camera"]) == len(came_down)
    assert "along the scene camera's view and across" in printed
    assert "the policy's moves while pushing against the expert's" in printed and len(r["push_heading"]) == 2
    assert "the share of its steps in each of the expert's phases" in printed
    acted = sum(sum(e["policy_phases"].values()) for e in r["modes"]["policy"]["per_episode"])
    assert sum(row["steps"] for row in r["policy_phases"]) == acted > 0

    assert diag.main(["--policy", str(tiny_vla_dir), "--modes", "policy", "expert-pull", "--no-progress"]) == 2
    assert "unknown mode 'expert-pull'" in capsys.readouterr().err
    assert diag.main(["--policy", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err


def test_push_diagnosis_groups_episodes_by_where_the_pusher_came_down():
    diag = _load_script("push_diagnosis")
    eps = [
        {"landing_cm": [2.9, 0.0], "success": False},
        {"landing_cm": [3.0, -2.9], "success": True},  # a bin includes its lower edge
        {"landing_cm": [7.0, 0.0], "success": True},
        {"landing_cm": [5.0, 3.0], "success": False},  # 3 cm across: off the line, whatever behind
        {"landing_cm": None, "success": False},
    ]
    rows = {r["group"]: (r["episodes"], r["successes"]) for r in diag.landing_table(eps)}
    assert list(rows) == diag.landing_groups()
    assert rows["behind < 3 cm"] == (1, 0) and rows["behind 3-4 cm"] == (1, 1) and rows["behind >= 6 cm"] == (1, 1)
    assert rows[diag.OFF_LINE] == (1, 0) and rows["never came down"] == (1, 0) and rows["behind 4-5 cm"] == (0, 0)
    for ep, deg in zip(eps, [9.9, 10.0, 25.0, 19.9, None], strict=True):
        ep["landing_yaw_deg"] = deg
    yaw = {r["group"]: (r["episodes"], r["successes"]) for r in diag.yaw_table(eps)}
    assert list(yaw) == diag.yaw_groups()
    assert yaw["yaw < 10 deg off"] == (1, 0) and yaw["yaw 10-20 deg off"] == (2, 1)
    assert yaw["yaw >= 20 deg off"] == (1, 1) and yaw["never came down"] == (1, 0)


def test_push_diagnosis_measures_landings_along_the_scene_camera():
    """`camera_axes`: unit, orthogonal, the first along the scene camera's view on the table (the
    front camera looks along +y); `landing_offset` is zero at the expert's descend point and splits
    an offset into depth and lateral; `camera_error_table` averages |offset| over succeeded and
    failed episodes that came down."""
    import gymnasium as gym

    import sim_envs  # noqa: F401

    diag = _load_script("push_diagnosis")
    env = gym.make("ee_vla/Push-v0", image_size=32)
    try:
        env.reset(seed=0)
        axes = diag.camera_axes(env)
    finally:
        env.close()
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(axes[0], [0.0, 1.0], atol=1e-6)
    state = {"target_pos": np.array([0.1, 0.0, 0.02]), "goal_xy": np.array([0.1, 0.2]), "tcp_pos": np.zeros(3)}
    state["tcp_pos"] = np.array([0.1, -0.05, 0.05])  # 5 cm behind the object on the push line
    np.testing.assert_allclose(diag.landing_offset(state, axes, 0.05), [0.0, 0.0], atol=1e-9)
    state["tcp_pos"] = np.array([0.1, -0.05, 0.05]) + 0.02 * np.append(axes[0], 0) + 0.01 * np.append(axes[1], 0)
    np.testing.assert_allclose(diag.landing_offset(state, axes, 0.05), [0.02, 0.01], atol=1e-9)
    rows = diag.camera_error_table(
        [
            {"success": True, "landing_camera_cm": [1.0, -2.0]},
            {"success": True, "landing_camera_cm": [-3.0, 0.0]},
            {"success": False, "landing_camera_cm": [4.0, 1.0]},
            {"success": False, "landing_camera_cm": None},
        ]
    )
    assert rows == [
        {"group": "succeeded", "episodes": 2, "depth_cm": 2.0, "lateral_cm": 1.0},
        {"group": "failed", "episodes": 1, "depth_cm": 4.0, "lateral_cm": 1.0},
    ]


class _StillPolicy:
    """Stands in for a policy: never moves (all-zero actions)."""

    def reset(self):
        pass

    def select_action(self, obs):
        return np.zeros(7, dtype=np.float32)


class _TurnedExpert:
    """Stands in for a policy: the expert's action with its move on the table turned by `deg`."""

    def __init__(self, expert, deg: float):
        self.expert, self.turn = expert, np.radians(deg)

    def reset(self):
        pass

    def select_action(self, obs):
        a = np.array(self.expert.act(), dtype=np.float32)
        c, s = np.cos(self.turn), np.sin(self.turn)
        a[:2] = [c * a[0] - s * a[1], s * a[0] + c * a[1]]
        return a


def test_push_diagnosis_heading_error_and_table():
    diag = _load_script("push_diagnosis")
    assert diag.heading_error(np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.3, -1.0])) == pytest.approx(90.0)
    assert diag.heading_error(np.array([0.2, 0.2]), np.array([-0.5, -0.5])) == pytest.approx(180.0)
    assert diag.heading_error(np.array([0.01, 0.02]), np.array([1.0, 0.0])) is None  # a pause has no heading
    rows = diag.heading_table(
        [
            {"success": True, "push_steps": [[2.0, 1.0, 3.0, -0.5], [4.0, 2.0, 6.0, 0.2], [30.0, 9.0, 5.0, 1.0]]},
            {"success": True, "push_steps": []},  # never pushed: not counted
            {"success": False, "push_steps": [[20.0, 10.0, 30.0, -2.0], [10.0, 6.0, 16.0, 1.0]]},
        ]
    )
    got = [(r["group"], r["episodes"], r["push_steps"], r["median_deg"]) for r in rows]
    assert got == [("succeeded", 1, 3, 4.0), ("failed", 1, 2, 15.0)]
    assert rows[0]["share_off"] == pytest.approx(1 / 3) and rows[1]["share_off"] == pytest.approx(0.5)
    assert (rows[0]["policy_to_line_deg"], rows[0]["expert_to_line_deg"], rows[0]["across_cm"]) == (2.0, 5.0, 0.5)
    assert (rows[1]["policy_to_line_deg"], rows[1]["expert_to_line_deg"], rows[1]["across_cm"]) == (8.0, 23.0, 1.5)


def test_push_diagnosis_phase_table_shares_the_policys_steps():
    from sim_envs.experts import PushExpert

    diag = _load_script("push_diagnosis")
    rows = diag.phase_table(
        [
            {"success": True, "policy_phases": {"over": 6, "push": 2}},
            {"success": False, "policy_phases": {"up": 3, "step_out": 1}},
            {"success": False, "policy_phases": {}},  # the expert acted throughout
        ]
    )
    assert [(r["group"], r["episodes"], r["steps"]) for r in rows] == [("succeeded", 1, 8), ("failed", 2, 4)]
    assert rows[0]["share"]["over"] == 0.75 and rows[0]["share"]["up"] == 0.0
    assert rows[1]["share"]["up"] == 0.75 and rows[1]["share"]["step_out"] == 0.25
    assert list(rows[1]["share"]) == list(PushExpert.PHASES)


def test_push_diagnosis_traces_each_step_and_measures_push_headings():
    """A policy that moves as the expert does, turned by 20 degrees: every push step it takes is
    20 degrees off; the trace has one row per step with the executed and the expert's action."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from sim_envs.experts import make_expert

    diag = _load_script("push_diagnosis")
    env = gym.make(diag.ENV_ID, image_size=32, max_episode_steps=40)
    try:
        expert = make_expert(env)
        rows: list[dict] = []
        ep = diag.run_episode(env, _TurnedExpert(expert, 20.0), expert, "policy", seed=100000, trace=rows)
    finally:
        env.close()
    steps = np.array(ep["push_steps"])
    assert len(steps) and np.allclose(steps[:, 0], 20.0, atol=1e-3)
    # the turned moves are 20 degrees from the expert's, so at most 20 further from the line
    assert np.all(steps[:, 1] <= steps[:, 2] + 20.0 + 1e-3) and np.all(np.abs(steps[:, 3]) < 5.0)
    assert len(rows) == 40 or ep["success"]
    assert sum(ep["policy_phases"].values()) == len(rows) and ep["policy_phases"]["push"] == sum(
        r["phase"] == "push" for r in rows
    )
    assert [r["step"] for r in rows] == list(range(len(rows))) and {r["actor"] for r in rows} == {"policy"}
    assert set(rows[0]) == set(diag.TRACE_FIELDS)
    assert "push" in {r["phase"] for r in rows}
    r = rows[0]
    assert diag.heading_error(np.array(r["action"]), np.array(r["expert_action"])) == pytest.approx(20.0, abs=1e-3)
    text = diag.trace_table(rows)
    assert len(text.splitlines()) == len(rows) + 2 and " push " in text


def test_push_diagnosis_trace_from_the_command_line(tmp_path, tiny_vla_dir, capsys):
    diag = _load_script("push_diagnosis")
    out = tmp_path / "trace.json"
    assert diag.main(["--policy", str(tiny_vla_dir), "--trace", "100003", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert "mode policy, seed 100003" in printed and f"after {len(saved['trace'])} steps" in printed
    assert saved["episode"]["seed"] == 100003 and saved["trace"][0]["actor"] == "policy"
    assert diag.main(["--policy", str(tiny_vla_dir), "--trace", "1", "--modes", "expert-pull"]) == 2
    assert "unknown mode 'expert-pull'" in capsys.readouterr().err


def test_push_diagnosis_expert_yaw_turns_only_the_gripper():
    """In `expert-yaw` the expert's rotation replaces the policy's and nothing else: a policy that
    never moves ends its episode turned to the push direction, where it started, and not in
    `policy` mode."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from sim_envs.experts import make_expert

    diag = _load_script("push_diagnosis")
    env = gym.make(diag.ENV_ID, image_size=32, max_episode_steps=12)
    try:
        expert, base = make_expert(env), env.unwrapped
        ends = {}
        for mode in ("policy", "expert-yaw"):
            ep = diag.run_episode(env, _StillPolicy(), expert, mode, seed=100002)
            state = base.privileged_state()
            ends[mode] = (diag.yaw_error(state), state["tcp_pos"].copy())
            assert not ep["success"] and ep["landing_cm"] is None
        env.reset(seed=100002)
        start = base.privileged_state()
        assert diag.yaw_error(start) > 0.2  # this seed's push direction is not the start yaw
        assert abs(ends["policy"][0] - diag.yaw_error(start)) < 0.02 and ends["expert-yaw"][0] < 0.05
        np.testing.assert_allclose(ends["expert-yaw"][1], start["tcp_pos"], atol=0.01)
    finally:
        env.close()
