"""The held-out paraphrases: never in training data, same scenes as the training templates."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from sim_envs.collect import CollectConfig
from sim_envs.instructions import HELD_OUT
from sim_envs.pick_cube import PICK_TEMPLATES
from sim_envs.place import PLACE_TEMPLATES
from sim_envs.push import PUSH_TEMPLATES
from sim_envs.reach import REACH_TEMPLATES

TRAIN = {"reach": REACH_TEMPLATES, "pick_cube": PICK_TEMPLATES, "place": PLACE_TEMPLATES, "push": PUSH_TEMPLATES}
ENVS = {"reach": "ee_vla/Reach-v0", "pick_cube": "ee_vla/PickCube-v0"}
ENVS |= {"place": "ee_vla/Place-v0", "push": "ee_vla/Push-v0"}
NAMES = {"obj": "red cube", "plate": "blue plate"}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_no_held_out_phrasing_is_a_training_one():
    """Rendered with the same names, no held-out instruction equals a training instruction of any task."""
    train = {_norm(t.format(**NAMES)) for ts in TRAIN.values() for t in ts}
    held = [_norm(t.format(**NAMES)) for ts in HELD_OUT.values() for t in ts]
    assert set(HELD_OUT) == set(TRAIN) and all(len(ts) == 5 for ts in HELD_OUT.values())
    assert len(set(held)) == len(held) and not set(held) & train
    for task, ts in HELD_OUT.items():  # the same fields as the task's own templates
        fields = {f for t in TRAIN[task] for f in ("obj", "plate") if "{" + f + "}" in t}
        assert all({f for f in ("obj", "plate") if "{" + f + "}" in t} == fields for t in ts), task


@pytest.mark.parametrize("task", sorted(ENVS))
def test_the_same_seed_gives_the_same_scene_in_other_words(task):
    train, held = gym.make(ENVS[task]), gym.make(ENVS[task], instructions="held_out")
    try:
        for seed in range(3):
            a, _ = train.reset(seed=seed)
            b, _ = held.reset(seed=seed)
            assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["agent_pos"], b["agent_pos"])
            ta, tb = train.unwrapped.task_description, held.unwrapped.task_description
            name = train.unwrapped.objects[train.unwrapped.target_index].name
            assert ta != tb and name in ta and name in tb
            plate = getattr(held.unwrapped, "plate_name", "")
            assert any(tb == t.format(obj=name, plate=plate) for t in HELD_OUT[task])
    finally:
        train.close()
        held.close()
    with pytest.raises(ValueError, match="instructions"):
        gym.make(ENVS[task], instructions="paraphrase")


def test_collection_uses_the_training_templates_only():
    """Demonstrations (collect, and the DAgger/training data built from them) are made with
    `CollectConfig.env_kwargs()`, which never selects the held-out set: over 40 scenes per task the
    instructions are all training phrasings."""
    kwargs = CollectConfig(env=list(ENVS.values())).env_kwargs()
    assert "instructions" not in kwargs
    held = {t for ts in HELD_OUT.values() for t in ts}
    for task, env_id in ENVS.items():
        env = gym.make(env_id, **kwargs)
        try:
            for seed in range(40):
                env.reset(seed=seed)
                u = env.unwrapped
                assert u._template in TRAIN[task] and u._template not in held
        finally:
            env.close()
