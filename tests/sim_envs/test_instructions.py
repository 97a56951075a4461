"""The held-out paraphrases: never in training data, same scenes as the training templates."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from sim_envs.collect import CollectConfig
from sim_envs.instructions import AUGMENT, HELD_OUT_SETS, NEGATED, check_training_set, choose_template
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


def _rendered(sets) -> list[str]:
    return [_norm(t.format(**NAMES)) for s in sets for ts in s.values() for t in ts]


@pytest.mark.parametrize("which", sorted(HELD_OUT_SETS))
def test_no_held_out_phrasing_is_a_training_one(which):
    """Rendered with the same names, no held-out instruction equals a training instruction of any
    task, and the two held-out sets share none."""
    held_set = HELD_OUT_SETS[which]
    train = set(_rendered([TRAIN]))
    held = _rendered([held_set])
    other = set(_rendered([s for name, s in HELD_OUT_SETS.items() if name != which]))
    assert set(held_set) == set(TRAIN) and all(len(ts) == 5 for ts in held_set.values())
    assert len(set(held)) == len(held) and not set(held) & (train | other)
    for task, ts in held_set.items():  # the same fields as the task's own templates
        fields = {f for t in TRAIN[task] for f in ("obj", "plate") if "{" + f + "}" in t}
        assert all({f for f in ("obj", "plate") if "{" + f + "}" in t} == fields for t in ts), task


@pytest.mark.parametrize("which", sorted(HELD_OUT_SETS))
@pytest.mark.parametrize("task", sorted(ENVS))
def test_the_same_seed_gives_the_same_scene_in_other_words(task, which):
    train, held = gym.make(ENVS[task]), gym.make(ENVS[task], instructions=which)
    try:
        for seed in range(3):
            a, _ = train.reset(seed=seed)
            b, _ = held.reset(seed=seed)
            assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["agent_pos"], b["agent_pos"])
            ta, tb = train.unwrapped.task_description, held.unwrapped.task_description
            name = train.unwrapped.objects[train.unwrapped.target_index].name
            assert ta != tb and name in ta and name in tb
            plate = getattr(held.unwrapped, "plate_name", "")
            assert any(tb == t.format(obj=name, plate=plate) for t in HELD_OUT_SETS[which][task])
    finally:
        train.close()
        held.close()
    with pytest.raises(ValueError, match="instructions"):
        gym.make(ENVS[task], instructions="paraphrase")


def test_collection_uses_the_training_templates_only():
    """Demonstrations (collect, and the DAgger/training data built from them) are made with
    `CollectConfig.make_kwargs()`, which never selects the held-out set: over 40 scenes per task the
    instructions are all training phrasings."""
    kwargs = CollectConfig(env=list(ENVS.values())).make_kwargs()
    assert "instructions" not in kwargs
    held = {t for s in HELD_OUT_SETS.values() for ts in s.values() for t in ts}
    for task, env_id in ENVS.items():
        env = gym.make(env_id, **kwargs)
        try:
            for seed in range(40):
                env.reset(seed=seed)
                u = env.unwrapped
                assert u._template in TRAIN[task] and u._template not in held
        finally:
            env.close()


def _words(template: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", template.lower())))


@pytest.mark.parametrize(("paraphrases", "per_task"), [(AUGMENT, 20), (NEGATED, 10)], ids=["AUGMENT", "NEGATED"])
def test_training_paraphrases_are_disjoint_from_the_held_out_ones(paraphrases, per_task):
    """`AUGMENT` and `NEGATED` (for training) share no phrasing with either held-out set, the
    templates or each other, and no word that only the held-out phrasings of its task use: the
    held-out tests stay unseen words."""
    train = set(_rendered([TRAIN]))
    held = set(_rendered(HELD_OUT_SETS.values()))
    others = set(_rendered([AUGMENT, NEGATED])) - set(_rendered([paraphrases]))
    aug = _rendered([paraphrases])
    assert set(paraphrases) == set(TRAIN) and all(len(ts) == per_task for ts in paraphrases.values())
    assert len(set(aug)) == len(aug) and not set(aug) & (train | held | others)
    for task, ts in paraphrases.items():
        held_words = set().union(*(_words(t) for s in HELD_OUT_SETS.values() for t in s[task]))
        held_only = held_words - set().union(*map(_words, TRAIN[task]))
        assert not [t for t in ts if _words(t) & held_only], task
        fields = {f for t in TRAIN[task] for f in ("obj", "plate") if "{" + f + "}" in t}
        assert all({f for f in ("obj", "plate") if "{" + f + "}" in t} == fields for t in ts), task


def test_negated_phrasings_use_no_held_out_word_of_any_task():
    """`NEGATED` uses no word that a held-out phrasing of any task uses and no template does: the
    held-out negations ("without", "don't", "never") stay unseen in every task."""
    held = set().union(*(_words(t) for s in HELD_OUT_SETS.values() for ts in s.values() for t in ts))
    held_only = held - set().union(*(_words(t) for ts in TRAIN.values() for t in ts))
    assert {"without", "never", "don"} <= held_only
    assert not [t for ts in NEGATED.values() for t in ts if _words(t) & held_only]


def test_augmented_draws_cover_templates_and_paraphrases_without_moving_the_scene_stream():
    seen = set()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        index = int(rng.integers(len(PICK_TEMPLATES)))
        state = rng.bit_generator.state
        seen.add(choose_template(PICK_TEMPLATES, "pick_cube", index, "augmented", rng))
        assert rng.bit_generator.state == state  # the draw that places the scene comes next, unchanged
    assert seen == set(PICK_TEMPLATES) | set(AUGMENT["pick_cube"])
    seen = set()
    for seed in range(600):
        rng = np.random.default_rng(seed)
        index = int(rng.integers(len(PICK_TEMPLATES)))
        negated = choose_template(PICK_TEMPLATES, "pick_cube", index, "augmented_negated", rng)
        seen.add(negated)
        # "augmented" never draws a NEGATED phrasing
        assert choose_template(PICK_TEMPLATES, "pick_cube", index, "augmented", rng) in (
            *PICK_TEMPLATES,
            *AUGMENT["pick_cube"],
        )
    assert seen == set(PICK_TEMPLATES) | set(AUGMENT["pick_cube"]) | set(NEGATED["pick_cube"])
    with pytest.raises(
        ValueError, match="instructions must be one of train, held_out, held_out_2, augmented, augmented_negated"
    ):
        choose_template(PICK_TEMPLATES, "pick_cube", 0, "paraphrased", np.random.default_rng(0))


def test_collection_takes_the_training_paraphrases_and_refuses_the_held_out_ones():
    for which in ("augmented", "augmented_negated"):
        cfg = CollectConfig(env=list(ENVS.values()), instructions=which)
        assert cfg.make_kwargs()["instructions"] == which
    for which in HELD_OUT_SETS:
        with pytest.raises(ValueError, match="held-out paraphrases never go into training data"):
            CollectConfig(env=list(ENVS.values()), instructions=which)
        with pytest.raises(
            ValueError, match=f"--instructions must be one of train, augmented, augmented_negated.*{which}"
        ):
            check_training_set(which, "--instructions")
    with pytest.raises(ValueError, match="only supported by the ee_vla suite"):
        CollectConfig(env=["ee_vla/MetaWorld-door-open-v0"], instructions="augmented")


@pytest.mark.parametrize("task", ["place", "push"])
def test_augmented_envs_show_the_same_scenes_in_training_words(task):
    train, aug = gym.make(ENVS[task]), gym.make(ENVS[task], instructions="augmented")
    try:
        options = {t for t in (*TRAIN[task], *AUGMENT[task])}
        for seed in range(3):
            a, _ = train.reset(seed=seed)
            b, _ = aug.reset(seed=seed)
            assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["agent_pos"], b["agent_pos"])
            name = aug.unwrapped.objects[aug.unwrapped.target_index].name
            plate = getattr(aug.unwrapped, "plate_name", "")
            assert any(aug.unwrapped.task_description == t.format(obj=name, plate=plate) for t in options)
    finally:
        train.close()
        aug.close()
