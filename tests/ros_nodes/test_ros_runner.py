"""PolicyRunner: scheduling glue, deadlines, halting, bad inputs, model failures (fake clock, fake policy)."""

import logging
import threading
import time

import numpy as np
import pytest
from ros_fakes import FakePolicy, action_value, wait_until

from ros_nodes.images import rgb_to_fields
from ros_nodes.params import PolicyParams
from ros_nodes.runner import PolicyRunner

IMG = np.zeros((16, 16, 3), np.uint8)


def make(clock, policy, threaded=False, **params):
    """A configured, active runner; it decodes every new image (`chunk_size_threshold` 1) unless told otherwise."""
    kw = dict(
        instruction="pick up the cube", control_hz=10.0, image_timeout_s=0.5, warmup=False, chunk_size_threshold=1.0
    )
    kw.update(params)
    r = PolicyRunner(PolicyParams(**kw), lambda p: policy, clock=clock, threaded=threaded)
    r.configure()
    r.activate()
    return r


def run_ticks(r, clock, n, dt=0.1):
    out = []
    for _ in range(n):
        out.append(r.tick())
        clock.advance(dt)
    return out


def test_streams_actions_as_due_then_holds(clock, fake_policy):
    r = make(clock, fake_policy)
    assert r.tick() is None  # nothing received yet: nothing sent
    r.on_image(IMG)
    assert r.process_pending()
    emits = run_ticks(r, clock, 5)
    assert [e.source for e in emits] == ["chunk"] * 4 + ["hold"]
    for i, e in enumerate(emits[:4]):
        assert e.kind == "action" and np.allclose(e.actions, action_value(1, i))
    obs = fake_policy.calls[0]
    assert obs["instruction"] == "pick up the cube" and obs["pixels"].shape == (16, 16, 3)
    assert "agent_pos" not in obs


def test_policy_is_told_action_deadlines(clock, fake_policy):
    r = make(clock, fake_policy, decode_deadline_s=0.3)
    r.on_image(IMG, now=clock())
    t_img = clock()
    r.process_pending()
    deadline = fake_policy.deadlines[0]
    # Once the chunk started (its first action at t_img), action i is due at t_img + i * dt.
    assert deadline(0) == pytest.approx(t_img) and deadline(3) == pytest.approx(t_img + 0.3)


def test_deadline_before_first_action_is_the_decode_budget(clock):
    seen = []

    class Probe(FakePolicy):
        def stream_action_chunk(self, obs, action_deadline=None):
            seen.append((action_deadline(0), action_deadline(2)))
            yield from super().stream_action_chunk(obs, action_deadline)

    r = make(clock, Probe(clock=clock), decode_deadline_s=0.3)
    r.on_image(IMG)
    t_img = clock()
    r.process_pending()
    assert seen[0] == (pytest.approx(t_img + 0.3), pytest.approx(t_img + 0.3 + 0.2))


def test_late_first_action_drops_the_chunk(clock):
    class Slow(FakePolicy):
        def stream_action_chunk(self, obs, action_deadline=None):
            clock.advance(0.5)  # decoding took longer than the budget
            yield from super().stream_action_chunk(obs, action_deadline)

    r = make(clock, Slow(clock=clock), decode_deadline_s=0.3, image_timeout_s=5.0)
    r.on_image(IMG)
    r.process_pending()
    assert r.deadline_misses == 1 and r.chunks_dropped == 1
    assert r.tick() is None
    assert r.status().values["deadline_misses"] == "1"


def test_newest_image_wins(clock, fake_policy):
    r = make(clock, fake_policy)
    a, b = IMG.copy(), IMG.copy()
    b[0, 0] = 255
    r.on_image(a)
    r.on_image(b)
    assert r.process_pending()
    assert not r.process_pending()  # the older one is never decoded
    assert len(fake_policy.calls) == 1 and fake_policy.calls[0]["pixels"][0, 0, 0] == 255


def test_clipping_to_limits(clock):
    pol = FakePolicy(clock=clock, values=lambda c, i: np.array([5.0, -5.0, 0.2, 0, 0, 0, 1.0]))
    r = make(clock, pol, action_low=(-0.5,) * 7, action_high=(0.5,) * 7)
    r.on_image(IMG)
    r.process_pending()
    e = r.tick()
    assert e.actions.tolist() == [0.5, -0.5, 0.2, 0, 0, 0, 0.5]


