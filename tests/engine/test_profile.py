"""The engine profiler runs end to end on the tiny shape (CPU) and builds real shapes without
allocating them on the CPU."""

import json

import pytest
import torch

from ee_vla.benchmarks.profile import ProfileConfig, config_from_args, main, run_profile, summarize_files
from ee_vla.benchmarks.shapes import LM_SHAPES, build_workload
from ee_vla.models.fusion import fuse_projections
from ee_vla.models.vla import VLA
from ee_vla.runtime import RuntimeConfig


def test_profile_smoke_on_the_tiny_shape(tmp_path, capsys):
    cfg = ProfileConfig(
        shape="tiny",
        runtime=RuntimeConfig(dtype="float64", device="cpu", chunk_size=1),
        calls=2,
        warmup=1,
        step_iters=3,
        step_widths=(1, 5),
        batch_size=2,
        out=tmp_path,
    )
    out = run_profile(cfg)
    saved = json.loads((tmp_path / "profile_tiny_b2.json").read_text())
    assert (tmp_path / "profile_tiny_b2.png").is_file()
    assert set(saved["results"]) == {"eager", "static"} and set(saved["raw"]["static"]) == {
        "prefill_ms",
        "step_w1_ms",
        "step_w5_ms",
    }
    ar, ceed = out["results"]["eager"]["ar"], out["results"]["static"]["ceed"]
    assert ar["speedup_vs_eager_ar"] == 1.0 and ar["iterations_per_chunk"] == 6  # 1 action: 7 tokens
    assert ceed["iterations_per_chunk"] == 2 and ceed["decoder"]["max_iterations"] == 2
    for per in out["results"].values():
        for r in per.values():
            assert r["call_ms"]["n"] == 2 and r["actions_per_s"] == pytest.approx(r["tokens_per_s"] / 7)
            assert r["token_agreement_vs_eager"] == 1.0  # float64: the static engine is exact
    assert out["hf_generate"]["call_ms"]["n"] == 2 and out["model"]["vision_in_prefill"]
    assert out["vision_ms"]["p50"] > 0 and out["vision_ms"]["n"] >= 3  # the vision tower alone, timed
    assert saved["environment"]["device"] == "cpu" and out["targets"] == {} and out["errors"] == {}
    assert "vs eager AR" in capsys.readouterr().out
    assert main(["summarize", str(tmp_path / "profile_tiny_b2.json")]) == 0
    assert "static" in capsys.readouterr().out


def test_the_7b_shape_is_built_without_allocating_it():
    """On the meta device nothing is allocated: the same code path creates the weights directly on
    the GPU in bf16 (never on the CPU first)."""
    wl = build_workload("openvla-7b", "meta", torch.bfloat16)
    params = list(wl.model.parameters())
    assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {torch.bfloat16}
    assert 6.7e9 < sum(p.numel() for p in params) < 6.8e9
    assert wl.inputs["input_ids"].shape == (1, 276) and wl.n_tokens == 21
    assert wl.action_range == (32064 - 256, 32063) and not wl.vision_in_prefill
    assert LM_SHAPES["qwen2-0.5b"].num_kv_heads == 2
    assert wl.model.config._attn_implementation == "sdpa"
    flex = build_workload("openvla-7b", "meta", torch.bfloat16, attn_implementation="flex_attention")
    assert flex.model.config._attn_implementation == "flex_attention"
    split = build_workload("openvla-7b", "meta", torch.bfloat16, attn_implementation="ee_splitkv")
    from transformers import AttentionInterface

    assert split.model.config._attn_implementation == "ee_splitkv" and "ee_splitkv" in AttentionInterface()
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        build_workload("openvla-7b", "meta", torch.bfloat16, attn_implementation="paged")
    with pytest.raises(ValueError, match="LM shapes only"):
        build_workload("tiny", attn_implementation="eager")


