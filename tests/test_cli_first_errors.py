"""Mistakes a user makes on the command line are reported in one line, naming the problem, before
torch, transformers or MuJoCo load (so within a second or two, not after a minute of imports).

Each case runs `ee-vla` in a fresh interpreter and reports which heavy modules were imported when
it returned: that is what the test checks, never a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ee_vla
from ee_vla.cli import SUBCOMMANDS

HEAVY = ("torch", "transformers", "mujoco")
POLICY = str(ee_vla.DEFAULT_POLICY)
RUN = (
    "import json, sys\n"
    "from ee_vla.cli import main\n"
    "try:\n"
    "    rc = main(json.loads(sys.argv[1]))\n"
    "except SystemExit as e:\n"  # --help: tyro prints and exits
    "    rc = e.code\n"
    f"print(json.dumps({{'rc': rc, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
)


def _cli(args: list[str], cwd: Path) -> tuple[int, list[str], list[str]]:
    r = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.stdout.strip(), r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["rc"], out["heavy"], [line for line in r.stderr.splitlines() if line.strip()]


def _truncated_policy(tmp_path: Path) -> Path:
    bad = tmp_path / "truncated"
    shutil.copytree(POLICY, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    return bad


def _empty_weights(tmp_path: Path) -> Path:
    bad = tmp_path / "empty"
    shutil.copytree(POLICY, bad)
    (bad / "model.safetensors").write_bytes(b"")
    return bad


def _earlier_eval(tmp_path: Path) -> Path:
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "compare.json").write_text("{}")
    return out


def _occupied(tmp_path: Path) -> Path:
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return out


CASES = {
    "misspelt env id": (["eval", "--policy", POLICY, "--env", "ee_vla/PickCub-v0"], "did you mean"),
    "missing policy": (
        ["eval", "--policy", "{tmp}/nope", "--env", "ee_vla/Reach-v0"],
        "EvalConfig.policy: .* not a directory",
    ),
    "not a model": (["eval", "--policy", "{tmp}", "--env", "ee_vla/Reach-v0"], "missing config.json"),
    "truncated weights": (["eval", "--policy", "{truncated}"], "truncated"),
    "empty weights": (["eval", "--policy", "{empty}"], "not a valid safetensors file"),
    "earlier results": (["eval", "--policy", POLICY, "--output-dir", "{earlier}"], "--overwrite"),
    "bad option value": (["eval", "--policy", POLICY, "--episodes", "0"], "episodes must be >= 1"),
    "bench model": (["bench", "--model", "{tmp}/nope"], "DecodeBenchConfig.model: .* not a directory"),
    "dagger policy": (["dagger", "--policy", "{tmp}/nope", "--out", "{tmp}/d"], "not a model directory"),
    "collect env": (["collect", "--env", "ee_vla/Pick", "--episodes", "1", "--out", "{tmp}/c"], "ee_vla/Pick"),
    "train data": (
        ["train", "--data", "{tmp}/nope.hdf5", "--out-dir", "{tmp}/r"],
        "TrainConfig.data: .* does not exist",
    ),
    "train out_dir": (["train", "--data", POLICY, "--out-dir", "{occupied}"], "not empty and holds no training run"),
    "distill teacher": (
        ["distill", "--teacher", "{tmp}/nope", "--data", POLICY, "--out-dir", "{tmp}/r"],
        "DistillConfig.teacher: .* not a directory",
    ),
    "serve model": (["serve", "--transport", "dds", "--model-path", "{tmp}/nope"], "not a directory"),
    "results into a model": (
        ["eval", "--policy", POLICY, "--output-dir", POLICY, "--overwrite"],
        "holds a model \\(model.safetensors\\); write the results to another --output-dir",
    ),
    "choice not on the list": (
        ["eval", "--policy", POLICY, "--decoder", "fast"],
        "--decoder: invalid choice 'fast'; choose one of ar, jacobi",
    ),
    "not an integer": (["collect", "--episodes", "ten"], "--episodes: expected an integer, got 'ten'"),
    "not an integer or None": (
        ["eval", "--policy", POLICY, "--max-iterations", "1.5"],
        "--max-iterations: expected an integer or None, got '1.5'",
    ),
    "flag without its value": (["eval", "--policy", POLICY, "--episodes"], "--episodes: expected a value"),
    "unknown flag": (
        ["train", "--data", POLICY, "--out-dir", "{tmp}/r", "--epochs", "3"],
        r"unrecognized arguments: --epochs 3 \(`ee-vla train --help`",
    ),
    "required option missing": (["dagger"], "missing required option\\(s\\): --policy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_before_heavy_modules_load(case, tmp_path):
    import re

    args, pattern = CASES[case]
    paths = {
        "tmp": tmp_path,
        "truncated": _truncated_policy(tmp_path) if "{truncated}" in args else "",
        "empty": _empty_weights(tmp_path) if "{empty}" in args else "",
        "earlier": _earlier_eval(tmp_path) if "{earlier}" in args else "",
        "occupied": _occupied(tmp_path) if "{occupied}" in args else "",
    }
    rc, heavy, lines = _cli([a.format(**paths) for a in args], cwd=tmp_path)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"ee-vla {args[0]}: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert heavy == [], f"{case}: {heavy} loaded before the error was reported"


@pytest.mark.parametrize("sub", ["", *SUBCOMMANDS])
def test_help_loads_no_heavy_module(sub, tmp_path):
    rc, heavy, _ = _cli([sub, "--help"] if sub else ["--help"], cwd=tmp_path)
    assert rc == 0
    assert heavy == [], f"ee-vla {sub} --help imported {heavy}"
