import json
from pathlib import Path

import pytest

from ee_vla.benchmarks.decode_bench import DecodeBenchConfig, run_bench
from ee_vla.models import ModelLoadError
from ee_vla.runtime import RuntimeConfig


def test_bench_reports_every_decoder_and_a_speedup_vs_ar(tiny_vla_dir, tmp_path, capsys):
    cfg = DecodeBenchConfig(model=str(tiny_vla_dir), calls=2, warmup=1, batch_size=2, out=tmp_path)
    out = run_bench(cfg)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved["results"]) == {"ar", "jacobi", "ceed"} and (tmp_path / "bench.png").is_file()
    ar = out["results"]["ar"]
    assert ar["speedup_vs_ar"] == 1.0 and ar["iterations_per_chunk"] == 20 and ar["forward_passes_per_chunk"] == 21
    for r in out["results"].values():
        assert r["call_ms"]["n"] == 2 and r["tokens_per_s"] > 0 and r["iteration_ms"]["p50"] > 0
        assert r["other_ms"]["n"] == 2 and 0 <= r["other_ms"]["p50"] < r["call_ms"]["p50"]
        assert r["inputs_ms"]["n"] == 2 and 0 < r["inputs_ms"]["p50"] < r["call_ms"]["p50"]
        assert r["actions_per_s"] == pytest.approx(r["tokens_per_s"] / 7)
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["versions"]["torch"]
    assert "vs ar" in capsys.readouterr().out


def test_bench_compares_variants_of_a_preset_in_one_run(tiny_vla_dir, tmp_path):
    """`PRESET:field=value:...` decoders: each variant runs with its own options over the runtime's."""
    specs = ("ceed_cap", "ceed_cap:max_iterations=1", "ceed_cap:max_iterations=1:guess_in_prefill=true")
    cfg = DecodeBenchConfig(
        model=str(tiny_vla_dir), decoders=("ar", *specs), calls=3, warmup=0, out=tmp_path, plots=False
    )
    res = run_bench(cfg)["results"]
    assert list(res) == ["ar", *specs]
    assert [res[s]["decoder"]["max_iterations"] for s in specs] == [2, 1, 1]
    assert [res[s]["decoder"]["guess_in_prefill"] for s in specs] == [False, False, True]
    assert all(res[s]["iterations_per_chunk"] <= res[s]["decoder"]["max_iterations"] for s in specs)


def test_bench_rejects_unknown_models_and_decoders(tmp_path):
    with pytest.raises(ValueError, match="unknown decoder"):
        DecodeBenchConfig(decoders=("ar", "beam"))
    with pytest.raises(ValueError, match="unknown decoder 'beam'"):
        DecodeBenchConfig(decoders=("beam:tau=1",))
    with pytest.raises(ValueError, match="field=value with a field from"):
        DecodeBenchConfig(decoders=("ceed:speed=11",))
    with pytest.raises(ValueError, match="tau: invalid literal"):
        DecodeBenchConfig(decoders=("ceed:tau=x",))
    with pytest.raises(ValueError, match="guess_in_prefill: expected true or false"):
        DecodeBenchConfig(decoders=("ceed:guess_in_prefill=maybe",))
    with pytest.raises(ValueError, match="decoder 'jacobi:tau=2': .*early-exit options"):
        DecodeBenchConfig(decoders=("jacobi:tau=2",))
    with pytest.raises(ModelLoadError, match="DecodeBenchConfig.model: .*missing is not a directory"):
        run_bench(DecodeBenchConfig(model=str(tmp_path / "missing"), calls=1, out=tmp_path))
    with pytest.raises(ValueError, match="neither a directory nor a preset"):
        run_bench(DecodeBenchConfig(model="huge", calls=1, out=tmp_path))


def test_bench_of_a_random_openvla_with_the_generate_baseline(tmp_path):
    """`--model openvla-tiny` (OpenVLA's network at toy sizes, both vision towers) with a Llama-2
    tokenizer, `hf_generate` beside the decoders, ratios to both in one run."""
    tok = Path(__file__).parent / "fixtures" / "openvla" / "openvla-tiny-dinosiglip-224px"
    cfg = DecodeBenchConfig(
        model="openvla-tiny",
        tokenizer=tok,
        decoders=("hf_generate", "ar", "ceed"),
        calls=2,
        warmup=1,
        out=tmp_path,
        plots=False,
        runtime=RuntimeConfig(device="cpu", chunk_size=2),
    )
    out = run_bench(cfg)
    assert out["model"]["tokens_per_chunk"] == 14 and out["model"]["meta"]["format"] == "openvla"
    res = out["results"]
    assert set(res) == {"hf_generate", "ar", "ceed"} and res["hf_generate"]["speedup_vs_hf_generate"] == 1.0
    assert res["ar"]["speedup_vs_hf_generate"] > 0 and res["ar"]["forward_passes_per_chunk"] == 14
    with pytest.raises(ValueError, match="--tokenizer"):
        DecodeBenchConfig(model="openvla-7b").check_inputs()


CAMERAS = ("pixels", "wrist_pixels")


