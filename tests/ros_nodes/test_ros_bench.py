"""`python -m ros_nodes.bench --mode soak`, for a few seconds: it runs end to end and reports what it
promises (no timing assertions: the figures are the benchmark's output, not pass/fail)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("cyclonedds")


@pytest.mark.timeout(300)
def test_soak_mode_reports_memory_delivery_and_bad_inputs(tmp_path):
    from ros_nodes.bench import BAD_INPUT_KINDS, RosBenchConfig, proprio_dim, run_bench, shipped_policy_dir

    assert proprio_dim(shipped_policy_dir()) == 7  # the shipped policy reads agent_pos: joint states are sent
    cfg = RosBenchConfig(
        mode="soak",
        duration_s=4.0,
        camera_hz=10.0,
        control_hz=10.0,
        image_timeout_s=1.0,
        image_size=128,
        bad_input_every_s=0.3,
        rss_every_s=1.0,
        domain_id=150 + os.getpid() % 30,
        out=str(tmp_path / "soak.json"),
    )
    result = run_bench(cfg)
    assert json.loads((tmp_path / "soak.json").read_text()) == json.loads(json.dumps(result))
    assert result["checks"] == {
        "server_alive_throughout": True,
        "every_bad_input_counted": True,
        "no_model_errors": True,
    }
    assert set(result["bad_inputs_sent_by_kind"]) == set(BAD_INPUT_KINDS)
    assert all(n > 0 for n in result["bad_inputs_sent_by_kind"].values())
    assert result["bad_inputs_counted_by_server"] >= result["bad_inputs_sent"] > 0
    assert result["commands_received_total"] > 0 and result["commands_sent_by_server"] > 0
    assert len(result["rss_samples"]) >= 2 and result["rss_server"]["start_mb"] > 0
    assert result["rss_policy_process"]["start_mb"] > 0  # the policy's child process is measured too
    assert int(result["deadline_misses"]) >= 0 and int(result["chunks_done"]) > 0
