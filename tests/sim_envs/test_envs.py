"""Gymnasium contract of the ee_vla suite: registration, check_env, spaces, seeding, vector envs."""

from __future__ import annotations

import importlib.util
from functools import cache, partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim_envs
from sim_envs.experts import make_expert
from sim_envs.tabletop import CONTROL_HZ

SUITE = list(sim_envs.SUITE_ENV_IDS)
SMALL = 48


@pytest.fixture(params=SUITE)
def env(request):
    e = gym.make(request.param, render_mode="rgb_array", image_size=SMALL)
    yield e
    e.close()


def test_registered_with_time_limits():
    assert "ee_vla/PickCube-v0" in gym.registry
    for env_id in SUITE:
        spec = gym.spec(env_id)
        assert spec.max_episode_steps is not None and spec.max_episode_steps >= 50


def test_check_env(env):
    check_env(env.unwrapped, skip_render_check=False)


def test_spaces_and_metadata(env):
    obs, info = env.reset(seed=0)
    assert env.metadata["render_fps"] == CONTROL_HZ
    assert obs["pixels"].shape == (SMALL, SMALL, 3) and obs["pixels"].dtype == np.uint8
    assert obs["agent_pos"].dtype == np.float32 and obs["agent_pos"].shape == (7,)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (7,)
    assert info["is_success"] is False
    assert info["task_description"] == env.unwrapped.task_description != ""
    frame = env.render()
    assert frame.shape == (SMALL, SMALL, 3) and frame.std() > 5  # a real picture, not a blank buffer
    _, _, _, _, info = env.step(env.action_space.sample())
    assert isinstance(info["is_success"], bool)


def test_wrist_camera_optional():
    env = gym.make("ee_vla/PickCube-v0", image_size=SMALL, wrist_camera=True)
    try:
        obs, _ = env.reset(seed=1)
        assert obs["wrist_pixels"].shape == (SMALL, SMALL, 3)
        assert not np.array_equal(obs["wrist_pixels"], obs["pixels"])
    finally:
        env.close()


def test_seeding_reproducible(env):
    obs1, info1 = env.reset(seed=123)
    acts = [env.action_space.sample() for _ in range(5)]
    traj1 = [env.step(a)[0] for a in acts]
    obs2, info2 = env.reset(seed=123)
    traj2 = [env.step(a)[0] for a in acts]
    assert info1["task_description"] == info2["task_description"]
    np.testing.assert_array_equal(obs1["pixels"], obs2["pixels"])
    for o1, o2 in zip(traj1, traj2, strict=True):
        np.testing.assert_array_equal(o1["pixels"], o2["pixels"])
        np.testing.assert_array_equal(o1["agent_pos"], o2["agent_pos"])


def test_instruction_and_layout_vary_with_seed(env):
    descs, images = set(), []
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        descs.add(info["task_description"])
        images.append(obs["pixels"])
    assert len(descs) >= 4
    assert not all(np.array_equal(images[0], im) for im in images[1:])


@pytest.mark.parametrize("env_id", SUITE)
def test_instruction_names_the_target(env_id):
    """The instruction names exactly the target object: colour and shape, and no other object has
    both (a distractor may share one of them)."""
    env = gym.make(env_id, image_size=SMALL)
    base = env.unwrapped
    shares = 0
    try:
        for seed in range(20):
            _, info = env.reset(seed=seed)
            target = base.objects[base.target_index]
            assert info["target_object"] == target.name
            assert f" {target.name}" in info["task_description"]
            for i, obj in enumerate(base.objects):
                if i != base.target_index:
                    assert obj.name != target.name
                    assert f" {obj.name}" not in info["task_description"]
                    shares += obj.color == target.color or obj.shape == target.shape
            # the privileged target is the object the instruction names
            np.testing.assert_allclose(base.privileged_state()["target_pos"], base.object_pos(base.target_index))
    finally:
        env.close()
    assert shares > 0  # distractors do share colour or shape, so both words matter