def test_bench_of_a_two_camera_model_gives_it_an_image_of_each_camera(tmp_path, monkeypatch):
    """A saved two-camera policy and a random preset built with `cameras`: every call's inputs hold
    an image per camera per observation and twice the image tokens; bench.json records the cameras."""
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.vla import VLA

    seen = []
    real = VLA.build_inputs

    def spy(self, pixels, instructions, *args, **kwargs):
        out = real(self, pixels, instructions, *args, **kwargs)
        images = int((out["input_ids"][0] == self.image_token_id).sum())
        seen.append((len(self.cameras), len(instructions), out["pixel_values"].shape[0], images))
        return out

    monkeypatch.setattr(VLA, "build_inputs", spy)
    model = create_random_vla_dir(tmp_path / "m", cameras=CAMERAS)
    kw = dict(decoders=("ar", "hf_generate"), calls=1, warmup=0, batch_size=2, plots=False)
    two = run_bench(DecodeBenchConfig(model=str(model), out=tmp_path / "two", **kw))
    one = run_bench(DecodeBenchConfig(model="tiny", out=tmp_path / "one", **kw))
    preset = run_bench(DecodeBenchConfig(model="tiny", cameras=CAMERAS, out=tmp_path / "preset", **kw))
    assert two["model"]["cameras"] == preset["model"]["cameras"] == list(CAMERAS) and one["model"]["cameras"] == [
        "pixels"
    ]
    assert json.loads((tmp_path / "two" / "bench.json").read_text())["model"]["cameras"] == list(CAMERAS)
    n = one["model"]["prompt_image_tokens"]
    assert two["model"]["prompt_image_tokens"] == preset["model"]["prompt_image_tokens"] == 2 * n
    assert {s for s in seen if s[0] == 2} == {(2, 2, 4, 2 * n)} and {s for s in seen if s[0] == 1} == {(1, 2, 2, n)}
    assert len(seen) == 6  # each run: one AR call, one generate call
    for r in (*two["results"].values(), *preset["results"].values()):
        assert r["call_ms"]["n"] == 1


def test_bench_cameras_are_for_random_presets_only(tiny_vla_dir, tmp_path):
    with pytest.raises(ValueError, match="DecodeBenchConfig.cameras: .* is a saved policy, which reads its own"):
        run_bench(DecodeBenchConfig(model=str(tiny_vla_dir), cameras=CAMERAS, calls=1, out=tmp_path))
    with pytest.raises(ValueError, match="DecodeBenchConfig.cameras names a camera twice"):
        DecodeBenchConfig(cameras=("pixels", "pixels"))
    with pytest.raises(ValueError, match="--model openvla-tiny reads one camera"):
        DecodeBenchConfig(model="openvla-tiny", cameras=CAMERAS).check_inputs()


def test_profile_and_exactness_check_of_a_two_camera_vla(tmp_path):
    """The profiler's and the engine check's random VLA read every camera asked for: twice the image
    tokens in the prefix, and the static engine stays exact (float64) with two cameras."""
    import torch

    from ee_vla.benchmarks.check import TWO_CAMERAS, vla_case
    from ee_vla.benchmarks.profile import ProfileConfig, config_from_args, run_profile
    from ee_vla.benchmarks.shapes import build_workload

    one, two = build_workload("tiny"), build_workload("tiny", cameras=CAMERAS)
    assert two.info["cameras"] == list(CAMERAS) and one.info["cameras"] == ["pixels"]
    n_img = two.model.config.image_seq_length
    assert two.info["prefix_len"] == one.info["prefix_len"] + n_img
    assert two.inputs["pixel_values"].shape[0] == 2 * one.inputs["pixel_values"].shape[0]
    with pytest.raises(ValueError, match="cameras applies to the VLA shapes only"):
        build_workload("openvla-7b", "meta", torch.bfloat16, cameras=CAMERAS)
    with pytest.raises(ValueError, match="ProfileConfig.cameras applies to the VLA shapes"):
        ProfileConfig(shape="qwen2-0.5b", cameras=CAMERAS)
    assert config_from_args(["--shape", "tiny", "--cameras", *CAMERAS]).cameras == CAMERAS
    cfg = ProfileConfig(
        shape="tiny",
        cameras=CAMERAS,
        runtime=RuntimeConfig(dtype="float64", device="cpu", chunk_size=1),
        engines=("eager", "static"),
        decoders=("ar", "jacobi"),
        generate=False,
        calls=1,
        warmup=0,
        step_iters=3,
        step_widths=(1,),
        out=tmp_path,
        plots=False,
    )
    out = run_profile(cfg)
    saved = json.loads((tmp_path / "profile_tiny_2cameras.json").read_text())
    assert saved["model"]["cameras"] == list(CAMERAS) and saved["model"]["prefix_len"] == two.info["prefix_len"]
    assert out["errors"] == {} and all(r["token_agreement_vs_eager"] == 1.0 for r in out["results"]["static"].values())
    case = vla_case("tiny", "cpu", "static", torch.float64, batch=2, cameras=TWO_CAMERAS)
    assert case["model"] == "vla-tiny-2cameras" and case["cameras"] == list(TWO_CAMERAS)
    assert all(r["match"] for r in case["results"].values()), case["results"]
