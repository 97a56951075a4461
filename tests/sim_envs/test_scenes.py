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
