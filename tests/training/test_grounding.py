"""Grounding co-training, the validation split and the batched data path of behaviour cloning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ee_vla.action_tokenizer import ActionTokenizer
from ee_vla.models.vla import GROUNDING_TEMPLATE, VLA
from ee_vla.training.config import TrainConfig
from ee_vla.training.data import (
    IGNORE,
    DatasetError,
    DemoDataset,
    GroundingDataset,
    MixedDataset,
    collate,
    compute_point_stats,
    load_pixels,
    scan_dataset,
    split_episodes,
)
from ee_vla.training.losses import ar_loss


def _episodes(write_demo, tmp_path: Path, n: int = 4, points: bool = True):
    eps = scan_dataset([write_demo(tmp_path / "d.hdf5", n_episodes=n, task_points=points)])
    load_pixels(eps)
    return eps


def _vla(eps, proprio: bool = False) -> VLA:
    from ee_vla.training.data import compute_action_stats, compute_proprio_stats

    return VLA.create("tiny", compute_action_stats(eps), 2, compute_proprio_stats(eps) if proprio else None)


def test_grounding_items_answer_the_task_points(write_demo, tmp_path):
    eps = _episodes(write_demo, tmp_path)
    vla = _vla(eps)
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    ds = GroundingDataset(eps, points, n_tokens=14, use_proprio=False, n_items=12, seed=0)
    assert len(ds) == 12
    item = ds[3]
    assert item["template"] == GROUNDING_TEMPLATE
    assert (item["target"][6:] == IGNORE).all() and (item["target"][:6] != IGNORE).all()
    truth = eps[item["episode"]].task_points[item["t"]]
    decoded = points.decode(item["target"][:6])
    bin_width = (np.asarray(points.stats.q99) - np.asarray(points.stats.q01)) * 2 / 255
    assert np.all(np.abs(decoded - truth) <= bin_width + 1e-5)
    with pytest.raises(ValueError, match="grounding answer has 6 tokens"):
        GroundingDataset(eps, points, n_tokens=5, use_proprio=False, n_items=2)


def test_point_stats_need_task_points(write_demo, tmp_path):
    eps = _episodes(write_demo, tmp_path, points=False)
    with pytest.raises(DatasetError, match="privileged/task_points") as err:
        compute_point_stats(eps)
    assert "without --grounding-fraction" in str(err.value)  # what to do with such data


def test_batched_fetch_equals_per_item_collate(write_demo, tmp_path):
    eps = _episodes(write_demo, tmp_path)
    vla = _vla(eps, proprio=True)
    demo = DemoDataset(eps, vla.action_tokenizer, 2, use_proprio=True)
    idx = [5, 0, 17, 9, 33]
    batched, single = demo.__getitems__(idx), collate([demo[i] for i in idx])
    for k in single:
        if isinstance(single[k], list):
            assert batched[k] == single[k]
        else:
            np.testing.assert_array_equal(np.asarray(batched[k]), np.asarray(single[k]))
    # ... and both hold what the episodes hold
    for row, i in enumerate(idx):
        ep, t = (int(x) for x in demo.index[i])
        assert (batched["episode"][row], batched["t"][row]) == (ep, t)
        np.testing.assert_array_equal(batched["pixels"][row], eps[ep].pixels[t])
        np.testing.assert_array_equal(batched["proprio"][row], eps[ep].agent_pos[t])
        np.testing.assert_array_equal(batched["target"][row], demo.targets[ep][t])
        assert batched["instruction"][row] == eps[ep].instruction
    assert isinstance(demo[3]["episode"], int) and isinstance(demo[3]["t"], int)
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    mixed = MixedDataset([demo, GroundingDataset(eps, points, 14, True, n_items=6)])
    b = mixed.__getitems__([1, len(demo) + 2, 3, len(demo)])
    assert b["template"].count(GROUNDING_TEMPLATE) == 2 and b["template"].count(None) == 2
    assert b["pixels"].shape[0] == 4 and b["target"].shape == (4, 14) and b["proprio"].shape[0] == 4
    assert collate(b) is b  # an already collated batch passes through


def test_build_inputs_matches_prompt_ids(write_demo, tmp_path):
    eps = _episodes(write_demo, tmp_path)
    vla = _vla(eps, proprio=True)
    px = np.stack([eps[0].pixels[0]] * 3)
    proprio = np.stack([eps[i].agent_pos[0] for i in range(3)])
    instr = ["pick up the red cube", "pick up the green cube now please", "x"]
    tpl = [None, GROUNDING_TEMPLATE, None]
    inputs = vla.build_inputs(px, instr, proprio, tpl)
    for i in range(3):
        row = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()
        assert row == vla.prompt_ids(instr[i], proprio[i], tpl[i])
    # left padding: the shorter rows start with pads that the mask hides
    assert inputs["attention_mask"][:, -1].all()


def test_split_episodes_is_disjoint_and_deterministic(write_demo, tmp_path):
    eps = _episodes(write_demo, tmp_path, n=10)
    train, val = split_episodes(eps, 0.2)
    assert len(val) == 2 and len(train) == 8
    assert {e.source for e in train}.isdisjoint({e.source for e in val})
    assert [e.source for e in split_episodes(eps, 0.2)[1]] == [e.source for e in val]
    assert split_episodes(eps, 0.0) == (eps, [])
    with pytest.raises(DatasetError, match="val_fraction"):
        split_episodes(eps[:1], 0.5)


def test_ar_loss_ignores_unlabelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 40)
    labels = torch.randint(30, 40, (3, 5))
    masked = labels.clone()
    masked[1, 2:] = IGNORE
    keep = masked != IGNORE
    ref = torch.nn.functional.cross_entropy(logits[keep][:, 30:40], labels[keep] - 30)
    assert torch.allclose(ar_loss(logits, masked, (30, 39)), ref, atol=1e-6)
    ref_full = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(ar_loss(logits, masked), ref_full, atol=1e-6)


def _train_tiny(data, out, **kw):
    """A few BC steps of a tiny VLA with grounding (the settings both training tests share);
    returns the model directory and the metrics rows."""
    from ee_vla.training.bc import train

    cfg = TrainConfig(
        data=(str(data),),
        out_dir=str(out),
        preset="tiny",
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        augment=False,
        val_fraction=0.2,
        **kw,
    )
    model_dir = train(cfg)
    return model_dir, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_with_grounding_and_validation(write_demo, tmp_path):
    data = write_demo(tmp_path / "d.hdf5", n_episodes=6, task_points=True)
    model_dir, rows = _train_tiny(
        data,
        tmp_path / "run",
        chunk_size=2,
        steps=30,
        log_every=10,
        eval_every=30,
        grounding_fraction=0.3,
        patch_size=8,
    )
    assert all("grounding_acc" in r and "token_acc" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "eval/token_acc" in rows[-1] and "eval/first_action_l1" in rows[-1]
    # held-out episode starts: the first action and the grounding question
    assert -1 <= rows[-1]["eval/start_action_cos"] <= 1 and rows[-1]["eval/start_action_l1"] >= 0
    assert rows[-1]["eval/start_grounding_err_m"] >= 0 and "eval/start_grounding_mean_err_m" in rows[-1]
    meta = json.loads((model_dir / "ee_vla.json").read_text())["meta"]
    assert meta["grounding"]["template"] == GROUNDING_TEMPLATE
    assert meta["spec"]["patch_size"] == 8
    VLA.from_pretrained(model_dir)  # reloads

    # continued training on data with a far-off point (an object flung off the table in on-policy
    # data) keeps the model's discretisation of the answers instead of recomputing it
    import h5py

    with h5py.File(data, "a") as f:
        f["data/demo_0/privileged/task_points"][:, 2] = -100.0
    moved = compute_point_stats(scan_dataset([data]))
    kept = json.loads((model_dir / "ee_vla.json").read_text())["meta"]["grounding"]["stats"]
    assert moved.q01[2] != pytest.approx(kept["q01"][2])
    model2, _ = _train_tiny(
        data, tmp_path / "run2", chunk_size=2, steps=2, eval_every=0, grounding_fraction=0.3, init_from=str(model_dir)
    )
    assert json.loads((model2 / "ee_vla.json").read_text())["meta"]["grounding"]["stats"] == kept


def test_grounding_without_task_points_fails_before_compute(write_demo, tmp_path):
    from ee_vla.training.bc import train

    data = write_demo(tmp_path / "d.hdf5", n_episodes=3)
    cfg = TrainConfig(data=(str(data),), out_dir=str(tmp_path / "run"), preset="tiny", grounding_fraction=0.2)
    with pytest.raises(DatasetError, match="privileged/task_points"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_start_frame_hook_scores_episode_starts_against_the_truth(write_demo, tmp_path, monkeypatch):
    import contextlib

    from ee_vla.models.vla import GROUNDING_TEMPLATE
    from ee_vla.training import trajectories
    from ee_vla.training.bc import start_frame_eval_hook
    from ee_vla.training.data import DemoDataset

    eps = scan_dataset([write_demo(tmp_path / "d.hdf5", n_episodes=4, task_points=True)])
    load_pixels(eps)
    for i, e in enumerate(eps):  # the synthetic episodes all start at the same place: spread them
        e.task_points = e.task_points + 4.0 * i
    vla = VLA.create("tiny", chunk_size=2, corpus=[e.instruction for e in eps])
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    demo = DemoDataset(eps, vla.action_tokenizer, 2, False)
    answer = {}

    def fake_states(vla_, inputs, guess):  # the decoder answers what the test says
        grounding = bool((inputs["input_ids"] == vla.tokenizer(GROUNDING_TEMPLATE.split()[1]).input_ids[-1]).any())
        tokens = answer["points" if grounding else "actions"]
        return tokens[None], torch.zeros(len(tokens), dtype=torch.long)

    monkeypatch.setattr(trajectories, "jacobi_states", fake_states)
    hook = start_frame_eval_hook(demo, 3, points)
    rows = [0, 1, 3]  # np.linspace(0, 3, 3) -> episodes 0, 1, 3 (their step 0)
    true_actions = torch.as_tensor(np.stack([demo.targets[e][0] for e in rows]))
    true_points = torch.as_tensor(points.encode(np.stack([eps[e].task_points[0] for e in rows])))
    answer.update(actions=true_actions, points=torch.cat([true_points, true_points[:, :1]], 1))
    right = hook(vla, contextlib.nullcontext)
    assert right["eval/start_action_cos"] > 0.99 and right["eval/start_action_l1"] < 0.02
    assert right["eval/start_grounding_err_m"] < 0.3 * right["eval/start_grounding_mean_err_m"]  # bins, clipping
    flipped = vla.action_range[0] + vla.action_range[1] - true_actions  # every bin mirrored: x -> -x
    answer.update(actions=flipped, points=(answer["points"] - 60).clamp(min=vla.action_range[0]))
    wrong = hook(vla, contextlib.nullcontext)
    assert wrong["eval/start_action_cos"] < -0.9 and wrong["eval/start_action_l1"] > right["eval/start_action_l1"]
    assert wrong["eval/start_grounding_err_m"] > right["eval/start_grounding_err_m"] + 0.01
    assert wrong["eval/start_action_mean_l1"] == right["eval/start_action_mean_l1"] > 0


def _suite_episodes(write_demo, tmp_path: Path, n: int = 6):
    """Synthetic demonstrations labelled as recorded on ee_vla/Reach-v0 (32 px images), so fresh
    scenes of that task can be rendered beside them."""
    path = write_demo(
        tmp_path / "reach.hdf5", n_episodes=n, size=32, proprio_dim=7, task_points=True, env_id="ee_vla/Reach-v0"
    )
    eps = scan_dataset([path])
    load_pixels(eps)
    return path, eps


def test_scene_grounding_items_are_fresh_scenes_with_their_answers(write_demo, tmp_path):
    from ee_vla.training.data import RepeatDataset, SceneGroundingDataset, scene_sources
    from sim_envs.scenes import SCENE_SEED_BASE, SceneRenderer

    _, eps = _suite_episodes(write_demo, tmp_path)
    ids, kwargs = scene_sources(eps)
    assert ids == ["ee_vla/Reach-v0"] and kwargs == {"image_size": 32}
    vla = _vla(eps)
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    ds = SceneGroundingDataset(ids, kwargs, points, n_tokens=14, use_proprio=True, n_items=50)
    batch = ds.__getitems__([0, 7, 7])
    assert batch["pixels"].shape == (3, 32, 32, 3) and batch["proprio"].shape == (3, 7)
    np.testing.assert_array_equal(batch["pixels"][1], batch["pixels"][2])  # item -> seed, fixed
    assert not np.array_equal(batch["pixels"][0], batch["pixels"][1])
    assert batch["template"] == [GROUNDING_TEMPLATE] * 3 and (batch["target"][:, 6:] == IGNORE).all()
    renderer = SceneRenderer(ids, kwargs)
    truth = renderer.render([SCENE_SEED_BASE + 7])
    renderer.close()
    assert batch["instruction"][1] == truth["instruction"][0]
    np.testing.assert_array_equal(batch["target"][1, :6], points.encode(truth["task_points"])[0])
    with pytest.raises(IndexError):
        ds.__getitems__([50])
    import pickle

    assert pickle.loads(pickle.dumps(ds))._renderer is None  # what a DataLoader worker receives
    # beside demonstration items in one batch
    demo = DemoDataset(eps, vla.action_tokenizer, 2, True)
    rep = RepeatDataset(demo, 3)
    assert len(rep) == 3 * len(demo) and rep[len(demo) + 1]["t"] == demo[1]["t"]
    mixed = MixedDataset([rep, ds])
    b = collate(mixed.__getitems__([0, len(rep) + 3]))
    assert b["template"] == [None, GROUNDING_TEMPLATE] and b["pixels"].shape == (2, 32, 32, 3)


def test_all_questions_ask_about_every_object_of_fewer_scenes(write_demo, tmp_path):
    from ee_vla.training.data import SceneGroundingDataset, scene_sources
    from sim_envs.scenes import SCENE_SEED_BASE, SceneRenderer

    _, eps = _suite_episodes(write_demo, tmp_path)
    ids, kwargs = scene_sources(eps)
    vla = _vla(eps)
    points = ActionTokenizer.openvla(compute_point_stats(eps), vocab_size=len(vla.tokenizer))
    ds = SceneGroundingDataset(ids, kwargs, points, 14, True, n_items=50, all_questions=True)
    batch = ds.__getitems__([9, 2, 30, 4])  # Reach: 3 questions per scene -> scenes 9 and 2
    renderer = SceneRenderer(ids, kwargs)
    want = renderer.render_questions([SCENE_SEED_BASE + 9, SCENE_SEED_BASE + 2], 4)
    renderer.close()
    assert batch["instruction"] == want["instruction"] and len(set(batch["instruction"][:3])) == 3
    np.testing.assert_array_equal(batch["pixels"], want["pixels"])
    np.testing.assert_array_equal(batch["target"][:, :6], points.encode(want["task_points"]))
    assert batch["template"] == [GROUNDING_TEMPLATE] * 4
    with pytest.raises(ValueError, match="grounding_questions all needs grounding_source=scenes"):
        TrainConfig(data=("x",), out_dir="o", grounding_fraction=0.2, grounding_questions="all")
    with pytest.raises(ValueError, match="must be target\\|all"):
        TrainConfig(data=("x",), out_dir="o", grounding_source="scenes", grounding_questions="some")


def test_scene_sources_need_suite_tasks(write_demo, tmp_path):
    from ee_vla.training.data import scene_sources

    eps = scan_dataset([write_demo(tmp_path / "d.hdf5", task_points=True)])  # ee_vla/Synthetic-v0
    with pytest.raises(DatasetError, match="ee_vla tabletop tasks"):
        scene_sources(eps)
    with pytest.raises(ValueError, match="grounding_fraction must be in \\[0, 0.5\\]"):
        TrainConfig(data=("x",), out_dir="o", grounding_fraction=1.0)
    TrainConfig(data=("x",), out_dir="o", grounding_fraction=1.0, grounding_source="scenes")


@pytest.mark.parametrize("fraction, questions", [(1.0, "target"), (0.5, "target"), (0.5, "all")])
def test_train_grounding_on_fresh_scenes(write_demo, tmp_path, fraction, questions):
    path, _ = _suite_episodes(write_demo, tmp_path)
    model_dir, rows = _train_tiny(
        path,
        tmp_path / "run",
        chunk_size=1,
        steps=16,
        log_every=8,
        eval_every=16,
        grounding_fraction=fraction,
        grounding_source="scenes",
        grounding_questions=questions,
        num_workers=1 if fraction == 1 else 0,
    )
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["grounding_acc"] > 0 and "eval/start_grounding_err_m" in rows[-1]
    meta = json.loads((model_dir / "ee_vla.json").read_text())["meta"]
    assert meta["grounding"]["source"] == "scenes" and meta["grounding"]["questions"] == questions
    VLA.from_pretrained(model_dir)
