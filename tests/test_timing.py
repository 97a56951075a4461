"""`ee_vla.timing`: deterministic values in, statistics out (no assertions on measured times)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ee_vla.timing import (
    LatencyRecorder,
    cuda_ms_back_to_back,
    environment_info,
    summarize,
    synchronize,
    time_call,
)


def test_summarize_known_percentiles():
    s = summarize([float(i) for i in range(1, 101)])  # 1..100
    assert s["n"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"]) == (1.0, 100.0)


def test_summarize_matches_numpy_and_ignores_order():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=257).tolist()
    s = summarize(x[::-1])
    for p in (50, 95, 99):
        assert s[f"p{p}"] == pytest.approx(float(np.percentile(x, p)))


def test_summarize_single_and_empty():
    s = summarize([0.25])
    assert s["p50"] == s["p99"] == s["mean"] == 0.25
    e = summarize([])
    assert e["n"] == 0 and math.isnan(e["p50"]) and math.isnan(e["mean"])


def test_recorder_summary_in_seconds_and_ms():
    rec = LatencyRecorder()
    rec.extend([0.010, 0.020, 0.030, 0.040])
    assert len(rec) == 4
    assert rec.total == pytest.approx(0.1)
    assert rec.summary()["mean"] == pytest.approx(0.025)
    ms = rec.summary_ms()
    assert ms["n"] == 4
    assert ms["mean"] == pytest.approx(25.0)
    assert ms["p50"] == pytest.approx(25.0)
    assert ms["max"] == pytest.approx(40.0)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_recorder_rejects_bad_durations(bad):
    with pytest.raises(ValueError, match="finite and >= 0"):
        LatencyRecorder().add(bad)


def test_recorder_time_context_records_once_even_on_error():
    rec = LatencyRecorder()
    with rec.time("cpu"):
        pass
    with pytest.raises(KeyError), rec.time(None):
        raise KeyError("boom")
    assert len(rec) == 2 and all(s >= 0 for s in rec.samples)


def test_time_call_warms_up_then_times_iters():
    calls = []
    rec = time_call(lambda: calls.append(1), warmup=3, iters=5, device="cpu")
    assert len(calls) == 8
    assert len(rec) == 5


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"iters": 0}])
def test_time_call_validates(kwargs):
    with pytest.raises(ValueError):
        time_call(lambda: None, **kwargs)


def test_synchronize_is_a_noop_on_cpu():
    synchronize(None)
    synchronize("cpu")


def test_environment_info_names_device_dtype_and_versions():
    info = environment_info("cpu", "float32")
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert isinstance(info["device_name"], str) and info["device_name"]
    assert info["versions"]["torch"] and info["versions"]["numpy"]
    assert "transformers" in info["versions"]


def test_cuda_back_to_back_timing_validates_iters_before_calling():
    calls = []
    with pytest.raises(ValueError, match="iters must be >= 1"):
        cuda_ms_back_to_back(lambda: calls.append(1), 0)
    assert calls == []
