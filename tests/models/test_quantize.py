"""Weight quantisation at load (`ee_vla.models.quantize`, `RuntimeConfig.quantize`), on the CPU."""

import json
import re
import sys

import numpy as np
import pytest
import torch

from ee_vla.benchmarks.check import TINY_VOCAB, tiny_lm
from ee_vla.models.fusion import fuse_projections
from ee_vla.models.quantize import QuantizeError, quantize_weights, quantized_mode
from ee_vla.models.vla import VLA
from ee_vla.policy import PolicyConfig, VLAPolicy
from ee_vla.runtime import RuntimeConfig, RuntimeConfigError


def _batch(n: int = 2, size: int = 64) -> dict:
    rng = np.random.default_rng(3)
    return {
        "pixels": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        "instruction": ["pick up the red cube", "push the blue block to the goal"][:n],
    }


def _linears(model) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_int8_converts_every_linear_layer_but_the_output_layer(tiny_vla_dir):
    vla = VLA.from_pretrained(tiny_vla_dir)
    fuse_projections(vla.model)  # as quantize_weights does first
    before = {name: m.weight.detach().clone() for name, m in _linears(vla.model).items()}
    head = vla.model.get_output_embeddings()
    n = quantize_weights(vla.model, "int8")
    assert n == len(before) - 1 and quantized_mode(vla.model) == "int8"
    for name, m in _linears(vla.model).items():
        if m is head:
            assert type(m.weight) is torch.nn.Parameter and torch.equal(m.weight, before[name])
        else:
            assert type(m.weight.data) is not torch.Tensor, f"{name} was not quantised"
            # int8 with a scale per output channel: within half a step of the largest weight of its row
            w = m.weight.dequantize().float()
            step = before[name].abs().amax(dim=1, keepdim=True) / 127
            assert torch.all((w - before[name]).abs() <= step * 0.51 + 1e-6), name
    assert quantize_weights(vla.model, "int8") == 0  # the same mode again changes nothing
    with pytest.raises(QuantizeError, match="already quantised with 'int8'"):
        quantize_weights(vla.model, "fp8")


def test_greedy_jacobi_equals_ar_on_the_quantised_model(tiny_vla_dir):
    """Exactness holds with respect to the model that runs: the int8 one, batch of 2."""
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", device="cpu", quantize="int8")
    assert quantized_mode(policy.vla.model) == "int8"
    obs = _batch()
    ar = policy.predict_action_chunk(obs)
    policy.decoder = "jacobi"
    policy.reset()
    assert np.array_equal(policy.predict_action_chunk(obs), ar)
    assert ar.shape == (2, policy.chunk_size, policy.action_dim) and np.isfinite(ar).all()


def test_the_static_engine_runs_the_quantised_model(tiny_vla_dir):
    eager = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", device="cpu", quantize="int8")
    static = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", device="cpu", quantize="int8", engine="static")
    obs = _batch()
    assert np.array_equal(static.predict_action_chunk(obs), eager.predict_action_chunk(obs))


def test_the_runtime_config_carries_quantize_to_the_policy(tiny_vla_dir):
    rt = RuntimeConfig(decoder="ar", device="cpu", quantize="int8")
    assert rt.policy_config().quantize == "int8"
    assert quantized_mode(rt.load_policy(tiny_vla_dir).vla.model) == "int8"
    assert quantized_mode(RuntimeConfig(device="cpu").load_policy(tiny_vla_dir).vla.model) == "none"
    with pytest.raises(
        RuntimeConfigError, match=re.escape("quantize must be one of none|int8|fp8|fp8_tensor, got 'int4'")
    ):
        RuntimeConfig(quantize="int4")
    with pytest.raises(ValueError, match="PolicyConfig.quantize"):
        PolicyConfig(quantize="int4")


@pytest.mark.parametrize("mode", ["fp8", "fp8_tensor"])
def test_fp8_on_a_cpu_is_refused_with_the_reason(tiny_vla_dir, mode):
    vla = VLA.from_pretrained(tiny_vla_dir)
    with pytest.raises(QuantizeError, match=f"quantize='{mode}' needs a CUDA GPU"):
        quantize_weights(vla.model, mode)
    assert quantized_mode(vla.model) == "none"