def test_limits_must_match_the_policy(clock, fake_policy):
    r = PolicyRunner(PolicyParams(action_low=(-1.0,) * 6, action_high=(1.0,) * 6), lambda p: fake_policy, clock=clock)
    with pytest.raises(ValueError, match="6 values but the policy outputs 7"):
        r.configure()
    assert r.state == "unconfigured"


def test_stale_input_sends_one_stop_then_nothing_then_resumes(clock, fake_policy):
    r = make(clock, fake_policy, keep_dims_on_zero=(6,))
    r.on_image(IMG)
    r.process_pending()
    run_ticks(r, clock, 6)  # the image is now 0.6 s old (> image_timeout_s)
    stop = r.tick()
    assert stop.kind == "stop" and stop.source == "stop:stale input"
    assert stop.actions[:6].tolist() == [0.0] * 6 and stop.actions[6] == 0.5  # gripper kept
    assert all(e is None for e in run_ticks(r, clock, 3))
    assert r.status().values["watchdog"] == "stale" and r.status().level == 1
    r.on_image(IMG)
    r.process_pending()
    e = r.tick()
    assert e.kind == "action" and e.source == "chunk" and np.allclose(e.actions, action_value(2, 0))


def test_deactivate_returns_stop_and_stops_commanding(clock, fake_policy):
    r = make(clock, fake_policy)
    r.on_image(IMG)
    r.process_pending()
    r.tick()
    stop = r.deactivate()
    assert stop.kind == "stop" and not stop.actions.any()
    assert r.tick() is None and r.state == "inactive"
    r.cleanup()
    assert r.policy is None and r.state == "unconfigured"


def test_deactivate_before_any_command_sends_nothing(clock, fake_policy):
    r = make(clock, fake_policy)
    assert r.deactivate() is None


def test_model_exception_is_reported_and_node_recovers(clock, caplog):
    pol = FakePolicy(clock=clock, fail=RuntimeError("CUDA out of memory"), fail_when=lambda call: call in (2, 3))
    r = make(clock, pol, image_timeout_s=10.0)
    r.on_image(IMG)
    r.process_pending()
    assert r.tick().source == "chunk"
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            r.on_image(IMG)
            assert not r.process_pending()
    assert r.model_errors == 2 and "CUDA out of memory" in r.last_error
    assert sum("CUDA out of memory" in m for m in caplog.messages) == 1  # logged once per cause
    stop = r.tick()
    assert stop.kind == "stop" and stop.source == "stop:model error"
    assert r.tick() is None
    st = r.status()
    assert st.level == 2 and "CUDA out of memory" in st.message
    r.on_image(IMG)
    assert r.process_pending()  # the 4th call works again
    assert r.tick().kind == "action"


def test_nan_from_policy_is_a_model_error_and_nothing_is_sent(clock):
    pol = FakePolicy(clock=clock, values=lambda c, i: np.full(7, np.nan))
    r = make(clock, pol)
    r.on_image(IMG)
    assert not r.process_pending()
    assert r.model_errors == 1 and "NaN" in r.last_error
    assert r.tick() is None


def test_bad_inputs_are_logged_once_and_ignored(clock, fake_policy, caplog):
    r = make(clock, fake_policy, use_joint_state=True, joint_names=("a", "b"))
    bad = rgb_to_fields(IMG)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert not r.on_image_fields(16, 16, "yuv422", 32, bad["data"])
            assert not r.on_image_fields(16, 16, "rgb8", 48, b"\0" * 10)
            assert not r.on_instruction("   ")
            assert not r.on_joint_state(["a", "b"], [0.0, float("nan")])
            assert not r.on_joint_state(["a"], [0.0])
    assert sum("yuv422" in m for m in caplog.messages) == 1
    assert sum("data has 10 bytes" in m for m in caplog.messages) == 1
    assert sum("empty instruction" in m for m in caplog.messages) == 1
    assert sum("NaN" in m for m in caplog.messages) == 1
    assert sum("without joints ['b']" in m for m in caplog.messages) == 1
    assert r.images_received == 0 and r.tick() is None
    assert r.status().values["bad_inputs"] == "15"
    # The previous instruction stays; joint state required before decoding.
    r.on_image(IMG)
    assert not r.process_pending() and fake_policy.calls == []
    assert r.on_joint_state(["b", "a", "c"], [2.0, 1.0, 9.0])
    r.on_image(IMG)
    assert r.process_pending()
    assert fake_policy.calls[0]["agent_pos"].tolist() == [1.0, 2.0]


