"""The README's Python snippet, run as a user pastes it: from another directory, headless, with no
MUJOCO_GL set, and printing what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_snippet_runs_headless_from_another_directory(tmp_path):
    from sim_envs.gl import headless_gl_backend

    if headless_gl_backend() is None:
        pytest.skip("no headless GL library installed here (Debian: libegl1 / libosmesa6)")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    (tmp_path / "snippet.py").write_text(blocks[0])
    hidden = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.fullmatch(r"success=(True|False) iterations=\d+ forward_passes=\d+", r.stdout.strip()), r.stdout


def test_evaluation_docs_python_snippet_runs_as_written(tmp_path):
    """docs/evaluation.md's `evaluate(EvalConfig(...))` example, pasted into a file run elsewhere."""
    from sim_envs.gl import headless_gl_backend

    if headless_gl_backend() is None:
        pytest.skip("no headless GL library installed here (Debian: libegl1 / libosmesa6)")
    text = (ROOT / "docs" / "evaluation.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "evaluate(" in b]
    assert blocks, "docs/evaluation.md has no ```python block that calls evaluate"
    (tmp_path / "snippet.py").write_text(blocks[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert 0.0 <= float(r.stdout.strip().splitlines()[-1]) <= 100.0, r.stdout
    assert list((tmp_path / "outputs" / "eval").glob("*/eval_info.json")), "no eval_info.json written"