def test_place_names_the_plate():
    env = gym.make("ee_vla/Place-v0", image_size=SMALL)
    try:
        for seed in range(5):
            _, info = env.reset(seed=seed)
            assert info["target_plate"] in info["task_description"]
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Place-v0"])
def test_distractor_target_names_another_object_of_the_same_scene(env_id):
    """target="distractor": same scene, gripper start and phrasing as the sampled target for a
    seed, but the instruction, `info["target_object"]` and the success test follow another object."""
    sampled = gym.make(env_id, image_size=SMALL)
    other = gym.make(env_id, image_size=SMALL, target="distractor")
    a, b = sampled.unwrapped, other.unwrapped
    try:
        for seed in range(8):
            obs_a, info_a = sampled.reset(seed=seed)
            obs_b, info_b = other.reset(seed=seed)
            assert [o.name for o in a.objects] == [o.name for o in b.objects]
            np.testing.assert_array_equal(obs_a["agent_pos"], obs_b["agent_pos"])
            np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
            assert b.target_index != a.target_index
            assert info_b["target_object"] == b.objects[b.target_index].name != info_a["target_object"]
            assert info_b["task_description"] == info_a["task_description"].replace(
                info_a["target_object"], info_b["target_object"]
            )
            np.testing.assert_allclose(b.privileged_state()["target_pos"], b.object_pos(b.target_index))
        # the success test follows the named object: the scripted expert, which goes for the
        # privileged target, succeeds, and the sampled object stays where it was
        expert = make_expert(other)
        sampled.reset(seed=3)
        other.reset(seed=3)
        expert.reset()
        sampled_start = b.object_pos(a.target_index).copy() if env_id != "ee_vla/Reach-v0" else None
        for _ in range(200):
            _, _, terminated, truncated, info = other.step(expert.act())
            if terminated or truncated:
                break
        assert info["is_success"], info["outcome"]
        if sampled_start is not None:
            np.testing.assert_allclose(b.object_pos(a.target_index)[:2], sampled_start[:2], atol=0.01)
    finally:
        sampled.close()
        other.close()


def test_distractor_target_is_refused_where_the_layout_belongs_to_the_sampled_target():
    with pytest.raises(ValueError, match="not available for PushEnv"):
        gym.make("ee_vla/Push-v0", target="distractor")
    with pytest.raises(ValueError, match="target must be 'sampled' or 'distractor', got 'nearest'"):
        gym.make("ee_vla/Reach-v0", target="nearest")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs(mode):
    """Async workers are spawned, not forked: Mesa's GL state (EGL or OSMesa) does not survive a
    fork once this process has rendered, and a forked worker would hang (docs/sim_envs.md)."""
    fns = [partial(sim_envs.make, "ee_vla/PickCube-v0", image_size=32) for _ in range(2)]
    if mode == "sync":
        envs = gym.vector.SyncVectorEnv(fns)
    else:
        envs = gym.vector.AsyncVectorEnv(fns, context="spawn")
    try:
        obs, info = envs.reset(seed=[3, 4])
        assert obs["pixels"].shape == (2, 32, 32, 3)
        assert obs["agent_pos"].shape == (2, 7)
        descs = envs.get_attr("task_description")
        assert len(descs) == 2 and all(isinstance(d, str) and d for d in descs)
        for _ in range(3):
            obs, rew, term, trunc, info = envs.step(envs.action_space.sample())
        assert rew.shape == (2,) and "is_success" in info
    finally:
        envs.close()


def test_make_helper_rejects_unknown_id():
    with pytest.raises(ValueError, match="unknown env id"):
        sim_envs.make("ee_vla/NoSuchTask-v0")


