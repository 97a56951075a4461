"""Repack the `metaworld` wheel with only the mesh and texture files that some tasks' models load.

The metaworld 3.1.1 wheel is 37 MB, 33 MB of it PNG textures that the MT10 tasks never load; a
GPU machine that gets its packages as wheels carried in the repository (`.whl_run/`, under a size
limit) needs only what the tasks it runs load. This keeps every Python and XML file and drops the
`.stl`, `.png` and `.jpeg` assets that none of the tasks' MuJoCo models references (found by
compiling each task's model with `mujoco.MjSpec`, which expands includes), then writes
`metaworld-<version>+mt10-py3-none-any.whl` (a local version label: it is not the upstream file)
with a correct RECORD, and removes the input wheel unless --keep.

Rendering is unchanged for the kept tasks (the models load the same files); any other task fails
to load on a machine that has only the slim wheel. Needs the same metaworld version installed
here (it reads each task's model path from it).

    python scripts/slim_metaworld_wheel.py .whl_run/metaworld-3.1.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path

ASSET_SUFFIXES = (".stl", ".png", ".jpeg", ".jpg")


def referenced_assets(tasks: list[str]) -> set[str]:
    """Paths (relative to the metaworld package, '/'-separated) of the meshes and textures that
    the MuJoCo models of `tasks` load."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import metaworld
    import mujoco

    base = Path(metaworld.__file__).resolve().parent
    used: set[str] = set()
    for task in tasks:
        env = metaworld.ALL_V3_ENVIRONMENTS[task]()
        model = Path(env.model_name).resolve()
        env.close()
        spec = mujoco.MjSpec.from_file(str(model))
        for items, folder in ((spec.meshes, spec.meshdir), (spec.textures, spec.texturedir)):
            for item in items:
                if item.file:
                    path = Path(os.path.normpath(model.parent / (folder or "") / item.file))
                    if not path.exists():
                        raise FileNotFoundError(f"{task}: the model references {path}, which does not exist")
                    used.add(path.relative_to(base).as_posix())
    return used


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim(wheel: Path, tasks: list[str], label: str) -> Path:
    from importlib.metadata import version

    import metaworld  # noqa: F401  (fails early when it is not installed)

    name, ver = wheel.name.split("-")[:2]
    if name != "metaworld":
        raise SystemExit(f"{wheel} is not a metaworld wheel")
    if version("metaworld") != ver:
        raise SystemExit(f"installed metaworld is {version('metaworld')}, the wheel is {ver}: install the same version")
    keep_assets = {"metaworld/" + p for p in referenced_assets(tasks)}
    new_ver = f"{ver}+{label}"
    old_info, new_info = f"metaworld-{ver}.dist-info/", f"metaworld-{new_ver}.dist-info/"
    out = wheel.with_name(f"metaworld-{new_ver}-py3-none-any.whl")
    records: list[str] = []
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            arc = info.filename
            if arc.endswith("/"):
                continue
            if arc.lower().endswith(ASSET_SUFFIXES) and arc not in keep_assets:
                dropped += 1
                continue
            if arc.startswith(old_info):
                arc = new_info + arc[len(old_info) :]
                if arc.endswith("/RECORD"):
                    continue
            data = src.read(info)
            if arc == new_info + "METADATA":
                text = data.decode()
                if f"\nVersion: {ver}\n" not in text:
                    raise SystemExit("unexpected METADATA: no Version line")
                data = text.replace(f"\nVersion: {ver}\n", f"\nVersion: {new_ver}\n", 1).encode()
            dst.writestr(arc, data)
            records.append(f"{arc},{_record_hash(data)},{len(data)}")
        records.append(f"{new_info}RECORD,,")
        dst.writestr(new_info + "RECORD", "\n".join(records) + "\n")
    missing = keep_assets - {r.split(",")[0] for r in records}
    if missing:
        out.unlink()
        raise SystemExit(f"the wheel lacks referenced assets: {sorted(missing)}")
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, was {wheel.stat().st_size / 2**20:.1f} MB): "
        f"kept {len(keep_assets)} referenced meshes/textures of {len(tasks)} tasks, dropped {dropped}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sim_envs import MT10_TASKS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path, help="the upstream metaworld wheel")
    p.add_argument("--tasks", nargs="+", default=list(MT10_TASKS), help="Meta-World v3 tasks to keep (default: MT10)")
    p.add_argument("--label", default="mt10", help="local version label of the new wheel")
    p.add_argument("--keep", action="store_true", help="keep the input wheel (default: remove it)")
    args = p.parse_args(argv)
    slim(args.wheel, args.tasks, args.label)
    if not args.keep:
        args.wheel.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
