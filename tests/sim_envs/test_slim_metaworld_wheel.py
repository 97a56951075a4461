"""scripts/slim_metaworld_wheel.py: the repacked wheel keeps what the tasks' models load, drops the
rest, and is a valid wheel (version label, RECORD hashes). Skipped without metaworld."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

pytest.importorskip("metaworld")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slim_metaworld_wheel.py"


def _load():
    spec = importlib.util.spec_from_file_location("slim_metaworld_wheel", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_slim_wheel_keeps_referenced_assets_only(tmp_path):
    slim = _load()
    used = slim.referenced_assets(["reach-v3"])
    assert any(p.endswith(".png") for p in used) and any(p.endswith(".stl") for p in used)
    ver = version("metaworld")
    info = f"metaworld-{ver}.dist-info/"
    src = tmp_path / f"metaworld-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as z:  # a stand-in for the upstream wheel
        z.writestr("metaworld/__init__.py", "x = 1\n")
        z.writestr("metaworld/assets/objects/unused.xml", "<mujoco/>")
        z.writestr("metaworld/assets/textures/unused.png", b"png")
        for p in used:
            z.writestr("metaworld/" + p, b"asset")
        z.writestr(info + "METADATA", f"Metadata-Version: 2.1\nName: metaworld\nVersion: {ver}\n\n")
        z.writestr(info + "WHEEL", "Wheel-Version: 1.0\n")
        z.writestr(info + "RECORD", "stale\n")
    out = slim.slim(src, ["reach-v3"], "mt10")
    assert out.name == f"metaworld-{ver}+mt10-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        new_info = f"metaworld-{ver}+mt10.dist-info/"
        assert {"metaworld/" + p for p in used} <= names
        assert "metaworld/assets/textures/unused.png" not in names
        assert "metaworld/assets/objects/unused.xml" in names  # only meshes/textures are dropped
        assert f"\nVersion: {ver}+mt10\n" in z.read(new_info + "METADATA").decode()
        assert not any(n.startswith(info) for n in names)
        rows = [r.split(",") for r in z.read(new_info + "RECORD").decode().splitlines()]
        assert {r[0] for r in rows} == names
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                continue
            data = z.read(name)
            h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={h}" and int(size) == len(data)