def test_config_validation_and_cli_parsing(tmp_path, monkeypatch):
    # the checks of a CUDA profile, also where there is no GPU (a device the machine lacks is refused
    # at once otherwise: test_a_cuda_profile_without_cuda_is_refused)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="shape"):
        ProfileConfig(shape="gpt-5")
    with pytest.raises(ValueError, match="engines"):
        ProfileConfig(engines=("turbo",))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ProfileConfig(engines=("eager", "graph"), runtime=RuntimeConfig(device="cpu"))
    with pytest.raises(ValueError, match="calls"):
        ProfileConfig(calls=0)
    with pytest.raises(ValueError, match="compile_mode"):
        ProfileConfig(runtime=RuntimeConfig(compile_mode="fastest"))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ProfileConfig(inductor=("freezing",))
    with pytest.raises(ValueError, match="no setting 'triton.no_such_knob'"):
        ProfileConfig(inductor=("triton.no_such_knob=1",))
    with pytest.raises(ValueError, match="nothing to time"):
        ProfileConfig(decoders=(), step_widths=())
    with pytest.raises(ValueError, match="steps_only times CUDA-graph replays"):
        ProfileConfig(steps_only=True, runtime=RuntimeConfig(device="cpu"))
    with pytest.raises(ValueError, match="steps_only needs step_widths"):
        ProfileConfig(steps_only=True, step_widths=(), runtime=RuntimeConfig(device="cuda"))
    with pytest.raises(ValueError, match=r"graph and compiled engines only, got \['eager', 'graph'\]"):
        ProfileConfig(steps_only=True, engines=("eager", "graph"), runtime=RuntimeConfig(device="cuda"))
    assert config_from_args(["--steps-only", "--device", "cuda", "--engines", "compiled"]).steps_only
    assert ProfileConfig(inductor=("freezing=True", "triton.cudagraphs=False")).inductor_settings == {
        "freezing": True,
        "triton.cudagraphs": False,
    }
    cfg = config_from_args(
        [
            "--shape",
            "openvla-7b",
            "--device",
            "cuda",
            "--dtype",
            "bfloat16",
            "--engines",
            "graph",
            "--decoders",
            "ceed",
            "--no-generate",
            "--inductor",
            "coordinate_descent_tuning=True",
            "--sdpa-backends",
            "math",
            "efficient",
            "--out",
            str(tmp_path),
        ]
    )
    assert cfg.engine_list == ("graph",) and cfg.decoders == ("ceed",) and not cfg.generate
    assert cfg.inductor_settings == {"coordinate_descent_tuning": True}
    assert cfg.sdpa_backends == ("math", "efficient") and config_from_args([]).sdpa_backends is None
    with pytest.raises(ValueError, match="sdpa_backends"):
        ProfileConfig(sdpa_backends=("fast",))
    with pytest.raises(ValueError, match="attn_implementation"):
        ProfileConfig(attn_implementation="paged")
    assert config_from_args(["--attn-implementation", "flex_attention"]).attn_implementation == "flex_attention"
    assert ProfileConfig(runtime=RuntimeConfig(device="cuda")).engine_list == ("eager", "graph", "compiled")
    assert ProfileConfig(runtime=RuntimeConfig(device="cpu")).engine_list == ("eager", "static")


def test_raw_steps_only_under_an_inductor_setting(tmp_path):
    """No decoders: only the asked widths are built and timed; the Inductor settings hold for the
    run and are restored after it."""
    import torch._inductor.config as inductor_config

    cfg = ProfileConfig(
        shape="tiny",
        engines=("static",),
        decoders=(),
        step_widths=(3,),
        step_iters=3,
        warmup=0,
        generate=False,
        plots=False,
        inductor=("coordinate_descent_tuning=True",),
        sdpa_backends=("math",),
        out=tmp_path,
    )
    before = inductor_config.coordinate_descent_tuning
    out = run_profile(cfg)
    assert out["config"]["sdpa_backends"] == ("math",)
    assert "(sdpa math)" in summarize_files([tmp_path / f"{cfg.stem}.json"])
    assert inductor_config.coordinate_descent_tuning == before
    assert out["model"]["engine_widths"] == [3] and out["results"] == {"static": {}}
    assert set(out["raw"]["static"]) == {"prefill_ms", "step_w3_ms"}
    assert tuple(out["config"]["inductor"]) == ("coordinate_descent_tuning=True",)
    # a steps_only run (CUDA graphs) records replays and no prefill: its summary line says so
    saved = json.loads((tmp_path / f"{cfg.stem}.json").read_text())
    saved["raw"]["static"] = {"replay_w3_ms": 1.25}
    (tmp_path / "steps_only.json").write_text(json.dumps(saved))
    assert "raw ms: replay w3 1.25" in summarize_files([tmp_path / "steps_only.json"])


