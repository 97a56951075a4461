"""Fresh grounding scenes (`sim_envs.scenes`) and the tabletop reset option they use."""

from __future__ import annotations

import numpy as np
import pytest

import sim_envs
from sim_envs.scenes import GRIPPER_HIGH, GRIPPER_LOW, SCENE_SEED_BASE, SceneRenderer

SUITE = list(sim_envs.SUITE_ENV_IDS)


@pytest.fixture(scope="module")
def renderer():
    r = SceneRenderer(SUITE, {"image_size": 48})
    yield r
    r.close()


def test_gripper_pos_option_moves_only_the_gripper():
    env = sim_envs.make("ee_vla/Reach-v0", image_size=48)
    try:
        obs0, info0 = env.reset(seed=5)
        points0 = env.unwrapped.task_points()
        want = np.array([0.12, 0.1, 0.2])
        obs1, info1 = env.reset(seed=5, options={"gripper_pos": want})
        assert info1["task_description"] == info0["task_description"]
        np.testing.assert_allclose(env.unwrapped.task_points(), points0, atol=1e-6)
        assert np.linalg.norm(obs1["agent_pos"][:3] - want) < 0.005
        assert np.linalg.norm(obs0["agent_pos"][:3] - want) > 0.1
        assert not np.array_equal(obs0["pixels"], obs1["pixels"])
        for bad, match in [
            ({"gripper_pos": [0, 0]}, "3 finite numbers"),
            ({"gripper_pos": [0, 0, np.nan]}, "3 finite numbers"),
            ({"gripper_pos": [0.9, 0, 0.2]}, "outside the workspace"),
            ({"grip": [0, 0, 0.2]}, "unknown reset option"),
        ]:
            with pytest.raises(ValueError, match=match):
                env.reset(seed=5, options=bad)
    finally:
        env.close()


def test_scenes_are_reproducible_and_answer_where_things_are(renderer):
    seeds = list(range(SCENE_SEED_BASE, SCENE_SEED_BASE + 8))
    a, b = renderer.render(seeds), renderer.render(seeds)
    assert a["pixels"].shape == (8, 48, 48, 3) and a["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    assert a["instruction"] == b["instruction"]
    assert a["env_id"] == [SUITE[s % 4] for s in seeds]  # every task in turn
    assert a["task_points"].shape == (8, 6) and np.isfinite(a["task_points"]).all()
    # the gripper starts somewhere new in each scene, inside the drawn box
    tcp = a["agent_pos"][:, :3]
    assert np.all(tcp > GRIPPER_LOW - 0.01) and np.all(tcp < GRIPPER_HIGH + 0.01)
    assert len({round(float(x), 3) for x in tcp[:, 0]}) == 8
    # the answer is the env's own ground truth for that seed
    env = sim_envs.make(a["env_id"][2], image_size=48)
    try:
        env.reset(seed=seeds[2])
        np.testing.assert_allclose(a["task_points"][2], env.unwrapped.task_points(), atol=1e-6)
    finally:
        env.close()
    c = renderer.render([SCENE_SEED_BASE + 100])
    assert not np.array_equal(c["pixels"][0], a["pixels"][0])


def test_renderer_rejects_non_tabletop_ids():
    with pytest.raises(ValueError, match="at least one env id"):
        SceneRenderer([])
    with pytest.raises(ValueError, match="unknown env id"):
        SceneRenderer(["ee_vla/Nope-v0"])


def test_renderer_process_matches_in_process_rendering(renderer):
    from sim_envs.scenes import SceneRendererProcess

    proc = SceneRendererProcess(SUITE, {"image_size": 48})
    try:
        seeds = [SCENE_SEED_BASE + 3, SCENE_SEED_BASE + 9]
        got, want = proc.render(seeds), renderer.render(seeds)
        np.testing.assert_array_equal(got["pixels"], want["pixels"])
        assert got["instruction"] == want["instruction"]
    finally:
        proc.close()
    with pytest.raises(RuntimeError, match="unknown env id"):
        SceneRendererProcess(["ee_vla/Nope-v0"])


def test_questions_name_every_object_and_goal_from_one_scene():
    """`questions()` starts with the episode's own instruction and answer, then names each other
    object (Place: each plate too), answering with that object's position and the goal it names."""
    for env_id, n in [("ee_vla/Reach-v0", 3), ("ee_vla/PickCube-v0", 3), ("ee_vla/Push-v0", 3), ("ee_vla/Place-v0", 4)]:
        env = sim_envs.make(env_id, image_size=48)
        try:
            _, info = env.reset(seed=11)
            u = env.unwrapped
            qs = u.questions()
            assert len(qs) == n
            assert qs[0][0] == info["task_description"]
            np.testing.assert_allclose(qs[0][1], u.task_points(), atol=1e-6)
            assert len({q[0] for q in qs}) == n  # different words ...
            assert len({tuple(np.round(q[1], 4)) for q in qs}) == n  # ... different answers
            for instruction, points in qs:
                named = [i for i, o in enumerate(u.objects) if f"the {o.name}" in instruction]
                assert len(named) == 1, instruction
                np.testing.assert_allclose(points[:3], u.object_pos(named[0]), atol=1e-6)
                if env_id in ("ee_vla/Reach-v0", "ee_vla/PickCube-v0"):
                    np.testing.assert_allclose(points[3:], points[:3])
                elif env_id == "ee_vla/Push-v0":
                    np.testing.assert_allclose(points[3:], u.goal_pos, atol=1e-6)
            if env_id == "ee_vla/Place-v0":  # the plate named decides the goal
                for instruction, points in qs:
                    plate = next(name for name, _ in u._plates if name in instruction)
                    want = dict(u._plates)[plate]
                    np.testing.assert_allclose(points[3:], want, atol=1e-6)
        finally:
            env.close()


def test_render_questions_asks_every_question_of_each_scene_once_rendered(renderer):
    seeds = [SCENE_SEED_BASE + s for s in (4, 5, 6, 7)]  # Reach, PickCube, Push, Place
    got = renderer.render_questions(seeds, 8)
    one = renderer.render(seeds[:3])
    assert got["pixels"].shape == (8, 48, 48, 3) and len(got["instruction"]) == 8
    for j in range(3):  # scene 0's three questions share its image; the first is its own
        np.testing.assert_array_equal(got["pixels"][j], one["pixels"][0])
    assert got["instruction"][0] == one["instruction"][0]
    np.testing.assert_allclose(got["task_points"][0], one["task_points"][0])
    assert len(set(got["instruction"][:3])) == 3
    np.testing.assert_array_equal(got["pixels"][3], one["pixels"][1])
    np.testing.assert_array_equal(got["pixels"][6], one["pixels"][2])  # cut at 8: 2 of scene 2's 3
    assert got["env_id"] == [SUITE[0]] * 3 + [SUITE[1]] * 3 + [SUITE[2]] * 2
    again = renderer.render_questions(seeds, 8)
    assert again["instruction"] == got["instruction"]
    with pytest.raises(ValueError, match="fewer than the 20"):
        renderer.render_questions(seeds[:2], 20)