def test_wrong_image_size_is_rejected(clock, fake_policy):
    r = make(clock, fake_policy, image_width=32, image_height=32)
    f = rgb_to_fields(IMG)
    assert not r.on_image_fields(f["height"], f["width"], f["encoding"], f["step"], f["data"])
    assert "image:size:unexpected" in r.causes.counts


def test_no_instruction_no_decoding(clock, fake_policy, caplog):
    r = make(clock, fake_policy, instruction="")
    r.on_image(IMG)
    with caplog.at_level(logging.INFO):
        assert not r.process_pending()
    assert fake_policy.calls == [] and "no instruction yet" in caplog.text
    assert r.bad_inputs() == 0  # waiting for the first instruction is not a bad input
    assert r.on_instruction("  stack the blocks ")
    r.on_image(IMG)
    assert r.process_pending() and fake_policy.calls[0]["instruction"] == "stack the blocks"


def test_trajectory_mode_sends_whole_chunks(clock, fake_policy):
    names = tuple(f"j{i}" for i in range(7))
    r = make(clock, fake_policy, command_type="trajectory", joint_names=names)
    r.on_image(IMG)
    r.process_pending()
    e = r.tick()
    assert e.kind == "trajectory" and e.actions.shape == (4, 7) and e.dt == pytest.approx(0.1)
    assert np.allclose(e.actions[2], action_value(1, 2))
    assert r.tick() is None  # each chunk once
    clock.advance(0.25)
    stop = r.deactivate()  # hold where the plan is now: point 2
    assert stop.kind == "stop" and np.allclose(stop.actions, action_value(1, 2))


def test_trajectory_joint_names_must_match_policy(clock, fake_policy):
    r = PolicyRunner(
        PolicyParams(command_type="trajectory", joint_names=("a", "b")), lambda p: fake_policy, clock=clock
    )
    with pytest.raises(ValueError, match="joint_names has 2 names"):
        r.configure()


def test_live_parameter_update(clock, fake_policy):
    r = make(clock, fake_policy)
    later = r.update_params(
        PolicyParams(
            instruction="pick up the cube", control_hz=50.0, action_low=(0.0,) * 7, image_timeout_s=0.5, warmup=False
        )
    )
    assert later == ["control_hz"]
    assert r.params.control_hz == 10.0 and r.limits.low.tolist() == [0.0] * 7
    with pytest.raises(ValueError, match="policy outputs 7"):
        r.update_params(PolicyParams(action_low=(0.0,) * 8, action_high=(1.0,) * 8))


def test_status_reports_latency_and_iterations(clock, fake_policy):
    r = make(clock, fake_policy)
    for _ in range(3):
        r.on_image(IMG)
        r.process_pending()
        r.record_sent()
        clock.advance(0.1)
    v = r.status().values
    assert v["chunks_done"] == "3" and v["iterations_per_chunk_mean"] == "4.00"
    assert v["decode_latency_p50_ms"] == "0.00" and v["commands_sent"] == "3" and v["watchdog"] == "ok"


def test_threaded_worker_decodes_in_background():
    gate = threading.Semaphore(0)
    pol = FakePolicy(gate=gate)
    r = PolicyRunner(PolicyParams(instruction="go", image_timeout_s=30.0, warmup=False), lambda p: pol, threaded=True)
    r.configure()
    r.activate()
    r.on_image(IMG)
    for _ in range(4):
        gate.release()
    assert r.wait_for_chunks(1, timeout=10)
    assert r.tick().kind == "action"
    assert r.deactivate().kind == "stop"
    assert r._worker is None


def test_policy_needing_proprio_requires_joint_state(clock, fake_policy):
    fake_policy.vla = type("V", (), {"proprio_dim": 3})()
    r = PolicyRunner(PolicyParams(), lambda p: fake_policy, clock=clock)
    with pytest.raises(ValueError, match="use_joint_state=true"):
        r.configure()