def test_suite_does_not_import_metaworld():
    """sim_envs (suite envs, experts, collection) works without metaworld installed."""
    import subprocess
    import sys

    code = (
        "import sys, gymnasium as gym, sim_envs, sim_envs.collect\n"
        "from sim_envs.experts import make_expert\n"
        "env = gym.make('ee_vla/Reach-v0', image_size=16); env.reset(seed=0); env.step(make_expert(env).act())\n"
        "env.close()\n"
        "assert 'metaworld' not in sys.modules, 'metaworld was imported'\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("env_id", sim_envs.SUITE_ENV_IDS)
def test_target_falling_off_the_table_ends_the_episode_failed(env_id):
    env = gym.make(env_id, image_size=32)
    try:
        _, info = env.reset(seed=3)
        assert info["target_lost"] is False
        base = env.unwrapped
        adr = base._obj_qpos[base.target_index]
        base.data.qpos[adr : adr + 3] = [0.6, 0.0, 0.05]  # past the table's edge (x = 0.45)
        hold = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
        steps = 0
        for _ in range(20):
            _, _, terminated, truncated, info = env.step(hold)
            steps += 1
            if terminated:
                break
        assert terminated and not truncated and steps > 1  # it fell first
        assert info["target_lost"] is True and info["is_success"] is False
        assert info["outcome"] == "target fell off the table"
    finally:
        env.close()


SHORTFALLS = {
    "ee_vla/Reach-v0": "target not reached",
    "ee_vla/PickCube-v0": "target not moved",
    "ee_vla/Push-v0": "target not moved",
    "ee_vla/Place-v0": "target not moved",
}
HOLD = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


def _slide(base, i: int, dxy) -> None:
    """Move object `i` by `dxy` in the table plane (its joint's position; it settles in the next step)."""
    adr = base._obj_qpos[i]
    base.data.qpos[adr : adr + 2] += dxy


@pytest.mark.parametrize("env_id", sim_envs.SUITE_ENV_IDS)
def test_outcome_names_what_the_state_lacks(env_id):
    """`info["outcome"]` and its measurements: on reset the task's first shortfall with nothing
    moved; the expert's finished episode ends in "success" with `goal_distance` under the task's
    success distance; a distractor slid 5 cm is "moved another object, not the target", and once the
    target has moved as well, "moved another object too"."""
    from sim_envs.experts import make_expert

    env = gym.make(env_id, image_size=32)
    try:
        _, info = env.reset(seed=5)
        base = env.unwrapped
        assert info["outcome"] == SHORTFALLS[env_id]
        assert info["target_moved"] == 0.0 and info["other_moved"] == 0.0
        if env_id == "ee_vla/Reach-v0":
            goal = np.linalg.norm(base.tcp_pos - base.target_pos)
        elif env_id == "ee_vla/PickCube-v0":
            goal = 0.06  # nothing lifted yet
        else:  # the circle or the named plate
            goal = np.linalg.norm(base.target_pos[:2] - base.goal_pos[:2])
        assert info["goal_distance"] == pytest.approx(goal, abs=1e-6)

        expert = make_expert(env)
        for _ in range(gym.spec(env_id).max_episode_steps):
            _, _, terminated, truncated, info = env.step(expert.act())
            if terminated or truncated:
                break
        assert info["is_success"] and info["outcome"] == "success"
        assert info["goal_distance"] < {"ee_vla/PickCube-v0": 1e-9}.get(env_id, 0.045)

        _, info = env.reset(seed=5)
        other = next(i for i in range(base.n_objects) if i != base.target_index)
        _slide(base, other, [0.0, 0.05])
        _, _, _, _, info = env.step(HOLD)
        assert info["outcome"] == "moved another object, not the target"
        assert info["other_moved"] == pytest.approx(0.05, abs=0.01) and info["target_moved"] < 0.005
        _slide(base, base.target_index, [0.0, 0.03])
        _, _, _, _, info = env.step(HOLD)
        assert info["outcome"] == "moved another object too" and info["target_moved"] > 0.02
    finally:
        env.close()


def test_push_info_gives_the_push_direction_for_the_whole_episode():
    """`info["push_angle"]`: the direction from the target's start to the circle (degrees from +x),
    on reset and unchanged by steps that move the target; the other suite tasks have no such key."""
    env = gym.make("ee_vla/Push-v0", image_size=32)
    try:
        angles = []
        for seed in range(6):
            _, info = env.reset(seed=seed)
            base = env.unwrapped
            v = base.goal_xy - base.target_pos[:2]
            assert info["push_angle"] == pytest.approx(np.degrees(np.arctan2(v[1], v[0])), abs=0.05)  # settled target
            _slide(base, base.target_index, [0.02, 0.0])
            _, _, _, _, after = env.step(HOLD)
            assert after["push_angle"] == info["push_angle"]
            angles.append(info["push_angle"])
        assert len(set(angles)) == len(angles)
    finally:
        env.close()
    other = gym.make("ee_vla/Place-v0", image_size=32)
    try:
        assert "push_angle" not in other.reset(seed=0)[1]
    finally:
        other.close()


def test_push_outcome_tells_a_short_push_from_an_untouched_target():
    env = gym.make("ee_vla/Push-v0", image_size=32)
    try:
        _, info = env.reset(seed=5)
        base = env.unwrapped
        before = info["goal_distance"]
        toward = (base.goal_xy - base.target_pos[:2]) / before
        _slide(base, base.target_index, 0.03 * toward)
        _, _, terminated, _, info = env.step(HOLD)
        assert not terminated and info["outcome"] == "target short of the circle"
        assert info["target_moved"] == pytest.approx(0.03, abs=0.005)
        assert info["goal_distance"] == pytest.approx(before - 0.03, abs=0.005)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("env_id", "held"), [("ee_vla/PickCube-v0", "target grasped, not lifted"), ("ee_vla/Place-v0", "target still held")]
)
def test_a_grasped_target_is_named_until_the_task_is_done(env_id, held):
    """The expert's first grasped state (before it lifts far enough or lets go on the plate)."""
    from sim_envs.experts import make_expert

    env = gym.make(env_id, image_size=32)
    try:
        env.reset(seed=5)
        base, expert = env.unwrapped, make_expert(env)
        for _ in range(gym.spec(env_id).max_episode_steps):
            _, _, _, _, info = env.step(expert.act())
            if base.is_grasped(base.target_index):
                break
        assert base.is_grasped(base.target_index) and not info["is_success"]
        assert info["outcome"] == held
    finally:
        env.close()


