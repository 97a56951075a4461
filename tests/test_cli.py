import subprocess
import sys

from ee_vla.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def test_unknown_subcommand_is_an_error(capsys):
    assert main(["fly"]) == 2
    assert "unknown subcommand 'fly'" in capsys.readouterr().err


def test_init_model_writes_the_cameras_it_is_given(tmp_path, capsys):
    from ee_vla.models.contract import read_contract

    model = tmp_path / "two"
    assert main(["init-model", "--out", str(model), "--cameras", "pixels", "wrist_pixels"]) == 0
    assert read_contract(model).cameras == ("pixels", "wrist_pixels")
    assert main(["init-model", "--out", str(tmp_path / "bad"), "--cameras", "pixels", "pixels"]) == 2
    assert "InitModelConfig.cameras names a camera twice" in capsys.readouterr().err


def test_init_model_refuses_a_model_it_would_replace(tmp_path, capsys):
    """A mistyped `--out` must not turn a trained model into a random one: a directory that is not
    empty is refused, one line naming it, unless `--overwrite` is given."""
    model = tmp_path / "trained"
    assert main(["init-model", "--out", str(model), "--seed", "1"]) == 0
    before = (model / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["init-model", "--out", str(model), "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and err.count("\n") == 1, err
    assert (model / "model.safetensors").read_bytes() == before
    assert main(["init-model", "--out", str(model), "--seed", "2", "--overwrite"]) == 0
    assert (model / "model.safetensors").read_bytes() != before


def test_init_model_then_bench_from_the_console(tmp_path):
    model = tmp_path / "m"
    assert main(["init-model", "--out", str(model), "--preset", "tiny", "--chunk-size", "2"]) == 0
    assert (model / "model.safetensors").is_file()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ee_vla.cli",
            "bench",
            "--model",
            str(model),
            "--calls",
            "1",
            "--warmup",
            "0",
            "--decoders",
            "ar",
            "jacobi",
            "--no-plots",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "jacobi" in run.stdout and (tmp_path / "b" / "bench.json").is_file()


def test_every_subcommand_help_works(capsys):
    import pytest

    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "--help" in capsys.readouterr().out


# ---- errors: one line for the user's, a traceback for a bug -------------------------------------
def _missing_data_args(tmp_path) -> list[str]:
    return ["train", "--data", str(tmp_path / "missing.hdf5"), "--out-dir", str(tmp_path / "run")]


def test_a_user_error_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(_missing_data_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == f"ee-vla train: error: TrainConfig.data: {tmp_path / 'missing.hdf5'} does not exist\n"


def test_debug_before_or_after_the_subcommand_raises_with_the_traceback(tmp_path):
    import pytest

    for argv in (["--debug", *_missing_data_args(tmp_path)], [*_missing_data_args(tmp_path), "--debug"]):
        with pytest.raises(FileNotFoundError, match="missing.hdf5 does not exist"):
            main(argv)


def _fake_subcommand(monkeypatch, tmp_path, body: str) -> None:
    """Register `ee-vla fake`, whose function runs `body` (a module in tmp_path)."""
    import ee_vla.cli

    module = f"fake_{tmp_path.name}"  # one module per test: imports are cached
    (tmp_path / f"{module}.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass FakeConfig:\n    x: int = 0\n\n\n"
        f"def run(cfg):\n    {body}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ee_vla.cli.SUBCOMMANDS, "fake", (module, "FakeConfig", "run", "a test subcommand"))


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path, capsys, monkeypatch):
    _fake_subcommand(monkeypatch, tmp_path, "return len(cfg.x)")  # TypeError: a bug
    assert main(["fake"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError: object of type 'int' has no len()" in err
    assert "ee-vla fake: internal error (TypeError): this is a bug in ee-vla; please report it" in err


def test_a_library_value_error_is_a_bug_too(tmp_path, capsys, monkeypatch):
    _fake_subcommand(monkeypatch, tmp_path, "import numpy as np; np.zeros(3) + np.zeros(4)")
    assert main(["fake"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_which_exceptions_are_user_errors():
    import errno

    import gymnasium as gym
    import numpy as np
    import torch

    from ee_vla.cli import is_user_error
    from ee_vla.evaluation import EvalConfigError
    from ee_vla.models.vla import ModelLoadError
    from ee_vla.training.config import TrainConfig
    from ee_vla.training.loop import ResumeConfigError

    def caught(fn) -> BaseException:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the exception is the result
            return e
        raise AssertionError("no exception")

    user = [
        EvalConfigError("x"),
        ResumeConfigError("x"),
        ModelLoadError("x"),
        FileNotFoundError("x"),
        FileExistsError("x"),
        FloatingPointError("loss is nan"),
        OSError(errno.ENOSPC, "No space left on device"),
        torch.OutOfMemoryError("CUDA out of memory"),
        caught(lambda: TrainConfig(data=("d",), out_dir="o", lr=-1.0)),  # a `raise ValueError` of ours
        caught(lambda: gym.make("ee_vla/NoSuchTask-v0")),
    ]
    bugs = [
        caught(lambda: np.zeros(3) + np.zeros(4)),  # a ValueError raised inside numpy
        caught(lambda: int("seven")),
        TypeError("x"),
        KeyError("x"),
        RuntimeError("x"),
        ValueError("x"),  # not raised by our code
        OSError(errno.EIO, "Input/output error"),
    ]
    assert [is_user_error(e) for e in user] == [True] * len(user)
    assert [is_user_error(e) for e in bugs] == [False] * len(bugs)


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    _fake_subcommand(monkeypatch, tmp_path, "raise KeyboardInterrupt")
    assert main(["fake"]) == 130
    assert capsys.readouterr().err == "ee-vla fake: interrupted\n"


def test_the_console_script_prints_one_line_or_the_traceback_with_debug(tmp_path):
    from pathlib import Path

    exe = Path(sys.executable).with_name("ee-vla")
    run = subprocess.run([str(exe), *_missing_data_args(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"ee-vla train: error: TrainConfig.data: {tmp_path / 'missing.hdf5'} does not exist"
    ]
    run = subprocess.run(
        [str(exe), "--debug", *_missing_data_args(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1 and "Traceback" in run.stderr and "FileNotFoundError" in run.stderr


def test_training_on_a_missing_gpu_is_a_user_error(tmp_path, capsys):
    import h5py
    import numpy as np
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tmp_path / "demos.hdf5"
    with h5py.File(data, "w") as f:
        g = f.create_group("data/demo_0")
        g.create_dataset("obs/pixels", data=np.zeros((4, 16, 16, 3), np.uint8))
        g.create_dataset("actions", data=np.zeros((4, 7), np.float32))
        g.attrs["instruction"] = "pick up the cube"
    argv = ["train", "--data", str(data), "--out-dir", str(tmp_path / "run"), "--preset", "tiny", "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "ee-vla train: error: device='cuda' but CUDA is not available on this machine (use --device cpu or auto)\n"
    )


def test_a_device_the_machine_lacks_is_one_line_for_eval_and_bench(capsys):
    """`--device gpu` (no such torch device) and `--device cuda` on a machine without CUDA: one line
    naming the device, exit 2, for the commands that load a policy."""
    import pytest
    import torch

    import ee_vla

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cases = [
        (
            ["eval", "--policy", str(ee_vla.DEFAULT_POLICY), "--env", "ee_vla/Reach-v0", "--episodes", "1"],
            "ee-vla eval",
        ),
        (["bench", "--model", str(ee_vla.DEFAULT_POLICY), "--calls", "1"], "ee-vla bench"),
    ]
    for argv, prog in cases:
        for device, said in (
            ("gpu", "device='gpu' is not a torch device"),
            ("cuda", "device='cuda' but CUDA is not available on this machine (use --device cpu or auto)"),
        ):
            assert main([*argv, "--device", device]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"{prog}: error: {said}") and err.count("\n") == 1, err


def test_eval_of_a_two_camera_policy_from_the_console(tmp_path, capsys, monkeypatch):
    """`ee-vla eval` of a policy that reads the gripper camera: it runs on a suite env (both cameras
    in eval_info.json); `--env-kwargs wrist_camera false` (which reaches the config as the string
    "false") and a Meta-World env, which has no gripper camera, are one-line errors."""
    import json

    from ee_vla.models import create_random_vla_dir

    monkeypatch.setenv("MUJOCO_GL", "egl")
    model = str(create_random_vla_dir(tmp_path / "m", cameras=("pixels", "wrist_pixels")))
    run = ["eval", "--policy", model, "--env", "ee_vla/Reach-v0", "--episodes", "1", "--max-episode-steps", "2"]
    run += ["--decoder", "ar", "--no-progress", "--no-print-summary"]
    assert main([*run, "--output-dir", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "eval_info.json").read_text())["policy"]["cameras"] == [
        "pixels",
        "wrist_pixels",
    ]
    capsys.readouterr()
    assert main([*run, "--env-kwargs", "wrist_camera", "false", "--output-dir", str(tmp_path / "off")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ee-vla eval: error: env 'ee_vla/Reach-v0': --env-kwargs wrist_camera false turns off")
    assert "'wrist_pixels'" in err and not (tmp_path / "off" / "eval_info.json").exists()
    bad = [a if a != "ee_vla/Reach-v0" else "test_ee_vla/OneCamera-v0" for a in run]
    assert main([*bad, "--output-dir", str(tmp_path / "mw")]) == 2
    assert "test_ee_vla/OneCamera-v0 has no camera 'wrist_pixels'" in capsys.readouterr().err


def test_every_command_takes_env_ids_in_every_form():
    """`--env A B`, `--env A --env B`, `--env=A` and commas give the same ids to collect (a
    several-value flag), eval and dagger (repeatable flags): argparse alone would keep only the last
    repeated several-value flag, and refuse several values after a repeatable one."""
    from ee_vla.cli import _parse
    from ee_vla.evaluation.config import EvalConfig
    from ee_vla.training.dagger import DaggerConfig
    from sim_envs.collect import CollectConfig

    ids = ["ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0"]
    forms = [
        ["--env", *ids],
        ["--env", ids[0], "--env", ids[1], "--env", ids[2]],
        ["--env", ids[0], ids[1], "--env", ids[2]],
        [f"--env={ids[0]}", "--env", f"{ids[1]},{ids[2]}"],
    ]
    import ee_vla

    policy = str(ee_vla.DEFAULT_POLICY)
    for cls, before in (
        (CollectConfig, ["--episodes", "2"]),
        (EvalConfig, ["--policy", policy]),
        (DaggerConfig, ["--policy", policy]),
    ):
        for form in forms:
            config = _parse(cls, [*before, *form, "--seed", "3"], "ee-vla test")
            assert list(config.env) == ids, (cls.__name__, form, config.env)
            assert config.seed == 3