def test_configure_warms_the_policy_up_with_a_blank_image(clock):
    pol = FakePolicy(clock=clock)
    r = PolicyRunner(PolicyParams(instruction="stack the cups"), lambda p: pol, clock=clock)
    r.configure()
    assert len(pol.calls) == 2 and pol.resets == 1  # a cold and a warm decode, then the policy is reset
    obs = pol.calls[0]
    assert obs["instruction"] == "stack the cups" and "agent_pos" not in obs
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8 and not obs["pixels"].any()
    r.activate()
    r.on_image(IMG)
    assert r.process_pending() and len(pol.calls) == 3  # the first real chunk is the next call
    # no instruction set yet: a stand-in one; a policy with proprio gets zeros as agent_pos
    pol = FakePolicy(clock=clock)
    pol.vla = type("V", (), {"proprio_dim": 3})()
    PolicyRunner(PolicyParams(use_joint_state=True), lambda p: pol, clock=clock).configure()
    assert pol.calls[0]["instruction"] == PolicyRunner.WARMUP_INSTRUCTION
    assert pol.calls[0]["agent_pos"].tolist() == [0.0, 0.0, 0.0]


class _ShortPolicy(FakePolicy):
    """Claims its chunk_size but streams one action fewer."""

    def stream_action_chunk(self, obs, action_deadline=None):
        yield from list(super().stream_action_chunk(obs, action_deadline))[:-1]


@pytest.mark.parametrize(
    "policy, match",
    [
        (FakePolicy(fail=RuntimeError("out of memory")), "warm-up decode failed: RuntimeError: out of memory"),
        (_ShortPolicy(chunk_size=5), "gave 4 actions, the policy's chunk_size is 5"),
    ],
)
def test_a_failed_warm_up_fails_configure_with_the_reason(clock, policy, match):
    closed = []
    policy.close = lambda: closed.append(True)  # a policy process is stopped, not leaked
    r = PolicyRunner(PolicyParams(instruction="go"), lambda p: policy, clock=clock)
    with pytest.raises(RuntimeError, match=match):
        r.configure()
    assert r.state == "unconfigured" and r.policy is None and closed == [True]


@pytest.mark.parametrize("guess_in_prefill", [False, True])
def test_warm_up_builds_the_shipped_policys_engine_before_the_first_image(clock, guess_in_prefill):
    """The real policy on the static engine: configure's warm-up decodes leave its engine built,
    with the prefill of a warm call among its shapes when the guess runs in the prefill."""
    import ee_vla
    from ros_nodes.runner import load_policy

    model = ee_vla.DEFAULT_POLICY
    params = PolicyParams(
        model_path=str(model),
        engine="static",
        policy_process=False,
        instruction="reach the cube",
        use_joint_state=True,
        guess_in_prefill=guess_in_prefill,
    )
    r = PolicyRunner(params, load_policy, clock=clock)
    r.configure()
    assert list(r.policy._prefill.engines) == [1]  # batch 1, built by the warm-up
    windows = {L for _, L in r.policy._prefill.engines[1]._prompts}
    assert windows == ({0, r.policy.vla.n_action_tokens - 1} if guess_in_prefill else {0})
    assert r.policy.warm_start_tokens is None  # and the policy was reset after it


@pytest.mark.parametrize("policy_process", [False, True])
def test_a_corrupt_calibration_fails_configure_with_the_reason(clock, tmp_path, policy_process):
    """`calibration` naming a file that is not one: configure fails with what is wrong with it (in
    the node's process or the policy's child process) and the runner stays unconfigured."""
    import ee_vla
    from ros_nodes.runner import load_policy

    bad = tmp_path / "calibration.json"
    bad.write_text('{"layers": {"model.x": {"amax": "big"}}}')
    model = ee_vla.DEFAULT_POLICY
    params = PolicyParams(
        model_path=str(model),
        policy_process=policy_process,
        quantize="fp8_tensor",
        calibration=str(bad),
        instruction="reach the cube",
        use_joint_state=True,
    )
    r = PolicyRunner(params, load_policy, clock=clock)
    with pytest.raises(Exception, match="calibration.json is not a calibration"):
        r.configure()
    assert r.state == "unconfigured" and r.policy is None


