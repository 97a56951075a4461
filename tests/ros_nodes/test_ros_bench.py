"""`python -m ros_nodes.bench --mode soak`, for a few seconds: it runs end to end and reports what it
promises (no timing assertions: the figures are the benchmark's output, not pass/fail)."""

from __future__ import annotations

import json

import pytest
from domains import claim_domain_id

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
        domain_id=claim_domain_id(),
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


def _transports() -> tuple[str, ...]:
    import importlib.util
    import shutil

    ros = importlib.util.find_spec("rclpy") is not None and shutil.which("ros2") is not None
    return ("dds", "rclpy-multi", "rclpy-single") if ros else ("dds",)


@pytest.mark.timeout(400)
def test_rate_mode_measures_each_transport_in_one_run(tmp_path):
    """Rate mode, 2 s at 100 Hz: every transport (the rclpy node's on a multi- and a single-threaded
    executor where ROS 2 is installed) delivers its commands to the same robot side, and the table
    puts them side by side."""
    from ros_nodes.bench import RosBenchConfig, format_table, run_bench

    transports = _transports()
    cfg = RosBenchConfig(
        duration_s=2.0,
        control_hz=100.0,
        latency_trials=2,
        transports=transports,
        threads=1,
        domain_id=claim_domain_id(),
        out=str(tmp_path / "rate.json"),
    )
    result = run_bench(cfg)
    assert json.loads((tmp_path / "rate.json").read_text()) == json.loads(json.dumps(result))
    assert list(result["runs"]) == list(transports)
    for name, run in result["runs"].items():
        assert run["commands_sent_by_server"] > 0 and run["commands_received_total"] > 0, (name, run)
        assert run["delivered_fraction"] is not None and run["commands_in_window"] > 0, (name, run)
        assert run["latency_trials"] >= 1 and run["server_decode_latency_p50_ms"] is not None, (name, run)
    table = format_table(result["runs"])
    assert all(name in table.splitlines()[0] for name in transports) and "jitter p50 / p99" in table
