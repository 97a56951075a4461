"""The quickstart's install: a CPU machine gets torch's CPU build and never looks for CUDA wheels."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, Requirement]:
    lines = (ROOT / "constraints-cpu.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in (raw.split("#")[0].strip() for raw in lines) if line]
    return {r.name: r for r in reqs}


def test_torch_is_pinned_to_a_cpu_build():
    """PyPI's torch of a version is its CUDA build; only the "+cpu" local version is the CPU one."""
    (spec,) = _constraints()["torch"].specifier
    assert spec.operator == "==" and spec.version.endswith("+cpu"), spec


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_installs_torch_alone_from_the_cpu_index_before_the_package(tmp_path):
    venv = tmp_path / "venv"
    r = subprocess.run(
        ["make", "-n", "-B", f"VENV={venv}", f"{venv}/.installed"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    pip_lines = [line for line in r.stdout.splitlines() if " -m pip install " in line]
    assert len(pip_lines) == 2, r.stdout
    torch_line, package_line = pip_lines
    # torch first, with no dependencies: only torch is looked up on PyTorch's CPU index
    assert re.search(r"--extra-index-url https://download\.pytorch\.org/whl/cpu\b", torch_line), torch_line
    assert "--no-deps" in torch_line and "-c constraints-cpu.txt" in torch_line and torch_line.endswith(" torch")
    # then the package (and torch's own dependencies) against the installed torch, same pins
    assert "-c constraints-cpu.txt" in package_line and "-e " in package_line
    assert "download.pytorch.org" not in package_line
