"""CPU decoding under load: `make demo`'s evaluation, and the served policy, with and without
competing CPU-bound processes on the same machine. Prints a table and saves JSON.

Each case runs the same command twice in a row on the same machine: quiet, then with `--competitors`
busy-looping Python processes started beside it (and stopped after). It reports the wall time and
the p50/p99 decode latency of each decoder, and the loaded / quiet ratios.

    python scripts/cpu_load_bench.py                        # demo + serve, 1 competitor
    python scripts/cpu_load_bench.py --cases demo --torch-defaults   # torch's own thread settings

`--torch-defaults` runs the commands with torch's defaults instead of ee_vla's (one intra-op thread
per core, OpenMP's spin-waiting): the comparison that shows what ee_vla's thread choice buys
(ee_vla.threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim_envs import SUITE_ENV_IDS

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "ee_vla" / "checkpoints" / "default"


def demo_command(out_dir: Path, episodes: int, extra: list[str]) -> list[str]:
    """`make demo`'s evaluation (same policy, envs, seeds and copies), writing under `out_dir`."""
    envs = [a for e in SUITE_ENV_IDS for a in ("--env", e)]
    return [
        sys.executable, "-m", "ee_vla.cli", "eval", "--policy", str(POLICY), *envs, "--compare", "ar", "ceed",
        "--episodes", str(episodes), "--num-envs", "4", "--seed", "100000", "--output-dir", str(out_dir),
        "--no-progress", *extra,
    ]  # fmt: skip


def serve_command(out_file: Path, duration_s: float, extra: list[str]) -> list[str]:
    """The shipped policy served over DDS on loopback: camera and joint states at 10 Hz, commands at
    10 Hz, no malformed inputs (ros_nodes.bench's soak mode)."""
    return [
        sys.executable, "-m", "ros_nodes.bench", "--mode", "soak", "--model-path", str(POLICY),
        "--decoder", "ceed", "--control-hz", "10", "--camera-hz", "10", "--image-size", "128",
        "--image-timeout-s", "1.0", "--bad-input-every-s", "0", "--duration-s", str(duration_s),
        "--out", str(out_file), *extra,
    ]  # fmt: skip


def demo_latencies(out_dir: Path) -> dict[str, dict[str, float]]:
    """p50/p99 decode latency (ms) and success of each decoder, from the run's eval_info.json files."""
    got = {}
    for info_path in sorted(out_dir.glob("*/eval_info.json")):
        info = json.loads(info_path.read_text())
        lat = info["decode"]["latency_ms"]
        got[info_path.parent.name] = {
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
            "pc_success": info["aggregated"]["pc_success"],
        }
    if not got:
        raise RuntimeError(f"no */eval_info.json under {out_dir}: did the evaluation run?")
    return got


def serve_latencies(out_file: Path) -> dict[str, dict[str, float | None]]:
    """The server's decode latency (ms, over its last 200 chunks) from ros_nodes.bench's JSON."""
    r = json.loads(out_file.read_text())

    def num(key: str) -> float | None:
        v = r.get(key)
        return None if v in (None, "", "n/a") else float(v)

    return {
        "served": {
            "p50_ms": num("decode_latency_p50_ms"),
            "p99_ms": num("decode_latency_p99_ms"),
            "delivered_fraction": r.get("delivered_fraction"),
            "deadline_misses": r.get("deadline_misses"),
        }
    }


def start_competitors(n: int) -> list[subprocess.Popen]:
    """`n` CPU-bound processes (a busy loop each)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_case(cmd: list[str], env: dict[str, str], competitors: int, log_file: Path) -> float:
    """Run `cmd` with `competitors` busy processes beside it; returns its wall time in seconds."""
    procs = start_competitors(competitors)
    try:
        t0 = time.perf_counter()
        with log_file.open("w") as log:
            r = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {r.returncode}; see {log_file}")
    return wall


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["demo", "serve"], choices=["demo", "serve"])
    p.add_argument("--competitors", type=int, default=1, help="busy processes in the loaded run (default 1)")
    p.add_argument("--episodes", type=int, default=5, help="demo: episodes per env id (make demo: 5)")
    p.add_argument("--duration-s", type=float, default=30.0, help="serve: measured window per run")
    p.add_argument("--torch-defaults", action="store_true", help="torch's thread defaults instead of ee_vla's")
    p.add_argument("--out", type=Path, default=Path("outputs/cpu_load_bench"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more options for the commands")
    args = p.parse_args(argv)
    if args.competitors < 1:
        p.error("--competitors must be >= 1")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    threads = []
    if args.torch_defaults:
        # An empty OMP_WAIT_POLICY is OpenMP's default (spin, then sleep); ee_vla keeps a set value.
        env["OMP_WAIT_POLICY"] = ""
        threads = ["--threads", str(len(os.sched_getaffinity(0)))]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.out))

    results: dict = {"competitors": args.competitors, "torch_defaults": args.torch_defaults, "cases": {}}
    for case in args.cases:
        rows = {}
        for load in ("quiet", "loaded"):
            n = args.competitors if load == "loaded" else 0
            if case == "demo":
                run_dir = tmp / f"demo_{load}"
                cmd = demo_command(run_dir, args.episodes, [*threads, *args.extra])
            else:
                run_dir = tmp / f"serve_{load}.json"
                cmd = serve_command(run_dir, args.duration_s, [*threads, *args.extra])
            print(f"{case} {load} ({n} competing process{'es' if n != 1 else ''}) ...", flush=True)
            wall = run_case(cmd, env, n, tmp / f"{case}_{load}.log")
            lat = demo_latencies(run_dir) if case == "demo" else serve_latencies(run_dir)
            rows[load] = {"wall_s": wall, "decoders": lat}
        results["cases"][case] = rows
    results["loadavg"] = os.getloadavg()
    (args.out / "cpu_load_bench.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"wrote {args.out / 'cpu_load_bench.json'} (logs and run outputs in {tmp})")
    return results


def format_table(results: dict) -> str:
    lines = [
        f"{'case':<6} {'decoder':<8} {'wall quiet':>10} {'wall loaded':>11} {'x':>5}  "
        f"{'p50 quiet':>9} {'p50 loaded':>10} {'x':>5}  {'p99 quiet':>9} {'p99 loaded':>10} {'x':>5}"
    ]

    def ratio(a, b):
        return f"{b / a:5.2f}" if a and b else "    -"

    def ms(v):
        return f"{v:.0f} ms" if v is not None else "-"

    for case, rows in results["cases"].items():
        q, lo = rows["quiet"], rows["loaded"]
        for dec, dq in q["decoders"].items():
            dl = lo["decoders"].get(dec, {})
            lines.append(
                f"{case:<6} {dec:<8} {q['wall_s']:>9.0f}s {lo['wall_s']:>10.0f}s {ratio(q['wall_s'], lo['wall_s'])}  "
                f"{ms(dq['p50_ms']):>9} {ms(dl.get('p50_ms')):>10} {ratio(dq['p50_ms'], dl.get('p50_ms'))}  "
                f"{ms(dq['p99_ms']):>9} {ms(dl.get('p99_ms')):>10} {ratio(dq['p99_ms'], dl.get('p99_ms'))}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
