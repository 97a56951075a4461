"""Meta-World adapter: MT10 smoke test and expert success (skipped without metaworld)."""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest

import sim_envs
from sim_envs.experts import make_expert
from sim_envs.metaworld_adapter import MEASURES

pytest.importorskip("metaworld")


@pytest.mark.parametrize("task", sim_envs.MT10_TASKS)
def test_mt10_reset_step_render(task):
    env = gym.make(sim_envs.metaworld_env_id(task), render_mode="rgb_array", image_size=32)
    try:
        obs, info = env.reset(seed=0)
        assert obs["pixels"].shape == (32, 32, 3) and obs["pixels"].std() > 5
        assert obs["agent_pos"].shape == (4,)
        assert info["is_success"] is False and info["task_description"]
        assert not set(MEASURES) & set(info)  # Meta-World measures a step, not a reset
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward) and isinstance(info["is_success"], bool)
        assert all(isinstance(info[k], float) and np.isfinite(info[k]) for k in MEASURES)
        assert env.render().shape == (32, 32, 3)
    finally:
        env.close()


def test_check_env_and_seeding():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("ee_vla/MetaWorld-pick-place-v0", image_size=32)
    try:
        check_env(env.unwrapped)
        o1, _ = env.reset(seed=5)
        o2, _ = env.reset(seed=5)
        np.testing.assert_array_equal(o1["pixels"], o2["pixels"])
        configurations = set()
        for seed in range(6):
            env.reset(seed=seed)
            configurations.add(env.unwrapped.task_index)
        assert len(configurations) > 1  # the seed picks among Meta-World's 50 configurations
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "button-press-topdown-v3"])
def test_metaworld_expert_success(task):
    env = gym.make(sim_envs.metaworld_env_id(task), image_size=32)
    expert = make_expert(env)
    wins = 0
    try:
        for seed in range(3):
            env.reset(seed=seed)
            expert.reset()
            for _ in range(300):
                *_, terminated, truncated, info = env.step(expert.act())
                if terminated or truncated:
                    break
            wins += info["is_success"]
    finally:
        env.close()
    assert wins == 3


def test_generic_id_and_bad_task():
    env = gym.make("ee_vla/MetaWorld-v0", task_name="drawer-close-v3", image_size=32)
    try:
        assert env.unwrapped.task_description == "close the drawer"
    finally:
        env.close()
    with pytest.raises(ValueError, match="task_name"):
        gym.make("ee_vla/MetaWorld-v0", task_name="fly-v3")


def test_metaworld_bad_action():
    env = gym.make("ee_vla/MetaWorld-reach-v0", image_size=32)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="shape"):
            env.unwrapped.step(np.zeros(4))
    finally:
        env.close()


def _steps_until_done(env, limit: int = 1000) -> tuple[int, bool]:
    for t in range(1, limit + 1):
        *_, terminated, truncated, _ = env.step(np.zeros(7, dtype=np.float32))
        if terminated or truncated:
            return t, bool(truncated)
    return limit, False


def test_episode_limit_follows_max_episode_steps():
    """Regression: Meta-World's own 500-step limit cut every episode at 500 (and raised on the next
    step) whatever `gymnasium.make(..., max_episode_steps=N)` (`ee-vla eval --max-episode-steps`)
    asked for; now the TimeLimit decides, shorter and longer alike."""
    for limit in (None, 7, 510):
        env = gym.make("ee_vla/MetaWorld-reach-v0", image_size=16, max_episode_steps=limit)
        try:
            env.reset(seed=0)
            assert _steps_until_done(env) == (limit or 500, True)
            if limit is not None:  # the next episode starts afresh, below and beyond Meta-World's 500
                env.reset(seed=1)
                assert _steps_until_done(env) == (limit, True)
        finally:
            env.close()


def test_direct_construction_keeps_metaworld_horizon():
    from sim_envs.metaworld_adapter import MetaWorldEnv

    env = MetaWorldEnv("reach-v3", image_size=16, max_path_length=5)
    try:
        env.reset(seed=0)
        assert _steps_until_done(env) == (5, True)
        env.reset(seed=0)
        assert _steps_until_done(env) == (5, True)
    finally:
        env.close()
    assert inspect.signature(MetaWorldEnv).parameters["max_path_length"].default == 500
    with pytest.raises(ValueError, match="max_path_length"):
        MetaWorldEnv("reach-v3", image_size=16, max_path_length=0)


