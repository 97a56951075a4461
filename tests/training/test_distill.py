"""CEED distillation: teacher trajectories end at the AR output, the losses behave, a few steps train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ee_vla.training import DistillConfig, TrainConfig, distill, train
from ee_vla.training.data import DemoDataset, collate, load_pixels, scan_dataset
from ee_vla.training.trajectories import Trajectories, TrajectoryError, collect_trajectories


@pytest.fixture(scope="module")
def setup(tmp_path_factory, write_demo):
    """A demonstration file and a tiny BC teacher (chunk of 2 actions) trained on it briefly."""
    root = tmp_path_factory.mktemp("distill")
    data = write_demo(root / "demos.hdf5", n_episodes=3, steps=7)
    teacher = train(
        TrainConfig(
            data=(str(data),),
            out_dir=str(root / "bc"),
            preset="tiny",
            chunk_size=2,
            steps=12,
            batch_size=8,
            lr=3e-3,
            warmup_steps=1,
            log_every=4,
            save_every=12,
            eval_every=0,
            augment=False,
        )
    )
    return root, data, teacher


def _demo(data, vla) -> DemoDataset:
    eps = scan_dataset([data])
    load_pixels(eps)
    return DemoDataset(eps, vla.action_tokenizer, vla.chunk_size, use_proprio=False)


def test_trajectories_end_at_the_ar_output(setup, tmp_path):
    from ee_vla.decoding import DecodeConfig, decode
    from ee_vla.decoding.guess import warm_guess
    from ee_vla.decoding.hf import HFStep
    from ee_vla.models.vla import VLA

    _, data, teacher = setup
    vla = VLA.from_pretrained(teacher)
    ds = _demo(data, vla)
    traj = collect_trajectories(vla, ds, ("warm", "prompt", "repeat"), batch_size=8, progress=False)
    n = vla.n_action_tokens
    assert len(traj) == 3 * len(ds) and traj.states.shape == (3 * len(ds), n, n)
    batch = collate([ds[i] for i in range(len(ds))])
    inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"])
    step, first, _ = HFStep.prefill(vla.model, **inputs)
    ar, _ = decode(step, first, n, DecodeConfig(method="ar"), action_range=vla.action_range)
    for init in range(3):
        sel = traj.init == init
        order = torch.argsort(traj.sample[sel])
        fixed = traj.fixed_points[sel][order]
        assert torch.equal(fixed.long(), ar), f"init {traj.meta['inits'][init]}: Y* != AR output"
        states, n_states = traj.states[sel][order], traj.n_states[sel][order]
        for m in range(len(ds)):  # after the first Y*, every state is Y*; before it, none is
            assert (states[m, n_states[m] - 1 :] == fixed[m]).all()
            assert not (states[m, : n_states[m] - 1] == fixed[m]).all(-1).any()
    y0 = traj.states[traj.init == 2][:, 0]  # repeat: token 0 everywhere
    assert (y0 == y0[:, :1]).all()
    # warm: from step `shift` on, Y0 is the teacher's previous Y* shifted (as VLAPolicy does)
    warm = {int(s): (traj.states[m, 0], traj.fixed_points[m]) for m, s in enumerate(traj.sample) if traj.init[m] == 0}
    shift, A = traj.meta["warm_shift"], vla.action_dim
    for i in range(len(ds)):
        ep, t = ds.index[i]
        if t >= shift:
            expect = warm_guess(warm[i - shift][1][None], shift * A, A)[0]
            assert torch.equal(warm[i][0][1:], expect[1:])
    path = traj.save(tmp_path / "t.safetensors")
    back = Trajectories.load(path)
    assert torch.equal(back.states, traj.states) and back.meta == traj.meta
    back.check_matches(ds, n)
    with pytest.raises(TrajectoryError, match="tokens per chunk"):
        back.check_matches(ds, n + 7)


def test_consistency_is_zero_when_the_state_is_the_fixed_point(setup):
    from ee_vla.models.vla import VLA
    from ee_vla.training.consistency import DistillDataset, distill_objective
    from ee_vla.training.losses import WindowLM

    root, data, teacher = setup
    vla = VLA.from_pretrained(teacher)
    ds = _demo(data, vla)
    traj = collect_trajectories(vla, ds, ("repeat",), batch_size=8, progress=False)
    traj.states[:] = traj.fixed_points[:, None]  # every state is Y*
    traj.n_states[:] = 1
    batch = collate([DistillDataset(ds, traj)[i] for i in range(6)])
    inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"])
    for mask in (True, False):
        cfg = DistillConfig(
            data=(str(data),), out_dir=str(root / "x"), teacher=str(teacher), mask_converged_prefix=mask
        )
        with torch.no_grad():
            _, metrics = distill_objective(cfg, vla)(WindowLM(vla.model), inputs, batch, torch.Generator())
        assert metrics["consistency_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_local_consistency_maps_a_state_to_the_next_one_global_to_the_fixed_point(setup):
    from ee_vla.models.vla import VLA
    from ee_vla.training.consistency import DistillDataset, distill_objective
    from ee_vla.training.losses import WindowLM, after_first_wrong, consistency_loss, window_logits

    root, data, teacher = setup
    vla = VLA.from_pretrained(teacher)
    ds = _demo(data, vla)
    traj = collect_trajectories(vla, ds, ("repeat",), batch_size=8, progress=False)
    items = DistillDataset(ds, traj, state_sampling="all")
    # the first state of trajectories with at least one state between it and the fixed point
    pick = [i for i, (m, j) in enumerate(items.items) if j == 0 and traj.n_states[m] >= 3][:4]
    assert pick, "the tiny teacher's trajectories are too short to tell the two targets apart"
    batch = collate([items[i] for i in pick])
    inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"])
    y0 = torch.as_tensor(batch["states"])[:, 0]
    y1 = torch.as_tensor(batch["states"])[:, 1]
    fixed = torch.as_tensor(batch["fixed"])
    assert not torch.equal(y1, fixed)
    lm = WindowLM(vla.model)
    losses = {}
    for kind, target in (("global", fixed), ("local", y1)):
        cfg = DistillConfig(
            data=(str(data),), out_dir=str(root / "x"), teacher=str(teacher), consistency=kind, mixed_labels=False
        )
        with torch.no_grad():
            _, metrics = distill_objective(cfg, vla)(lm, inputs, batch, torch.Generator())
            expect = consistency_loss(
                window_logits(lm, inputs, y0[:, :-1]),
                window_logits(lm, inputs, target[:, :-1]),
                after_first_wrong(y0, target),
                vla.action_range,
                "mean",
            )
        assert metrics["consistency_loss"].item() == pytest.approx(expect.item(), rel=1e-4, abs=1e-6)
        losses[kind] = expect.item()
    assert losses["local"] != pytest.approx(losses["global"], rel=1e-3)


def test_distill_runs_reduces_the_loss_and_reuses_trajectories(setup):
    from ee_vla.models.vla import VLA

    root, data, teacher = setup
    base = dict(
        data=(str(data),),
        teacher=str(teacher),
        batch_size=8,
        lr=2e-3,
        warmup_steps=1,
        log_every=1,
        save_every=100,
        inits=("warm", "prompt"),
    )
    traj_dir = distill(DistillConfig(out_dir=str(root / "collect"), collect_only=True, eval_every=0, **base))
    assert traj_dir == root / "collect" / "trajectories" and (traj_dir / "part-000-of-001.safetensors").is_file()
    out = root / "ceed"
    model = distill(DistillConfig(out_dir=str(out), trajectories=str(traj_dir), steps=14, eval_every=14, **base))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < first - 0.2, f"distillation loss did not fall: {first:.3f} -> {last:.3f}"
    assert {"consistency_loss", "ar_loss", "replaced_steps", "eval/jacobi_iterations"} <= set(rows[-1])
    vla = VLA.from_pretrained(model)
    assert vla.meta["training"]["kind"] == "distill" and vla.chunk_size == 2
    # ablations reuse the same trajectories: mixed labels off, every state, summed reduction
    out2 = root / "ceed_nomix"
    distill(
        DistillConfig(
            out_dir=str(out2),
            trajectories=str(traj_dir),
            steps=2,
            mixed_labels=False,
            state_sampling="all",
            reduction="sum",
            consistency="local",
            eval_every=0,
            **base,
        )
    )
    rows2 = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert all(r["replaced_steps"] == 0 for r in rows2)


def test_freeze_vision_trains_the_language_model_only(setup):
    from safetensors.torch import load_file

    root, data, teacher = setup
    out = root / "ceed_frozen"
    model = distill(
        DistillConfig(
            data=(str(data),),
            teacher=str(teacher),
            out_dir=str(out),
            steps=3,
            batch_size=8,
            lr=2e-3,
            warmup_steps=1,
            log_every=1,
            eval_every=0,
            inits=("warm",),
            freeze_vision=True,
        )
    )
    before, after = load_file(teacher / "model.safetensors"), load_file(model / "model.safetensors")
    vision = [k for k in before if "vision_tower" in k or "multi_modal_projector" in k]
    language = [k for k in before if "language_model" in k and "layers" in k]
    assert vision and language
    for k in vision:
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)
    assert any(not torch.equal(after[k], before[k]) for k in language)


def test_distill_bad_input(setup, tmp_path):
    _, data, teacher = setup
    with pytest.raises(TrajectoryError, match="does not exist"):
        distill(
            DistillConfig(
                data=(str(data),),
                out_dir=str(tmp_path / "o"),
                teacher=str(teacher),
                trajectories=str(tmp_path / "nope"),
            )
        )
    from ee_vla.models.vla import ModelLoadError

    with pytest.raises(ModelLoadError, match="not an ee_vla model"):
        distill(DistillConfig(data=(str(data),), out_dir=str(tmp_path / "o"), teacher=str(tmp_path)))


def test_distill_refuses_the_teacher_directory_as_out_dir(setup):
    """--out-dir pointed at a model directory (here the teacher's) is refused before anything is
    written into it, also when only collecting trajectories."""
    _, data, teacher = setup
    before = sorted(p.name for p in teacher.iterdir())
    config = (teacher / "config.json").read_text()
    for collect_only in (False, True):
        with pytest.raises(FileExistsError, match=rf"{teacher} is not empty and holds no training run"):
            distill(
                DistillConfig(data=(str(data),), out_dir=str(teacher), teacher=str(teacher), collect_only=collect_only)
            )
    assert sorted(p.name for p in teacher.iterdir()) == before
    assert (teacher / "config.json").read_text() == config


def test_resume_as_the_other_kind_of_run_is_refused(tmp_path):
    from ee_vla.training.run_dir import ResumeConfigError, check_resume_config

    cfg = DistillConfig(data=("d.hdf5",), out_dir=str(tmp_path), teacher="t", resume=True)
    with pytest.raises(ResumeConfigError, match="as a distill run: it is a checkpoint of a bc run"):
        check_resume_config(cfg.to_dict(), "bc", cfg, "distill", tmp_path / "step_0000001")
    saved = {**cfg.to_dict(), "teacher": "other"}
    with pytest.raises(ResumeConfigError, match="different teacher"):
        check_resume_config(
            saved, "distill", DistillConfig(**{**cfg.to_dict(), "allow_config_change": True}), "distill", tmp_path
        )
    saved = {**cfg.to_dict(), "mixed_label_threshold": 0.2, "steps": 5}
    with pytest.raises(ResumeConfigError, match=r"mixed_label_threshold: 0\.2 -> 0\.1"):
        check_resume_config(saved, "distill", cfg, "distill", tmp_path)


def _openvla_run(openvla_dir, data, out, **overrides) -> dict:
    """DistillConfig fields of a few-step run on the conformance OpenVLA teacher."""
    return dict(
        data=(str(data),),
        teacher=str(openvla_dir),
        unnorm_key="bridge_orig",
        out_dir=str(out),
        batch_size=4,
        warmup_steps=1,
        log_every=1,
        eval_every=0,
        inits=("prompt",),
        collect_batch_size=4,
        **overrides,
    )


def test_distill_an_openvla_teacher_into_a_chunked_openvla_student(openvla_dir, write_demo, tmp_path):
    """The conformance OpenVLA checkpoint as the teacher, the demonstrations' actions tokenised with
    one dataset's statistics, a student that emits chunks of 2 actions: a few steps run, and the
    student is written in OpenVLA's layout, loadable with its chunk size."""
    from ee_vla.models import ModelLoadError, load_vla
    from ee_vla.models.openvla import is_openvla_dir

    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=5)
    cfg = _openvla_run(openvla_dir, data, tmp_path / "ceed", chunk_size=2, steps=3, lr=1e-3, save_every=100)
    model = distill(DistillConfig(**cfg))
    assert is_openvla_dir(model)
    student = load_vla(model, unnorm_key="bridge_orig")
    assert student.chunk_size == 2 and student.unnorm_key == "bridge_orig"
    with pytest.raises(ModelLoadError, match="unnorm_key"):
        distill(DistillConfig(data=(str(data),), teacher=str(openvla_dir), out_dir=str(tmp_path / "x"), steps=1))


def test_lora_distillation_trains_adapters_only_and_saves_plain_weights(openvla_dir, write_demo, tmp_path):
    """lora_rank 4 on the OpenVLA teacher: only the language model's projections change (through
    their adapters), the vision towers and embeddings keep the teacher's values, and the saved
    student is a plain OpenVLA checkpoint; a LoRA run refuses to resume."""
    pytest.importorskip("peft")
    from ee_vla.models import load_vla

    data = write_demo(tmp_path / "demos.hdf5", n_episodes=2, steps=5)
    base = _openvla_run(openvla_dir, data, tmp_path / "lora", lr=1e-2, save_every=2, lora_rank=4)
    model = distill(DistillConfig(steps=3, **base))
    teacher = load_vla(openvla_dir, unnorm_key="bridge_orig").model.state_dict()
    student = load_vla(model, unnorm_key="bridge_orig").model.state_dict()
    changed = {k for k, v in student.items() if not torch.equal(v, teacher[k])}
    assert changed and all(k.endswith("_proj.weight") and "language_model" in k for k in changed), sorted(changed)[:5]
    assert not any("lora" in k for k in student)
    with pytest.raises(ValueError, match="cannot resume"):
        distill(DistillConfig(steps=4, resume=True, **base))