def test_fp8_modes_scale_per_row_or_per_tensor(monkeypatch):
    """fp8 asks torchao for one scale per row, fp8_tensor for one per tensor (on a GPU that has fp8)."""
    import torchao.quantization as tq

    from ee_vla.models import quantize

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a Hopper GPU")
    cuda = torch.device("cuda")
    # torchao keeps (activation, weight) granularities
    assert {type(g) for g in quantize._config("fp8", cuda).granularity} == {tq.PerRow}
    assert {type(g) for g in quantize._config("fp8_tensor", cuda).granularity} == {tq.PerTensor}
    assert all(
        quantize._config(m, cuda).activation_value_lb == quantize.ACTIVATION_AMAX_FLOOR for m in ("fp8", "fp8_tensor")
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(QuantizeError, match="'fp8_tensor' needs a GPU of compute capability >= 8.9"):
        quantize._config("fp8_tensor", cuda)


@pytest.mark.parametrize("granularity", ["PerRow", "PerTensor"])
def test_the_activation_floor_turns_zero_rows_into_zeros_not_nan(granularity):
    """An all-zero activation (a padding row, a graph warm-up's junk) gets a zero scale and turns
    into NaN under torchao's fp8 scaling; with the floor the fp8 modes set it stays zero and a real
    row is unchanged (the same float8 quantisation torchao runs on a GPU, here on the CPU)."""
    import torchao.quantization as tq
    from torchao.quantization import Float8Tensor

    from ee_vla.models.quantize import ACTIVATION_AMAX_FLOOR

    g = getattr(tq, granularity)()
    x = torch.zeros(4, 32, dtype=torch.bfloat16)
    if granularity == "PerRow":
        x[1] = torch.linspace(-2, 2, 32)
    bare = Float8Tensor.from_hp(x, granularity=g).dequantize()
    assert torch.isnan(bare).any()
    floored = Float8Tensor.from_hp(x, granularity=g, hp_value_lb=ACTIVATION_AMAX_FLOOR).dequantize()
    assert torch.isfinite(floored).all()
    torch.testing.assert_close(floored.float(), x.float(), atol=0.07, rtol=0.07)


def test_fp8_leaves_layers_it_cannot_hold_unquantised():
    from ee_vla.models.quantize import fp8_unfit

    assert fp8_unfit(torch.nn.Linear(32, 48)) is None
    assert fp8_unfit(torch.nn.Linear(30, 48)) == "dimensions not multiples of 16"
    zero_row = torch.nn.Linear(32, 48)
    with torch.no_grad():
        zero_row.weight[5] = 0
    assert fp8_unfit(zero_row) == "a weight row of zeros"


def test_without_torchao_the_error_says_what_to_install(tiny_vla_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    monkeypatch.setitem(sys.modules, "torchao", None)
    vla = VLA.from_pretrained(tiny_vla_dir)
    with pytest.raises(QuantizeError, match=r"pip install 'ee_vla\[quant\]'"):
        quantize_weights(vla.model, "int8")


def test_fp8_off_the_compiled_engine_is_flagged_as_slower():
    from ee_vla.models.quantize import engine_note

    for engine in ("auto", "eager", "static", "graph"):
        assert "engine='compiled'" in engine_note("fp8_tensor", engine)
        assert engine_note("fp8", engine) is not None
    assert engine_note("fp8_tensor", "compiled") is None
    assert engine_note("int8", "graph") is None and engine_note("none", "eager") is None


def _tiny_llama():
    """hidden 64, intermediate 64, 2 layers, grouped KV heads: dimensions fp8's kernels take."""
    return tiny_lm("llama", dtype=torch.bfloat16, head_dim=16)


@pytest.fixture
def fp8_on_the_cpu(monkeypatch):
    """fp8 needs a GPU; torchao's float8 tensors also compute on the CPU, so lift the device check."""
    from ee_vla.models import quantize

    monkeypatch.setattr(quantize, "_config", lambda mode, device: None)


def test_a_calibration_fixes_each_activation_scale_at_the_amax_it_recorded(fp8_on_the_cpu):
    """Static fp8 scales: the recorder keeps each layer's largest |input| (over several forwards),
    and quantize_weights turns it into that layer's fixed input scale, amax x headroom / 448, with float8
    per-tensor weights; the model still computes what it did, to fp8's precision; an input beyond
    the calibrated range saturates instead of overflowing."""
    from ee_vla.models.quantize import STATIC_HEADROOM, Calibrated, recording_activation_amax

    model = _tiny_llama()
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, TINY_VOCAB, (3, 12), generator=g) for _ in range(2)]
    with recording_activation_amax(model) as table, torch.inference_mode():  # fuses the projections
        ref = [model(x).logits.float() for x in calib]
    seen: dict[str, float] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, n=name: seen.__setitem__(n, max(seen.get(n, 0.0), float(args[0].abs().max())))
        )
        for name, m in _linears(model).items()
        if m is not head
    ]
    with torch.inference_mode():
        for x in calib:
            model(x)
    for h in hooks:
        h.remove()
    assert table.keys() == seen.keys() and len(table) == 2 * 4  # qkv, o, gate_up, down per layer
    assert all(table[n] == Calibrated(seen[n], 3) for n in seen)
    assert quantize_weights(model, "fp8_tensor", calibration=table) == 8
    for name, m in _linears(model).items():
        if m is head:
            assert type(m.weight) is torch.nn.Parameter
            continue
        assert m.weight.qdata.dtype == torch.float8_e4m3fn and m.weight.scale.numel() == 1, name
        assert m.weight.act_quant_scale.shape == (1, 1, 1)
        assert float(m.weight.act_quant_scale) == pytest.approx(seen[name] * STATIC_HEADROOM / 448, rel=1e-6), name
    with torch.inference_mode():
        for x, r in zip(calib, ref, strict=True):
            assert (model(x).logits.float() - r).abs().max() < 0.1 * r.abs().max()
        big = model.model.layers[0].mlp.down_proj(torch.full((1, 2, 64), 1e4, dtype=torch.bfloat16))
    assert torch.isfinite(big).all()