def test_task_points_track_the_object_and_goal():
    """task_points = Meta-World's first object and goal (its own ground truth), and they follow the
    object while the expert pushes it."""
    env = gym.make("ee_vla/MetaWorld-push-v0", image_size=32)
    expert = make_expert(env)
    try:
        env.reset(seed=2)
        expert.reset()
        mw = env.unwrapped._env
        first = env.unwrapped.task_points()
        assert first.shape == (6,) and first.dtype == np.float32
        np.testing.assert_allclose(first[:3], mw._get_pos_objects()[:3], atol=1e-6)
        np.testing.assert_allclose(first[3:], mw._target_pos, atol=1e-6)
        for _ in range(60):
            env.step(expert.act())
        later = env.unwrapped.task_points()
        np.testing.assert_allclose(later[:3], mw._get_pos_objects()[:3], atol=1e-6)
        assert np.linalg.norm(later[:3] - first[:3]) > 0.01  # the puck moved
        np.testing.assert_allclose(later[3:], first[3:])  # the goal did not
    finally:
        env.close()


def test_collect_records_metaworld_task_points(tmp_path):
    from sim_envs.collect import CollectConfig, collect
    from sim_envs.demo_file import load_dataset

    path = collect(CollectConfig(env=("ee_vla/MetaWorld-reach-v0",), episodes=1, out=tmp_path, image_size=32))
    (ep,) = list(load_dataset(path))
    assert ep.task_points is not None and ep.task_points.shape == (len(ep.actions), 6)
    assert np.isfinite(ep.task_points).all()


def test_wrist_camera_sees_from_the_hand_and_is_recorded(tmp_path):
    """`wrist_camera=True` adds `wrist_pixels` (Meta-World's `gripperPOV`, riding on the hand): in
    the observation space, different from the scene camera, changing as the hand moves while the
    scene camera's view of the table stays; `ee-vla collect --wrist-camera` records it, replayable
    from the seed; and the scene camera's images are the same with it or without it."""
    from sim_envs.collect import CollectConfig, collect
    from sim_envs.demo_file import load_dataset

    env = gym.make("ee_vla/MetaWorld-push-v0", image_size=32, wrist_camera=True)
    plain = gym.make("ee_vla/MetaWorld-push-v0", image_size=32)
    try:
        assert env.observation_space["wrist_pixels"].shape == (32, 32, 3)
        assert "wrist_pixels" not in plain.observation_space.spaces
        obs, _ = env.reset(seed=3)
        obs_plain, _ = plain.reset(seed=3)
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["pixels"], obs_plain["pixels"])
        assert not np.array_equal(obs["wrist_pixels"], obs["pixels"])
        first = obs["wrist_pixels"].copy()
        for _ in range(5):  # the hand goes down 5 cm
            obs, *_ = env.step(np.array([0, 0, -1, 0, 0, 0, -1], np.float32))
        assert np.mean(obs["wrist_pixels"] != first) > 0.2
    finally:
        env.close()
        plain.close()
    with pytest.raises(ValueError, match="wrist_camera must be a bool"):
        gym.make("ee_vla/MetaWorld-push-v0", wrist_camera="yes")

    cfg = CollectConfig(env=("ee_vla/MetaWorld-reach-v0",), episodes=1, out=tmp_path, image_size=32, wrist_camera=True)
    (ep,) = list(load_dataset(collect(cfg)))
    assert ep.cameras == ("pixels", "wrist_pixels") and ep.wrist_pixels.shape == ep.pixels.shape
    env = gym.make(ep.env_id, image_size=32, wrist_camera=True)
    try:
        obs, _ = env.reset(seed=ep.seed)
        for t, a in enumerate(ep.actions[:10]):
            np.testing.assert_array_equal(obs["wrist_pixels"], ep.wrist_pixels[t])
            obs, *_ = env.step(a)
    finally:
        env.close()