def test_kernel_tables_say_where_a_step_spends_its_time(tmp_path, capsys):
    """`--kernels N`: each width's forward is recorded under torch.profiler; the N costliest
    operators (CPU) per forward are kept, their shares add up to at most 1, and the matmuls are
    among them at both widths. (Which width spends more is a timing, which a shared CPU cannot
    promise: a 2-core run once recorded 0.74 ms of matmuls at width 64 against 2.36 at width 1.)"""
    cfg = config_from_args(
        ["--shape", "tiny", "--engines", "static", "--decoders", "--step-widths", "1", "64", "--step-iters", "2"]
        + ["--warmup", "0", "--no-generate", "--no-plots", "--kernels", "5", "--kernel-iters", "3"]
        + ["--out", str(tmp_path), "--device", "cpu"]  # CPU operator names, also on a GPU machine
    )
    assert cfg.kernels == 5 and cfg.kernel_iters == 3
    out = run_profile(cfg)
    raw = out["raw"]["static"]
    assert set(raw) == {"prefill_ms", "step_w1_ms", "step_w64_ms", "kernels_w1", "kernels_w64"}
    k1, k64 = raw["kernels_w1"], raw["kernels_w64"]
    for k in (k1, k64):
        assert k["device"] == "cpu" and k["iters"] == 3 and len(k["top"]) == 5 and k["n_kernels"] >= 5
        assert k["launches"] >= k["n_kernels"]  # every name runs at least once per forward
        assert 0 < sum(r["share"] for r in k["top"]) <= 1 + 1e-9
        assert [r["ms"] for r in k["top"]] == sorted((r["ms"] for r in k["top"]), reverse=True)
        assert all(r["calls"] > 0 for r in k["top"])
    mm = lambda k: sum(r["ms"] for r in k["top"] if "mm" in r["name"] or "linear" in r["name"])  # noqa: E731
    assert mm(k64) > 0 and mm(k1) > 0
    text = (tmp_path / "profile_tiny.json").parent.joinpath("profile_tiny_kernels.txt").read_text()
    assert "static step w64: " in text and "operators (self CPU time)" in text and " runs), " in text
    assert " ms per forward (measured p50 " in text
    assert "static step w1: " in capsys.readouterr().out
    with pytest.raises(ValueError, match="kernels must be >= 0"):
        ProfileConfig(kernels=-1)


def test_action_logits_reach_the_engines_and_keep_the_tokens(tmp_path):
    """`--action-logits`: the static engine's decode steps compute only the action rows; the tokens
    still agree with eager (same action range, float64) and the summary says which mode ran."""
    cfg = config_from_args(
        ["--shape", "tiny", "--dtype", "float64", "--engines", "eager", "static", "--decoders", "ar", "ceed"]
        + ["--calls", "2", "--step-widths", "3", "--step-iters", "2", "--warmup", "0", "--no-generate"]
        + ["--no-plots", "--action-logits", "--out", str(tmp_path)]
    )
    assert cfg.action_logits and not config_from_args([]).action_logits
    out = run_profile(cfg)
    assert all(r["token_agreement_vs_eager"] == 1.0 for r in out["results"]["static"].values())
    assert "action logits only" in summarize_files([tmp_path / f"{cfg.stem}.json"])


