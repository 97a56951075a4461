"""ee_vla.threads: the CPU thread count ee_vla picks, and idle OpenMP threads that sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ee_vla import threads


def _run(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet) and return its printed JSON."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LP_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resolve_threads_auto_leaves_the_reserve():
    assert threads.resolve_threads(0, reserve=1, cores=8) == 7
    assert threads.resolve_threads(0, reserve=1, cores=2) == 1
    assert threads.resolve_threads(0, reserve=1, cores=1) == 1  # never 0
    assert threads.resolve_threads(0, reserve=0, cores=4) == 4
    assert threads.resolve_threads(3, reserve=1, cores=2) == 3  # an explicit count is the user's


@pytest.mark.parametrize("bad", [{"threads": -1}, {"reserve": -1}])
def test_resolve_threads_rejects_negative(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        threads.resolve_threads(**bad)


@pytest.mark.parametrize(
    "text, cores", [("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000", 2.0), ("garbage", None)]
)
def test_cgroup_quota(tmp_path, text, cores):
    f = tmp_path / "cpu.max"
    f.write_text(text)
    assert threads._cgroup_cpus(f) == cores


def test_available_cores_is_capped_by_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 2.5)
    assert threads.available_cores() == 3
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)
    assert threads.available_cores() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert threads.available_cores() == 1


def test_configure_threads_sets_torch():
    got = _run(
        "import json, torch, ee_vla.threads as t; n = t.configure_threads(2, reserve=0);"
        "print(json.dumps([n, torch.get_num_threads(), torch.get_num_interop_threads()]))"
    )
    assert got == [2, 2, 1]
    auto = _run(
        "import json, torch, ee_vla.threads as t; n = t.configure_threads(0, reserve=1);"
        "print(json.dumps([n, torch.get_num_threads(), t.available_cores()]))"
    )
    assert auto[0] == auto[1] == max(1, auto[2] - 1)


def test_importing_ee_vla_makes_openmp_threads_sleep_before_torch_loads():
    got = _run("import json, os, ee_vla, torch; print(json.dumps(os.environ.get('OMP_WAIT_POLICY')))")
    assert got == "PASSIVE"
    # a user's choice is kept
    kept = _run("import json, os, ee_vla; print(json.dumps(os.environ['OMP_WAIT_POLICY']))", OMP_WAIT_POLICY="ACTIVE")
    assert kept == "ACTIVE"


def test_sim_envs_limits_mesa_threads_unless_set():
    code = "import json, os, sim_envs; print(json.dumps(os.environ.get('LP_NUM_THREADS')))"
    assert _run(code) == "0"
    assert _run(code, LP_NUM_THREADS="4") == "4"


def test_eval_and_bench_configs_take_threads(tmp_path):
    from ee_vla.benchmarks.decode_bench import DecodeBenchConfig
    from ee_vla.evaluation import EvalConfig
    from ee_vla.runtime import RuntimeConfig

    with pytest.raises(ValueError, match="RuntimeConfig.threads"):
        RuntimeConfig(threads=-1, device="cpu")
    with pytest.raises(ValueError, match="RuntimeConfig.threads"):
        DecodeBenchConfig(runtime=RuntimeConfig(threads=-2))
    assert EvalConfig(policy=tmp_path, runtime=RuntimeConfig(threads=2, device="cpu")).runtime.threads == 2


def test_training_threads_leave_the_loader_workers_and_split_among_local_ranks(monkeypatch):
    from ee_vla.training import loop

    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loop.training_threads(0, num_workers=2) == 6
    assert loop.training_threads(3, num_workers=2) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loop.training_threads(0, num_workers=0) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert loop.training_threads(0) == 1


def test_dagger_passes_threads_to_its_rollouts(tmp_path):
    from ee_vla.training.dagger import DaggerConfig

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    from ee_vla.runtime import RuntimeConfig

    cfg = DaggerConfig(policy=tmp_path / "m", out=tmp_path / "out", runtime=RuntimeConfig(threads=1, device="cpu"))
    assert cfg.eval_config().runtime.threads == 1
