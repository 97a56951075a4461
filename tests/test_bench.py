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