def test_observation_error_is_bad_input_not_a_model_error(clock, caplog):
    from ee_vla.policy import ObservationError

    pol = FakePolicy(clock=clock, fail=ObservationError("'instruction' has 900 tokens, over the cap of 256"))
    r = make(clock, pol, image_timeout_s=10.0, decode_deadline_s=1.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r.on_image(IMG)
            assert not r.process_pending()
            clock.advance(0.6)
    assert r.model_errors == 0 and r.last_error == "" and r.causes.counts["obs:rejected"] == 3
    assert sum("over the cap of 256" in m for m in caplog.messages) == 1
    assert r.tick() is None  # no halt, no stop command: nothing was ever commanded
    st = r.status()
    assert st.values["bad_inputs"] == "3" and st.values["model_errors"] == "0"
    assert st.level == 1 and "over the cap of 256" in st.message  # no chunk finished: says why


def test_over_long_instruction_is_rejected_before_decoding(clock, fake_policy, caplog):
    r = make(clock, fake_policy)
    with caplog.at_level(logging.WARNING):
        assert not r.on_instruction("pick " * 20_000)
    assert "100000 characters, over the limit of 2000" in caplog.text
    assert r.status().values["bad_inputs"] == "1"
    r.on_image(IMG)
    assert r.process_pending() and fake_policy.calls[0]["instruction"] == "pick up the cube"
    assert r.on_instruction("x" * PolicyRunner.MAX_INSTRUCTION_CHARS)


def test_undecodable_sample_counts_as_bad_input(clock, fake_policy):
    r = make(clock, fake_policy)
    r.on_bad_sample("instruction", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    v = r.status().values
    assert (
        v["bad_inputs"] == "1" and "instruction" in v["last_bad_input"] and "UnicodeDecodeError" in v["last_bad_input"]
    )


def test_a_stalled_decode_is_a_deadline_miss_then_warn_then_error(clock):
    """Images keep coming, the decode never produces its first action: WARN past decode_deadline_s,
    ERROR past STALL_ERROR_FACTOR times it, one deadline miss counted while it is still running."""
    gate = threading.Semaphore(0)
    pol = FakePolicy(clock=clock, gate=gate)
    r = make(clock, pol, decode_deadline_s=1.0, image_timeout_s=0.5)
    r.on_image(IMG)
    worker = threading.Thread(target=r.process_pending, daemon=True)
    worker.start()
    st = r.status()
    assert st.level == 0 and st.values["deadline_misses"] == "0"
    for _ in range(8):  # 2 s of images at 4 Hz
        clock.advance(0.25)
        r.on_image(IMG)
    st = r.status()
    assert st.level == 1 and "no chunk finished for 2.0 s" in st.message and "decoding chunk 1" in st.message
    assert st.values["deadline_misses"] == "1" and st.values["no_chunk_for_s"] == "2.0"
    for _ in range(16):
        clock.advance(0.25)
        r.on_image(IMG)
    st = r.status()
    assert st.level == 2 and st.values["deadline_misses"] == "1"
    for _ in range(4):
        gate.release()
    worker.join(10)
    assert r.deadline_misses == 1 and r.chunks_dropped == 1  # counted once, not again when it ended
    for _ in range(4):
        gate.release()
    assert r.process_pending() and r.chunks_done == 1
    st = r.status()
    assert st.level == 0 and st.values["no_chunk_for_s"] == "n/a"


def test_distinct_bogus_encodings_log_once_and_keep_one_key(clock, fake_policy, caplog):
    r = make(clock, fake_policy)
    with caplog.at_level(logging.WARNING):
        for i in range(20_000):
            assert not r.on_image_fields(16, 16, f"bogus-{i}", 48, b"")
    assert r.causes.counts == {"image:encoding": 20_000}
    assert sum("unsupported image encoding" in m for m in caplog.messages) == 1
    assert r.status().values["bad_inputs"] == "20000"


def test_chunk_size_threshold_decodes_once_the_plan_runs_short(clock, fake_policy):
    """chunk_size_threshold 0.5: 4-action chunks at 10 Hz (0.4 s): the next decode waits until the
    plan holds 0.2 s, whatever images arrive meanwhile; the wait is no stall; at 1 every image decodes."""
    r = make(clock, fake_policy, chunk_size_threshold=0.5, decode_deadline_s=0.15, image_timeout_s=5.0)
    r.on_image(IMG)
    assert r.process_pending()  # nothing planned yet: decode now
    t0 = clock()
    for _ in range(2):
        assert r.tick().source == "chunk"
        clock.advance(0.05)
        r.on_image(IMG)
        assert not r.process_pending()  # 0.4 - 0.05 s planned and more: not yet
        clock.advance(0.05)
    assert clock() == pytest.approx(t0 + 0.2)
    st = r.status()
    assert st.level == 0 and st.values["no_chunk_for_s"] == "n/a"  # held back, not stalled
    r.on_image(IMG)
    assert r.process_pending() and len(fake_policy.calls) == 2  # 0.2 s left: decode the newest
    # The new chunk replaced the rest of the old one; its first action is sent now.
    e = r.tick()
    assert e.chunk_id == 2 and np.allclose(e.actions, action_value(2, 0))
    # At 1 every new image is decoded as soon as the decoder is free.
    every = make(clock, FakePolicy(clock=clock))
    for _ in range(3):
        every.on_image(IMG)
        assert every.process_pending()
        clock.advance(0.05)


def test_chunk_size_threshold_stall_clock_starts_when_the_decode_is_due(clock):
    gate = threading.Semaphore(4)
    pol = FakePolicy(clock=clock, gate=gate)
    r = make(clock, pol, chunk_size_threshold=0.25, decode_deadline_s=0.15, image_timeout_s=5.0)
    r.on_image(IMG)
    assert r.process_pending()
    r.tick()  # the chunk starts: planned until +0.4 s, the next decode due at +0.3 s
    clock.advance(0.3)
    r.on_image(IMG)
    assert r.status().values["no_chunk_for_s"] == "n/a"
    worker = threading.Thread(target=r.process_pending, daemon=True)
    worker.start()  # due: it decodes, and hangs before its first action
    assert wait_until(lambda: len(pol.calls) == 2)
    clock.advance(0.2)
    r.on_image(IMG)
    st = r.status()
    assert st.level == 1 and st.values["no_chunk_for_s"] == "0.2"
    for _ in range(4):
        gate.release()
    worker.join(10)


def test_chunk_size_threshold_in_trajectory_mode_counts_the_trajectory_sent(clock, fake_policy):
    names = tuple(f"j{i}" for i in range(7))
    r = make(clock, fake_policy, command_type="trajectory", joint_names=names, chunk_size_threshold=0.5)
    r.on_image(IMG)
    assert r.process_pending()
    r.on_image(IMG)
    assert not r.process_pending()  # decoded, not sent yet: a whole chunk is planned
    assert r.tick().kind == "trajectory"  # sent now: 0.4 s planned
    clock.advance(0.15)
    r.on_image(IMG)
    assert not r.process_pending()
    clock.advance(0.05)
    assert r.process_pending() and len(fake_policy.calls) == 2


def test_chunk_size_threshold_is_checked():
    with pytest.raises(ValueError, match="chunk_size_threshold: must be in \\[0, 1\\]"):
        PolicyParams(chunk_size_threshold=1.5)
    with pytest.raises(ValueError, match="chunk_size_threshold"):
        PolicyParams(chunk_size_threshold=float("nan"))


def test_threaded_worker_with_a_threshold_decodes_about_once_per_chunk():
    """Images at 100 Hz for 1.2 s, 4-action chunks at 10 Hz: with chunk_size_threshold 0.5 the worker
    decodes once per 0.2 s of plan (about 6 times; fewer on a slow machine), at 1 far more often."""
    counts = {}
    for threshold in (0.5, 1.0):
        pol = FakePolicy()
        params = PolicyParams(
            instruction="go", image_timeout_s=30.0, warmup=False, control_hz=10.0, chunk_size_threshold=threshold
        )
        r = PolicyRunner(params, lambda p, pol=pol: pol, threaded=True)
        r.configure()
        r.activate()
        stop = time.monotonic() + 1.2
        while time.monotonic() < stop:
            r.on_image(IMG)
            r.tick()
            time.sleep(0.01)
        r.deactivate()
        counts[threshold] = len(pol.calls)
    assert 1 <= counts[0.5] <= 8
    assert counts[1.0] > counts[0.5]


def test_the_warm_start_shift_is_the_control_periods_between_the_images(clock, fake_policy):
    """The policy predicts a chunk from its image's time on: the next call's warm guess is the last
    chunk shifted by the control periods (10 Hz) from its image to the new one, at most a chunk."""
    r = make(clock, fake_policy, image_timeout_s=5.0)
    for dt in (0.0, 0.2, 0.1, 1.0):
        clock.advance(dt)
        r.on_image(IMG)
        assert r.process_pending()
    assert fake_policy.shifts == [None, 2, 1, 4]  # none before the first chunk; 1 s is capped at the chunk (4)
    r.deactivate()
    r.activate()  # the policy was reset: no chunk to shift
    r.on_image(IMG)
    assert r.process_pending() and fake_policy.shifts[-1] is None


def test_a_dropped_chunk_does_not_move_the_warm_start_reference(clock):
    class Slow(FakePolicy):
        def stream_action_chunk(self, obs, action_deadline=None):
            if len(self.calls) == 1:  # the second call comes too late: dropped
                clock.advance(0.35)
            yield from super().stream_action_chunk(obs, action_deadline)

    pol = Slow(clock=clock, chunk_size=8)
    r = make(clock, pol, decode_deadline_s=0.3, image_timeout_s=5.0)
    r.on_image(IMG)
    t0 = clock()
    assert r.process_pending()  # chunk 1 from the image at t0
    clock.advance(0.1)
    r.on_image(IMG)
    r.process_pending()  # chunk 2 from the image at t0 + 0.1: its first action 0.35 s later, dropped
    assert r.chunks_dropped == 1
    clock.advance(0.05)
    r.on_image(IMG)
    assert clock() == pytest.approx(t0 + 0.5)
    assert r.process_pending()
    assert pol.shifts == [None, 1, 5]  # from chunk 1's image (t0), not the dropped chunk's (4 periods)


def test_a_chunk_whose_actions_all_fell_due_while_it_decoded_is_dropped_and_named(clock, caplog):
    """chunk_start observation, a 4-action chunk at 10 Hz decoded in 0.45 s: none of its actions
    can run (the last was due until 0.4 s after the image), so it is dropped, counted and its cause
    logged with what to change; nothing is sent. With arrival the same chunk runs from action 0."""

    class Slower(FakePolicy):
        def stream_action_chunk(self, obs, action_deadline=None):
            clock.advance(0.45)
            yield from super().stream_action_chunk(obs, action_deadline)

    r = make(clock, Slower(clock=clock), image_timeout_s=5.0)
    with caplog.at_level(logging.WARNING):
        r.on_image(IMG)
        r.process_pending()
    assert r.chunks_dropped == 1 and r.deadline_misses == 0
    assert "all of its actions had fallen due" in caplog.text and "chunk_start arrival" in caplog.text
    assert [e for e in run_ticks(r, clock, 4) if e is not None] == []
    late = make(clock, Slower(clock=clock), image_timeout_s=5.0, chunk_start="arrival")
    late.on_image(IMG)
    late.process_pending()
    assert late.chunks_dropped == 0
    assert [e.source for e in run_ticks(late, clock, 4)] == ["chunk"] * 4


@pytest.mark.parametrize("decoder, options", [("ceed_cap", {}), ("ceed", {"max_iterations": 1}), ("jacobi", {})])
def test_capped_or_cold_decoders_keep_the_policys_own_shift(clock, fake_policy, decoder, options):
    """A capped decode keeps part of its guess: its runner leaves the shift to the policy
    (n_action_steps), as it was evaluated; jacobi's `repeat` guess has nothing to shift."""
    r = make(clock, fake_policy, image_timeout_s=5.0, decoder=decoder, **options)
    for dt in (0.0, 0.2):
        clock.advance(dt)
        r.on_image(IMG)
        assert r.process_pending()
    assert fake_policy.shifts == [None, None]


@pytest.mark.parametrize("chunk_start", ["arrival", "observation"])
def test_a_chunk_starts_at_its_arrival_or_at_its_images_time(clock, chunk_start):
    """A chunk decoded in 0.25 s (2.5 control periods) at 10 Hz: started at its arrival, its action 0
    runs first; started at its image's time, actions 0-1 fell due while it decoded and the first
    tick sends action 2 (planned for 0.2 s after the image, due until 0.3 s)."""

    class Slow(FakePolicy):
        def stream_action_chunk(self, obs, action_deadline=None):
            clock.advance(0.25)
            yield from super().stream_action_chunk(obs, action_deadline)

    r = make(clock, Slow(clock=clock), chunk_start=chunk_start, image_timeout_s=5.0)
    r.on_image(IMG)
    r.process_pending()
    emits = [e for e in run_ticks(r, clock, 4) if e is not None]
    first = 0 if chunk_start == "arrival" else 2
    sent = list(range(first, 4))
    assert [e.source for e in emits] == ["chunk"] * len(sent) + ["hold"] * (4 - len(sent))
    for i, e in zip(sent, emits, strict=False):
        assert np.allclose(e.actions, action_value(1, i))
