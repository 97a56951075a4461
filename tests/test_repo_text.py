"""The product's text speaks to users: no project-history labels, no pointers to notes they lack."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("README.md", "CHANGELOG.md", "Makefile", "setup.py", "package.xml")
PRODUCT_DIRS = ("docs/", "ee_vla/", "sim_envs/", "ros_nodes/", "scripts/", "launch/", "config/")
SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".xml", ".json", ".txt", ""}
FORBIDDEN = {
    "a project-history label (session N)": re.compile(r"\bsession[-_ ]?\d+", re.IGNORECASE),
    "a pointer to the developers' notes": re.compile(r"METHOD\.md|\.\./shared\b(?!/ros2-jazzy)"),
}


def _product_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in out.splitlines() if n in PRODUCT or n.startswith(PRODUCT_DIRS)]
    return [ROOT / n for n in names if not n.startswith("ee_vla/checkpoints/") and Path(n).suffix in SUFFIXES]


def test_product_text_has_no_history_labels_or_private_pointers():
    found = []
    for path in _product_files():
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
