"""`ee_vla.runtime.RuntimeConfig`: one set of runtime options, under one set of names, for eval,
bench, dagger, the engine profiler and the ROS node; importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import tyro
import yaml

from ee_vla.decoding.config import PRESETS, DecodeConfig
from ee_vla.runtime import (
    COMPILE_MODES,
    DECODERS,
    DTYPES,
    ENGINES,
    QUANTIZE_MODES,
    RuntimeConfig,
    RuntimeConfigError,
    config_dict,
    resolve_device,
)

REPO = Path(__file__).resolve().parents[1]

FLAGS = ["--decoder", "ceed_cap", "--max-iterations", "3", "--tau", "1", "--init", "prompt", "--window", "4"]
FLAGS += ["--deadline-s", "0.5", "--device", "cpu", "--dtype", "float64", "--engine", "static"]
FLAGS += ["--compile-mode", "frozen", "--threads", "2"]
"""One runtime setting, as command-line flags (every RuntimeConfig field but n_action_steps)."""
ROS = {
    "decoder": "ceed_cap",
    "max_iterations": 3,
    "tau": 1,
    "init": "prompt",
    "window": 4,
    "deadline_s": 0.5,
    "device": "cpu",
    "dtype": "float64",
    "engine": "static",
    "compile_mode": "frozen",
    "threads": 2,
}
"""The same setting as ROS parameters."""
EXPECTED = RuntimeConfig(
    decoder="ceed_cap",
    max_iterations=3,
    tau=1,
    init="prompt",
    window=4,
    deadline_s=0.5,
    device="cpu",
    dtype="float64",
    engine="static",
    compile_mode="frozen",
    threads=2,
)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A directory DaggerConfig accepts as a model (its config check only looks for config.json)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return tmp_path / "m"


def test_the_same_setting_gives_the_same_decode_config_everywhere(model_dir, tmp_path):
    from ee_vla.benchmarks.decode_bench import DecodeBenchConfig, decoder_config
    from ee_vla.benchmarks.profile import config_from_args
    from ee_vla.evaluation import EvalConfig
    from ee_vla.training.dagger import DaggerConfig
    from ros_nodes.launch_args import parameter_overrides
    from ros_nodes.params import PolicyParams

    want = DecodeConfig(method="ceed", max_iterations=3, tau=1, init="prompt", window=4, deadline_s=0.5)
    assert EXPECTED.decode_config() == want

    ev = tyro.cli(EvalConfig, args=["--policy", str(model_dir), "--n-action-steps", "2", *FLAGS])
    assert ev.runtime == replace(EXPECTED, n_action_steps=2)
    assert ev.decode_config("ceed_cap") == want and ev.decoders == ["ceed_cap"]

    bench = tyro.cli(DecodeBenchConfig, args=FLAGS)
    assert bench.runtime == EXPECTED and bench.decoders == ("ar", "jacobi", "ceed_cap")
    assert decoder_config("ceed_cap", bench) == want

    dagger = tyro.cli(
        DaggerConfig, args=["--policy", str(model_dir), "--out", str(tmp_path / "d"), "--seed", "0"] + FLAGS
    )
    assert dagger.runtime == EXPECTED and dagger.eval_config().runtime == EXPECTED
    assert dagger.eval_config().decode_config("ceed_cap") == want

    ros = PolicyParams.from_mapping(ROS)
    assert ros.runtime_config() == EXPECTED and ros.runtime_config().decode_config() == want
    launch = parameter_overrides({k: str(v) for k, v in ROS.items()})
    assert PolicyParams(**launch).runtime_config() == EXPECTED

    prof = config_from_args(["--device", "cpu", "--dtype", "float64", "--compile-mode", "frozen"] + FLAGS[2:6])
    assert (prof.runtime.max_iterations, prof.runtime.tau) == (3, 1)
    assert prof.decode_config("ceed") == DecodeConfig(method="ceed", max_iterations=3, tau=1, init="repeat")


def test_defaults_agree_everywhere(model_dir, tmp_path):
    """No option given: every entry point runs the same runtime (device auto, resolved the same way)."""
    from ee_vla.benchmarks.decode_bench import DecodeBenchConfig
    from ee_vla.benchmarks.profile import ProfileConfig
    from ee_vla.evaluation import EvalConfig
    from ee_vla.training.dagger import DaggerConfig
    from ros_nodes.params import PolicyParams

    resolved = RuntimeConfig().resolved()
    assert RuntimeConfig().device == "auto" and PolicyParams().runtime_config() == RuntimeConfig()
    # eval, bench and dagger resolve the device when they start (`prepare`, `run_bench`), not when
    # their options are parsed: a mistake in a path is reported before torch loads
    assert EvalConfig(policy=model_dir).runtime.resolved() == resolved
    assert DecodeBenchConfig().runtime.resolved() == resolved and ProfileConfig().runtime == resolved
    assert DaggerConfig(policy=model_dir, out=tmp_path / "d").eval_config().runtime.resolved() == resolved
    assert ProfileConfig().decode_config("ceed") == DecodeConfig(method="ceed", max_iterations=2, init="repeat")


def test_ros_names_are_the_runtime_names():
    """Every RuntimeConfig field the node uses is a ROS parameter, a launch argument and a YAML key
    under the same name; the torch-free tables of ros_nodes.params are the runtime's."""
    from ros_nodes import params
    from ros_nodes.launch_args import POLICY_LAUNCH_ARGS

    runtime = {f.name for f in fields(RuntimeConfig)}
    # what runs from each chunk is the node's timed schedule (`on_new_chunk`, blend included)
    assert set(params.RUNTIME_PARAMS) == runtime - {"n_action_steps", "temporal_ensemble"}
    assert set(params.RUNTIME_PARAMS) <= {f.name for f in fields(params.PolicyParams)}
    assert set(params.RUNTIME_PARAMS) <= set(POLICY_LAUNCH_ARGS)
    yaml_keys = set(yaml.safe_load((REPO / "config" / "ee_vla.yaml").read_text())["/**"]["ros__parameters"])
    assert set(params.RUNTIME_PARAMS) <= yaml_keys
    assert set(params.DECODERS) == set(DECODERS) == set(PRESETS)
    assert params.ENGINES == ENGINES and params.COMPILE_MODES == COMPILE_MODES and params.DTYPES == DTYPES
    assert params.QUANTIZE_MODES == QUANTIZE_MODES
    assert set(params.INIT_GUESSES) - {""} == {"repeat", "prompt", "warm"}