@pytest.mark.parametrize("env_id", sim_envs.SUITE_ENV_IDS)
def test_scratch_simulation_leaves_no_trace(env_id):
    """Simulating random actions inside `scratch()` between steps changes nothing: the episode is
    the same, image for image and state for state, as one without it."""
    plain, planned = gym.make(env_id, image_size=32), gym.make(env_id, image_size=32)
    rng = np.random.default_rng(0)
    try:
        plain.reset(seed=3)
        planned.reset(seed=3)
        for _ in range(15):
            with planned.unwrapped.scratch() as sim:
                for _ in range(3):
                    sim.simulate(rng.uniform(-1, 1, 7).astype(np.float32))
            a = rng.uniform(-1, 1, 7).astype(np.float32)
            o1, *_ = plain.step(a)
            o2, *_ = planned.step(a)
            np.testing.assert_array_equal(o1["pixels"], o2["pixels"])
            np.testing.assert_array_equal(plain.unwrapped.data.qpos, planned.unwrapped.data.qpos)
    finally:
        plain.close()
        planned.close()


@cache
def _press_test():
    """scripts/press_test.py as a module."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "press_test.py"
    spec = importlib.util.spec_from_file_location("press_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _press_down_on_edge(env_id: str, seed: int, offset: np.ndarray) -> tuple[float, float]:
    """scripts/press_test.py's descent: the closed gripper driven straight down at full speed from
    12 cm onto the target's edge (TCP `offset` from its centre), then sideways across it. Returns
    the target's peak speed (m/s) and the lowest height the TCP reached."""
    peak, _, lowest = _press_test().press(env_id, seed, offset)
    return peak, lowest


def test_the_press_script_names_an_env_or_seed_count_it_cannot_run(capsys):
    for argv, message in (
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--env", "ee_vla/Nope-v0"], "--env ee_vla/Nope-v0: one of the ee_vla suite's envs"),
        (["--env", "ee_vla/MetaWorld-push-v0"], "--env ee_vla/MetaWorld-push-v0: one of the ee_vla suite's envs"),
    ):
        with pytest.raises(SystemExit):
            _press_test().main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("env_id", ["ee_vla/Push-v0", "ee_vla/PickCube-v0"])
def test_pressing_down_on_an_object_does_not_fling_it(env_id):
    """A finger driven down onto an object's top edge stops on it (the gripper rests there)
    instead of crushing the 50 g object into the table until it squirts out at several m/s (what
    the unlimited weld did before: 67% of these cases over 1 m/s, up to 8.9 m/s)."""
    for seed, offset in [(0, (0.025, 0.0)), (1, (0.0, -0.03)), (2, (-0.021, 0.021)), (3, (0.03, 0.0))]:
        peak, lowest = _press_down_on_edge(env_id, seed, np.array(offset))
        assert peak < 1.0, f"seed {seed} offset {offset}: the target reached {peak:.2f} m/s"
        assert lowest > 0.035, f"seed {seed}: the TCP went down to {lowest:.3f} m, into the object"


def test_the_gripper_still_reaches_the_table_beside_an_object():
    """Clear of any object the descent is unchanged: the TCP reaches its lowest commanded height,
    and the sideways move then pushes the object along at about the gripper's speed."""
    peak, lowest = _press_down_on_edge("ee_vla/Push-v0", 0, np.array([0.07, 0.0]))
    assert lowest < 0.02 and 0.05 < peak < 1.0
