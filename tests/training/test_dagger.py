"""`ee-vla dagger`: on-policy episodes labelled by the scripted expert, in the demonstrations' schema."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the ids)
from ee_vla.runtime import RuntimeConfig
from ee_vla.training.dagger import DaggerConfig, DaggerConfigError, collect_on_policy
from ee_vla.training.data import scan_dataset
from sim_envs.demo_file import load_dataset
from sim_envs.experts import ExpertLabels, make_expert

ENVS = ["ee_vla/Reach-v0", "ee_vla/Place-v0"]


def _config(policy, out, **kw) -> DaggerConfig:
    base = dict(
        policy=policy,
        out=out,
        env=ENVS,
        episodes=2,
        num_envs=2,
        vector="sync",
        image_size=32,
        runtime=RuntimeConfig(device="cpu", decoder="jacobi"),
        progress=False,
        seed=5,
    )
    return DaggerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dagger_file(tiny_vla_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dagger")
    return collect_on_policy(_config(tiny_vla_dir, out))


def test_labels_are_the_experts_on_the_states_the_policy_visited(dagger_file):
    """Replaying the executed actions from each episode's seed gives the stored images, and at
    every one of them a fresh expert (advanced along the same states) says the stored label."""
    ds = load_dataset(dagger_file)
    assert len(ds) == 4 and ds.env_ids == ENVS
    assert [e.env_id for e in ds] == [ENVS[0]] * 2 + [ENVS[1]] * 2
    for ep in ds:
        assert ep.executed_actions is not None and ep.executed_actions.shape == ep.actions.shape
        assert ep.wrist_pixels is None and ep.cameras == ("pixels",)  # the policy reads pixels only
        assert ep.task_points is not None and len(ep.task_points) == len(ep)
        assert ep.expert_chunks is not None and ep.expert_chunks.shape == (len(ep), 3, 7)  # tiny VLA: chunk 3
        np.testing.assert_array_equal(ep.expert_chunks[:, 0], ep.actions)
        env = gym.make(ep.env_id, image_size=32)
        expert = make_expert(env)
        planner = ExpertLabels(gym.make(ep.env_id, image_size=32), horizon=3)
        try:
            obs, _ = env.reset(seed=ep.seed)
            expert.reset()
            _, plan_info = planner.reset(seed=ep.seed)
            for t in range(len(ep)):
                np.testing.assert_array_equal(obs["pixels"], ep.pixels[t])
                np.testing.assert_allclose(expert.act(), ep.actions[t], atol=1e-6)
                np.testing.assert_allclose(plan_info["expert_plan"], ep.expert_chunks[t], atol=1e-6)
                np.testing.assert_allclose(env.unwrapped.task_points(), ep.task_points[t], atol=1e-6)
                obs, _, terminated, truncated, info = env.step(ep.executed_actions[t])
                *_, plan_info = planner.step(ep.executed_actions[t])
            assert terminated or truncated  # the episode ended where the file ends
            assert bool(info["is_success"]) == ep.success
        finally:
            env.close()
            planner.close()
    # a random policy acts, not the expert: the labels are not what was executed
    ep = ds[3]
    assert np.abs(ep.actions - ep.executed_actions).mean() > 0.05


def test_schema_and_failed_episodes_are_kept_for_training(dagger_file):
    with h5py.File(dagger_file) as f:
        data = f["data"]
        assert data.attrs["source"] == "dagger" and int(data.attrs["num_demos"]) == 4
        for name in data:
            assert data[name].attrs["labels"] == "expert"
            assert data[name].attrs["decoder"] == "jacobi"
    ds = load_dataset(dagger_file)
    failed = sum(not e.success for e in ds)
    assert failed >= 1  # a random tiny policy does not place objects
    eps = scan_dataset([dagger_file], success_only=True)
    assert len(eps) == 4  # expert labels: kept whatever the outcome
    info = (dagger_file.parent / "dagger_info.json").read_text()
    assert '"pc_success"' in info and '"ee_vla/Place-v0"' in info


def test_time_budget_stops_new_episodes(tiny_vla_dir, tmp_path):
    path = collect_on_policy(_config(tiny_vla_dir, tmp_path, env=[ENVS[0]], episodes=6, max_minutes=1e-6))
    assert len(load_dataset(path)) == 2  # the first num_envs episodes run; no new one starts


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"episodes": 0}, "episodes"),
        ({"num_envs": 0}, "num_envs"),
        ({"max_minutes": 0.0}, "max_minutes"),
        ({"compression_level": 11}, "compression_level"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_config_errors_name_the_field(tiny_vla_dir, tmp_path, kw, field):
    with pytest.raises(DaggerConfigError, match=field):
        _config(tiny_vla_dir, tmp_path, **kw)


def test_on_policy_data_takes_the_training_paraphrases_never_the_held_out_ones(tiny_vla_dir, tmp_path):
    """`--instructions augmented` reaches the envs the policy acts in; held_out is refused (its
    phrasings never go into training data), as by `ee-vla collect`."""
    assert "instructions" not in _config(tiny_vla_dir, tmp_path).eval_config().env_kwargs
    cfg = _config(tiny_vla_dir, tmp_path, instructions="augmented")
    assert cfg.eval_config().env_kwargs == {"image_size": 32, "instructions": "augmented"}
    with pytest.raises(DaggerConfigError, match="held-out paraphrases never go into training data"):
        _config(tiny_vla_dir, tmp_path, instructions="held_out")
    with pytest.raises(DaggerConfigError, match="only supported by the ee_vla suite"):
        _config(tiny_vla_dir, tmp_path, instructions="augmented", env=["ee_vla/MetaWorld-door-open-v0"])


def test_env_kwargs_reach_the_envs_and_flags_keep_their_own_names(tiny_vla_dir, tmp_path):
    """`--env-kwargs` go to every env the policy acts in, beside the image size; an argument that has
    a flag of its own is refused there, naming the flag."""
    cfg = _config(tiny_vla_dir, tmp_path, env_kwargs={"observe_goal": "true"})
    assert cfg.eval_config().env_kwargs == {"observe_goal": "true", "image_size": 32}
    with pytest.raises(DaggerConfigError, match=r"'wrist_camera' is a field of its own \(--wrist-camera\)"):
        _config(tiny_vla_dir, tmp_path, env_kwargs={"wrist_camera": True})


def test_config_refuses_a_missing_policy_and_an_existing_file(tiny_vla_dir, dagger_file, tmp_path):
    with pytest.raises(DaggerConfigError, match="not a model directory"):
        _config(tmp_path / "nothing", tmp_path)
    with pytest.raises(DaggerConfigError, match="exists"):
        _config(tiny_vla_dir, dagger_file.parent)
    _config(tiny_vla_dir, dagger_file.parent, overwrite=True)


def test_unknown_env_id_fails_before_any_rollout(tiny_vla_dir, tmp_path):
    from ee_vla.evaluation import EvalConfigError

    with pytest.raises(EvalConfigError, match="ee_vla/Nope-v0"):
        collect_on_policy(_config(tiny_vla_dir, tmp_path, env=["ee_vla/Nope-v0"]))
    assert not (tmp_path / "demos.hdf5").exists()


def test_dagger_report_replays_the_file_exactly(dagger_file, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "dagger_report.py"
    spec = importlib.util.spec_from_file_location("dagger_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.main([str(dagger_file), "--replay"]) == 0
    out = capsys.readouterr().out
    assert "replay: 0 of" in out and "ee_vla/Place-v0" in out
    rows = report.disagreement(load_dataset(dagger_file))
    assert sum(r["episodes"] for r in rows) == 4 and all(0 <= r["gripper_disagree"] <= 1 for r in rows)
    with pytest.raises(SystemExit):  # a path without a demonstration file: a usage error naming it
        report.main([str(Path(dagger_file).parent / "nope")])
    assert "nope: no demonstration file at" in capsys.readouterr().err


def test_dagger_report_relabels_a_copy_with_todays_experts(dagger_file, tmp_path):
    """`--relabel OUT` replays each episode and writes the experts' labels and plans into a copy:
    a file labelled by other experts (here: one label and one plan changed) comes back as today's
    experts label it; an image that no longer replays is an error naming the episode."""
    import importlib.util
    import shutil
    from pathlib import Path

    import h5py

    path = Path(__file__).resolve().parents[2] / "scripts" / "dagger_report.py"
    spec = importlib.util.spec_from_file_location("dagger_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    old = tmp_path / "old"
    shutil.copytree(Path(dagger_file).parent, old)
    with h5py.File(old / "demos.hdf5", "r+") as h5:
        name = sorted(h5["data"])[0]
        h5["data"][name]["actions"][1, 0] += 0.5
        h5["data"][name]["expert_chunks"][2, 1, 0] += 0.5
    assert report.relabel(old, tmp_path / "new") == (1, sum(len(e) for e in load_dataset(dagger_file)))
    fresh, new = load_dataset(dagger_file), load_dataset(tmp_path / "new")
    for a, b in zip(fresh, new, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.expert_chunks, b.expert_chunks)
        np.testing.assert_array_equal(a.executed_actions, b.executed_actions)
    assert {p.name for p in (tmp_path / "new").iterdir()} == {p.name for p in old.iterdir()}
    with pytest.raises(SystemExit, match="exists"):
        report.relabel(old, tmp_path / "new")
    with h5py.File(old / "demos.hdf5", "r+") as h5:
        h5["data"][name]["obs/pixels"][3] ^= 1
    with pytest.raises(SystemExit, match=f"episode {name} .*another image at step 3"):
        report.relabel(old, tmp_path / "again")


def test_training_targets_are_the_experts_plans(dagger_file, tiny_vla_dir, tmp_path):
    """`ee-vla train` learns each visited state's chunk from the expert's plan, not from the labels
    of the next states; a plan shorter than the model's chunk is refused by name; without plans the
    chunks are consecutive labels."""
    from ee_vla.models.vla import VLA
    from ee_vla.training.data import DatasetError, DemoDataset, chunk_actions, chunk_targets, load_pixels

    episodes = scan_dataset([dagger_file])
    load_pixels(episodes)
    tok = VLA.from_pretrained(tiny_vla_dir).action_tokenizer
    ds = DemoDataset(episodes, tok, 3, use_proprio=False)
    for e, target in zip(episodes, ds.targets, strict=True):
        np.testing.assert_array_equal(target, tok.encode_chunk(e.expert_chunks))
    ep = max(episodes, key=len)
    assert not np.array_equal(chunk_targets(ep, 3), chunk_actions(ep.actions, 3))  # a random policy's states
    with pytest.raises(DatasetError, match="expert_chunks"):
        chunk_targets(ep, 4)
    path = collect_on_policy(_config(tiny_vla_dir, tmp_path, env=[ENVS[0]], chunk_labels=False))
    plain = scan_dataset([path])
    assert all(e.expert_chunks is None for e in plain)


def test_episodes_cut_at_max_episode_steps(tiny_vla_dir, tmp_path):
    path = collect_on_policy(_config(tiny_vla_dir, tmp_path, env=[ENVS[1]], max_episode_steps=7))
    assert [len(e) for e in load_dataset(path)] == [7, 7]  # a random policy does not place within 7 steps


def test_an_env_that_cannot_plan_is_refused_before_any_rollout(tiny_vla_dir, tmp_path):
    pytest.importorskip("metaworld")
    env = ["ee_vla/MetaWorld-reach-v0"]
    with pytest.raises(DaggerConfigError, match="no-chunk-labels"):
        collect_on_policy(_config(tiny_vla_dir, tmp_path, env=env))
    assert not (tmp_path / "demos.hdf5").exists()
    path = collect_on_policy(
        _config(tiny_vla_dir, tmp_path, env=env, chunk_labels=False, episodes=1, num_envs=1, max_episode_steps=5)
    )
    ep = load_dataset(path)[0]
    assert ep.expert_chunks is None and len(ep) == 5