def test_runtime_tables_match_the_engine():
    from ee_vla.engine.factory import ENGINES as FACTORY_ENGINES
    from ee_vla.engine.static import COMPILE_MODES as ENGINE_COMPILE_MODES

    assert ENGINES == FACTORY_ENGINES and COMPILE_MODES == tuple(ENGINE_COMPILE_MODES)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decoder": "beam"}, "unknown decoder 'beam'"),
        ({"decoder": "ar", "tau": 1}, "CEED early-exit options"),
        ({"decoder": "jacobi", "max_iterations": 2}, "CEED early-exit options"),
        ({"max_iterations": 0}, "RuntimeConfig.max_iterations"),
        ({"tau": -1}, "RuntimeConfig.tau"),
        ({"window": 0}, "RuntimeConfig.window"),
        ({"deadline_s": 0.0}, "RuntimeConfig.deadline_s"),
        ({"init": "random"}, "RuntimeConfig.init"),
        ({"dtype": "int8"}, "RuntimeConfig.dtype"),
        ({"engine": "turbo"}, "RuntimeConfig.engine"),
        ({"compile_mode": "fastest"}, "RuntimeConfig.compile_mode"),
        ({"threads": -1}, "RuntimeConfig.threads"),
        ({"device": ""}, "RuntimeConfig.device"),
    ],
)
def test_bad_values_are_rejected(kwargs, match):
    with pytest.raises(RuntimeConfigError, match=match):
        RuntimeConfig(**kwargs)


@pytest.mark.parametrize(
    ("device", "gpus", "match"),
    [
        ("gpu", 0, "device='gpu' is not a torch device"),
        ("cuda", 0, "device='cuda' but CUDA is not available on this machine"),
        ("cuda:0", 0, "device='cuda:0' but CUDA is not available on this machine"),
        ("cuda:2", 2, "device='cuda:2' but this machine has 2 CUDA device"),
    ],
)
def test_a_device_the_machine_cannot_run_is_named(monkeypatch, device, gpus, match):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(RuntimeConfigError, match=match):
        resolve_device(device)
    with pytest.raises(RuntimeConfigError, match=match):
        RuntimeConfig(device=device).resolved()


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 0, "cpu"), ("cuda:1", 2, "cuda:1")],
)
def test_devices_that_can_run_resolve(monkeypatch, device, gpus, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device(device) == expected


def test_ros_rejects_options_its_decoder_does_not_take():
    from ros_nodes.params import PolicyParams, validate_param

    with pytest.raises(ValueError, match="decoder: .*CEED early-exit options"):
        PolicyParams(decoder="ar", tau=1)
    assert PolicyParams(decoder="ar", tau=-1, max_iterations=0).runtime_config().decode_config().method == "ar"
    assert validate_param("tau", -2) and validate_param("init", "random") and validate_param("dtype", "int8")
    assert validate_param("max_iterations", 3) is None and validate_param("deadline_s", 0.0) is None


def test_comparisons_apply_each_option_where_it_is_valid():
    rt = RuntimeConfig(decoder="ceed", tau=2, max_iterations=3, init="prompt", window=5, deadline_s=1.0)
    ar, jacobi, cap = rt.decode_config("ar"), rt.decode_config("jacobi"), rt.decode_config("ceed_cap")
    assert (ar.tau, ar.max_iterations, ar.init, ar.window, ar.deadline_s) == (0, None, "warm", None, 1.0)
    assert (jacobi.tau, jacobi.max_iterations, jacobi.init, jacobi.window) == (0, None, "prompt", 5)
    assert (cap.tau, cap.max_iterations, cap.init, cap.window) == (2, 3, "prompt", 5)
    assert rt.decode_config(seed=7).seed == 7


def test_reports_name_the_options_as_the_command_line_does(model_dir):
    from ee_vla.evaluation import EvalConfig

    cfg = EvalConfig(policy=model_dir, runtime=RuntimeConfig(tau=2, device="cpu"))
    out = config_dict(cfg)
    assert "runtime" not in out and out["tau"] == 2 and out["device"] == "cpu" and out["policy"] == str(model_dir)
    assert {f.name for f in fields(RuntimeConfig)} <= set(out)
    json.dumps(out)  # serialisable as it stands


def test_config_modules_import_without_torch():
    """Parsing options (and building the ROS node's parameters) loads no torch, transformers or
    MuJoCo: `--help`, the ROS launch process and the node's parent stay light."""
    code = (
        "import sys, json\n"
        "import ee_vla.runtime, ee_vla.evaluation, ee_vla.evaluation.config, ee_vla.benchmarks.decode_bench\n"
        "import ros_nodes.params, ros_nodes.launch_args\n"
        "from ros_nodes.params import PolicyParams\n"
        "PolicyParams(decoder='ceed_cap', tau=1).runtime_config().decode_config()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'mujoco') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
