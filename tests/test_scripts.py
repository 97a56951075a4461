"""Shell recipes parse (and pass shellcheck where it is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_script_parses(name):
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPTS / name)], check=True)


def test_train_mt10_rejects_an_unknown_stage():
    r = subprocess.run(
        ["bash", str(SCRIPTS / "train_mt10.sh")],
        env={"PATH": "/usr/bin:/bin", "STAGES": "colect"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown stage 'colect'" in r.stderr