def test_layers_a_calibration_lacks_stay_unquantised_and_a_foreign_one_is_refused(fp8_on_the_cpu, caplog):
    from ee_vla.models.quantize import Calibrated, recording_activation_amax

    model = _tiny_llama()
    with recording_activation_amax(model) as table, torch.inference_mode():
        model.model.layers[0].mlp(torch.randn(1, 4, 64, dtype=torch.bfloat16))  # this MLP's two layers only
    assert set(table) == {"model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj"}
    with pytest.raises(QuantizeError, match=r"names 1 layers this model does not have \(model.vision.fc\)"):
        quantize_weights(_tiny_llama(), "fp8_tensor", calibration={**table, "model.vision.fc": Calibrated(1.0, 3)})
    with pytest.raises(QuantizeError, match="covers none of the layers"):
        quantize_weights(_tiny_llama(), "fp8_tensor", calibration={})
    assert quantize_weights(model, "fp8_tensor", calibration=table) == 2
    assert (
        "6 linear layers kept in torch.bfloat16 (not in the calibration: model.layers.0.self_attn.o_proj" in caplog.text
    )
    for name, m in _linears(model).items():
        assert (type(m.weight.data) is torch.Tensor) == (name not in table), name


def test_a_calibration_file_round_trips_and_a_bad_one_is_named(tmp_path):
    from ee_vla.models.quantize import Calibrated, load_calibration, save_calibration

    table = {"a.qkv_proj": Calibrated(3.5, 3), "a.down_proj": Calibrated(120.0, 3)}
    path = save_calibration(tmp_path / "sub" / "cal.json", table, policy="p", episodes=2)
    assert load_calibration(path) == table
    assert json.loads(path.read_text())["about"] == {"policy": "p", "episodes": 2}
    with pytest.raises(QuantizeError, match="calibration is empty"):
        save_calibration(tmp_path / "empty.json", {})
    with pytest.raises(QuantizeError, match="calibration file not found: .*nope.json"):
        load_calibration(tmp_path / "nope.json")
    for text, why in [
        ("{not json", "is not a calibration"),
        ('{"layers": {"x": {"amax": 1.0}}}', "is not a calibration"),
        ('{"layers": {}}', "no layers"),
        ('{"layers": {"x": {"amax": NaN, "ndim": 3}}}', "layer 'x' has an invalid amax or ndim"),
        ('{"layers": {"x": {"amax": -1, "ndim": 3}}}', "layer 'x' has an invalid amax or ndim"),
    ]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(QuantizeError, match=why):
            load_calibration(tmp_path / "bad.json")


def test_a_calibration_is_for_per_tensor_fp8_only(tiny_vla_dir):
    vla = VLA.from_pretrained(tiny_vla_dir)
    for mode in ("int8", "fp8"):
        with pytest.raises(QuantizeError, match=f"calibration .* needs quantize='fp8_tensor', got '{mode}'"):
            quantize_weights(vla.model, mode, calibration={})
    with pytest.raises(QuantizeError, match="needs a CUDA GPU"):  # like every fp8 mode
        quantize_weights(vla.model, "fp8_tensor", calibration={})
    assert quantized_mode(vla.model) == "none"
    with pytest.raises(RuntimeConfigError, match="calibration fixes fp8_tensor's activation scales: it needs"):
        RuntimeConfig(quantize="int8", calibration="cal.json")
    with pytest.raises(RuntimeConfigError, match="calibration must be a file path"):
        RuntimeConfig(quantize="fp8_tensor", calibration=" ")
    with pytest.raises(ValueError, match="PolicyConfig.calibration needs quantize='fp8_tensor'"):
        PolicyConfig(calibration="cal.json")
    assert RuntimeConfig(quantize="fp8_tensor", calibration="c.json").policy_config().calibration == "c.json"


@pytest.mark.parametrize("mode", ["int8", "fp8_tensor"])
def test_quantising_changes_none_of_inductors_process_wide_settings(tiny_vla_dir, request, mode):
    """torchao's configs would switch on Inductor's coordinate-descent tuning (and other options) for
    every later compilation in the process: a kernel it tunes the first time it runs breaks a CUDA
    graph capture that reaches it. quantize_weights leaves Inductor's settings as they were (int8,
    and fp8_tensor with a calibration, which run on the CPU)."""
    import torch._inductor.config as inductor_config

    from ee_vla.models.quantize import recording_activation_amax

    before = inductor_config.get_config_copy()
    try:
        if mode == "int8":
            assert quantize_weights(VLA.from_pretrained(tiny_vla_dir).model, "int8") > 0
        else:
            request.getfixturevalue("fp8_on_the_cpu")
            model = _tiny_llama()
            with recording_activation_amax(model) as table, torch.inference_mode():
                model(torch.ones(1, 4, dtype=torch.long))
            assert quantize_weights(model, "fp8_tensor", calibration=table) == 8
        after = inductor_config.get_config_copy()
        assert {k for k in after if after[k] != before.get(k)} == set()
    finally:
        inductor_config.load_config(before)
