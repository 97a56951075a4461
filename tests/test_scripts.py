"""Shell recipes parse (and pass shellcheck where it is installed)."""

from __future__ import annotations

import json
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


def _load_bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_load_bench", SCRIPTS / "cpu_load_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_load_bench_reads_eval_outputs_and_tabulates(tmp_path):
    bench = _load_bench_module()
    for dec, p50 in (("ar", 100.0), ("ceed", 40.0)):
        (tmp_path / dec).mkdir()
        info = {"decode": {"latency_ms": {"p50": p50, "p99": 2 * p50}}, "aggregated": {"pc_success": 50.0}}
        (tmp_path / dec / "eval_info.json").write_text(json.dumps(info))
    lat = bench.demo_latencies(tmp_path)
    assert lat == {
        "ar": {"p50_ms": 100.0, "p99_ms": 200.0, "pc_success": 50.0},
        "ceed": {"p50_ms": 40.0, "p99_ms": 80.0, "pc_success": 50.0},
    }
    loaded = {d: {**v, "p50_ms": 3 * v["p50_ms"]} for d, v in lat.items()}
    rows = {"quiet": {"wall_s": 60.0, "decoders": lat}, "loaded": {"wall_s": 90.0, "decoders": loaded}}
    table = bench.format_table({"cases": {"demo": rows}})
    ar_row = next(line for line in table.splitlines() if " ar " in line).split()
    assert ar_row[:4] == ["demo", "ar", "60s", "90s"] and "1.50" in ar_row and "3.00" in ar_row
    with pytest.raises(RuntimeError, match="eval_info.json"):
        bench.demo_latencies(tmp_path / "ar" / "missing")


def test_cpu_load_bench_runs_the_demo_command_under_load(tmp_path):
    """The whole script on a tiny evaluation (one 2-step episode per task), quiet and loaded."""
    bench = _load_bench_module()
    out = bench.main(
        ["--cases", "demo", "--episodes", "1", "--out", str(tmp_path), "--extra", "--max-episode-steps", "2"]
    )
    rows = out["cases"]["demo"]
    assert set(rows) == {"quiet", "loaded"} and set(rows["loaded"]["decoders"]) == {"ar", "ceed"}
    assert json.loads((tmp_path / "cpu_load_bench.json").read_text())["competitors"] == 1