def test_the_measuring_tools_live_beside_the_engine():
    """`ee_vla.engine` holds the engine only; the profiler, shapes, checks and benches are
    `ee_vla.benchmarks` (`ee-vla bench` included)."""
    import pkgutil

    import ee_vla.benchmarks
    import ee_vla.engine
    from ee_vla.cli import SUBCOMMANDS

    assert {m.name for m in pkgutil.iter_modules(ee_vla.engine.__path__)} == {
        "attention",
        "cache",
        "factory",
        "modes",
        "prompts",
        "splitkv",
        "static",
    }
    tools = {m.name for m in pkgutil.iter_modules(ee_vla.benchmarks.__path__)}
    assert tools == {
        "ablation", "attn_bench", "check", "cubin", "decode_bench", "layer_bench", "linear_bench", "profile", "shapes",
        "splitk",
    }  # fmt: skip
    assert SUBCOMMANDS["bench"][0] == "ee_vla.benchmarks.decode_bench"


def test_quantize_reaches_every_engine_and_reports_what_it_changed(tmp_path):
    """`--quantize int8`: the model is quantised once, before the engines are built (both run the
    same int8 model, so their AR tokens agree), and the report says how many layers, the weight
    memory before and after, and how often the quantised model picks the original's token."""
    cfg = config_from_args(
        ["--shape", "tiny", "--engines", "eager", "static", "--decoders", "ar"]
        + ["--calls", "1", "--step-widths", "1", "--step-iters", "1", "--warmup", "0", "--no-generate"]
        + ["--no-plots", "--quantize", "int8", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert cfg.runtime.quantize == "int8" and config_from_args([]).runtime.quantize == "none"
    out = run_profile(cfg)
    q = out["model"]["quantize"]
    model = VLA.create("tiny").model
    fuse_projections(model)  # as quantize_weights does: q/k/v and gate/up become one layer each
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert q["mode"] == "int8" and q["layers"] == n_linear - 1  # the output layer is kept
    assert q["weights_gib_after"] < 0.8 * q["weights_gib_before"]
    assert 0.5 < q["teacher_forced_agreement"] <= 1.0
    assert out["config"]["quantize"] == "int8"
    assert out["results"]["static"]["ar"]["token_agreement_vs_eager"] == 1.0


def test_linear_bench_covers_every_linear_layer_of_a_shape():
    """The linear-layer bench reads every weight of the shape's linear layers once per step (the
    7B's 6.5 G parameters, grouped KV heads too), and refuses to run without a GPU."""
    from ee_vla.benchmarks.linear_bench import linear_shapes, main, weight_bytes

    llama = LM_SHAPES["openvla-7b"]
    assert linear_shapes(llama) == {"q_k_v_o": (4096, 4096, 4), "gate_up": (4096, 11008, 2), "down": (11008, 4096, 1)}
    assert (
        weight_bytes(llama, "bf16") == 2 * weight_bytes(llama, "fp8_row") == 2 * 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    )
    qwen = LM_SHAPES["qwen2-0.5b"]
    assert linear_shapes(qwen)["k_v"] == (896, 2 * 64, 2)
    # stacked as the engine runs them: the same weights, in four products per layer
    assert linear_shapes(llama, stacked=True) == {
        "qkv": (4096, 3 * 4096, 1),
        "o": (4096, 4096, 1),
        "gate_up": (4096, 2 * 11008, 1),
        "down": (11008, 4096, 1),
    }
    assert linear_shapes(qwen, stacked=True)["qkv"] == (896, 896 + 2 * 128, 1)
    for shape in (llama, qwen):
        params = [sum(k * n * per for k, n, per in linear_shapes(shape, s).values()) for s in (False, True)]
        assert params[0] == params[1]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--rows", "1"])


def test_linear_bench_splitk_kind_and_sweep_report():
    """The split-K candidate reads bf16 weights; each sweep line gives cuBLAS's and the fastest
    plan's time with their share of the read speed, or says that no plan ran."""
    from ee_vla.benchmarks.linear_bench import DEFAULT_KINDS, KINDS, _sweep_lines, weight_bytes

    llama = LM_SHAPES["openvla-7b"]
    assert "splitk" in KINDS and "splitk" not in DEFAULT_KINDS  # timed when named
    assert weight_bytes(llama, "splitk") == weight_bytes(llama, "bf16")
    plan = {"block_n": 64, "block_k": 256, "split_k": 2, "stages": 3, "warps": 4, "us": 16.0}
    sweep = {
        "o": {"in": 4096, "out": 4096, "cublas_us": 12.0, "plans": [plan]},
        "down": {"in": 11008, "out": 4096, "cublas_us": 30.0, "plans": []},
    }
    lines = _sweep_lines(sweep, 22, read=4.0)
    # 33.5 MB in 12 us is 2.80 TB/s, 70% of 4 TB/s; in 16 us, 52%
    assert lines[0].split() == "22 o cuBLAS 12.00 us 70% split-K 16.00 us 52% plan 64 256 2 3".split()
    assert lines[1].endswith("split-K: no plan ran")


def test_calibrate_fixes_activation_scales_and_reports_their_range(tmp_path, monkeypatch):
    """`--quantize fp8_tensor --calibrate`: one calibration forward fixes every quantised layer's
    activation scale, and the report gives the range of the amax they were fixed at. fp8 needs a
    GPU; torchao's float8 tensors also compute on the CPU, so the device check is lifted here."""
    from ee_vla.models import quantize

    with pytest.raises(ValueError, match="calibrate needs quantize fp8_tensor, got 'int8'"):
        config_from_args(["--quantize", "int8", "--calibrate", "--device", "cpu"])
    with pytest.raises(SystemExit, match="profile: ProfileConfig.calibrate needs quantize fp8_tensor, got 'int8'"):
        main(["--quantize", "int8", "--calibrate", "--device", "cpu"])  # the command line: the message, no traceback
    with pytest.raises(SystemExit, match="ProfileConfig.left_pad must be >= 0, got -1"):
        main(["--left-pad", "-1", "--device", "cpu"])
    monkeypatch.setattr(quantize, "_config", lambda mode, device: None)
    cfg = config_from_args(
        ["--shape", "tiny", "--engines", "eager", "--decoders", "ar", "--calls", "1", "--step-widths", "1"]
        + ["--step-iters", "1", "--warmup", "0", "--no-generate", "--no-plots", "--device", "cpu"]
        + ["--quantize", "fp8_tensor", "--calibrate", "--out", str(tmp_path)]
    )
    out = run_profile(cfg)
    q = out["model"]["quantize"]
    assert out["errors"] == {} and q["calibrated"] is True and out["config"]["calibrate"] is True
    assert (
        q["layers"] > 0
        and 0 < q["activation_amax"]["min"] <= q["activation_amax"]["median"] <= q["activation_amax"]["max"]
    )
    assert 0.5 < q["teacher_forced_agreement"] <= 1.0


@pytest.mark.parametrize(
    "layer, flags", [("transformers", (False, False)), ("fused", (True, True)), ("fused_torch_merge", (True, False))]
)
def test_attn_layer_sets_the_engines_attention_layers_for_the_run(tmp_path, monkeypatch, layer, flags):
    """`--attn-layer`: `ee_vla.engine.attention`'s switches hold what it names while the engines
    are built and timed, and are back to their defaults after the run (the fused kernel itself
    is tested in tests/engine/test_splitkv.py, through the static engine)."""
    from ee_vla.benchmarks.profile import timing
    from ee_vla.engine import attention

    seen = []
    real = timing._run_engines
    monkeypatch.setattr(
        timing, "_run_engines", lambda *a: seen.append((attention.FUSED, attention.MERGE_IN_KERNEL)) or real(*a)
    )
    cfg = config_from_args(
        ["--shape", "tiny", "--engines", "static", "--decoders", "--step-widths", "2", "--step-iters", "1"]
        + ["--warmup", "0", "--no-generate", "--no-plots", "--attn-layer", layer, "--out", str(tmp_path)]
    )
    out = run_profile(cfg)
    assert seen == [flags] and out["config"]["attn_layer"] == layer
    assert (attention.FUSED, attention.MERGE_IN_KERNEL) == (True, True)  # the defaults, restored
    assert config_from_args([]).attn_layer == "fused"
    with pytest.raises(ValueError, match="attn_layer must be transformers|fused|fused_torch_merge"):
        ProfileConfig(attn_layer="flash")


def test_a_cuda_profile_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available on this machine"):
        ProfileConfig(runtime=RuntimeConfig(device="cuda"))