def test_observe_goal_appends_the_goal_to_agent_pos_and_collect_records_it(tmp_path):
    """`observe_goal=True`: agent_pos is the hand and the jaw, then Meta-World's goal (the goal of
    its state observation, which the task's success is measured against), inside the observation
    space, fixed while the hand moves; the first four values are those of the plain env. `ee-vla
    collect --env-kwargs observe_goal true` records it (the word read as a bool), and a key that has
    its own flag, or that an env does not take, is refused by name."""
    from sim_envs.collect import CollectConfig, collect
    from sim_envs.demo_file import load_dataset

    env = gym.make("ee_vla/MetaWorld-reach-v0", image_size=32, observe_goal=True)
    plain = gym.make("ee_vla/MetaWorld-reach-v0", image_size=32)
    try:
        assert env.observation_space["agent_pos"].shape == (7,)
        obs, _ = env.reset(seed=4)
        obs_plain, _ = plain.reset(seed=4)
        goal = obs["agent_pos"][4:]
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["agent_pos"][:4], obs_plain["agent_pos"])
        np.testing.assert_allclose(goal, env.unwrapped._env._target_pos, atol=1e-6)
        np.testing.assert_allclose(goal, env.unwrapped.task_points()[3:])
        for _ in range(3):
            obs, *_ = env.step(np.array([1, 0, 0, 0, 0, 0, -1], np.float32))
        assert obs["agent_pos"][0] > obs_plain["agent_pos"][0] + 0.005  # the hand moved, the goal did not
        np.testing.assert_array_equal(obs["agent_pos"][4:], goal)
    finally:
        env.close()
        plain.close()
    with pytest.raises(ValueError, match="observe_goal must be a bool"):
        gym.make("ee_vla/MetaWorld-reach-v0", observe_goal="yes")

    cfg = CollectConfig(
        env=("ee_vla/MetaWorld-reach-v0",), episodes=1, out=tmp_path, image_size=32, env_kwargs={"observe_goal": "true"}
    )
    assert cfg.make_kwargs() == {"observe_goal": True, "image_size": 32}
    (ep,) = list(load_dataset(collect(cfg)))
    assert ep.agent_pos.shape == (len(ep.actions), 7)
    np.testing.assert_allclose(ep.agent_pos[:, 4:], ep.task_points[:, 3:], atol=1e-6)
    with pytest.raises(ValueError, match="'image_size' is a field of its own"):
        CollectConfig(env=("ee_vla/MetaWorld-reach-v0",), env_kwargs={"image_size": 64})
    with pytest.raises(ValueError, match="ee_vla/Reach-v0: observe_goal: not an argument of this env"):
        CollectConfig(env=("ee_vla/MetaWorld-reach-v0", "ee_vla/Reach-v0"), env_kwargs={"observe_goal": True})
    with pytest.raises(ValueError, match="observe_goal: expected true or false"):
        CollectConfig(env=("ee_vla/MetaWorld-reach-v0",), env_kwargs={"observe_goal": "maybe"})


def test_eval_names_the_goal_argument_a_goal_observing_policy_needs(tmp_path):
    """A policy trained with the goal in agent_pos (7 dims) on a Meta-World env made without it:
    the evaluation refuses before any episode and says which argument is missing; with it, the
    env fits."""
    from ee_vla.action_tokenizer import ActionStats
    from ee_vla.evaluation import EvalConfig, EvalConfigError
    from ee_vla.evaluation.rollout import check_env_compatible
    from ee_vla.models.vla import VLA
    from ee_vla.policy import VLAPolicy

    stats = ActionStats(q01=[-1.0] * 7, q99=[1.0] * 7, mask=[True] * 7)
    VLA.create("tiny", proprio_stats=stats).save_pretrained(tmp_path / "p")
    policy = VLAPolicy.from_pretrained(tmp_path / "p", decoder="ar")
    env_id = "ee_vla/MetaWorld-reach-v0"

    def cfg(**env_kwargs) -> EvalConfig:
        return EvalConfig(policy=tmp_path / "p", env=[env_id], env_kwargs=env_kwargs, output_dir=tmp_path / "e")

    with pytest.raises(EvalConfigError, match=r"agent_pos' of 7 dims.*`--env-kwargs observe_goal true`"):
        check_env_compatible(env_id, policy, cfg())
    check_env_compatible(env_id, policy, cfg(observe_goal="true"))
