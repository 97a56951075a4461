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
