"""ChunkSchedule with a fake clock: due actions, late actions, overlap policies, empty queue."""

import threading

import numpy as np
import pytest

from ee_vla.streaming import ChunkSchedule, ScheduleConfig, StreamedAction


def act(i: int, value: float, t: float, dim: int = 2) -> StreamedAction:
    return StreamedAction(i, np.full(dim, value), np.zeros(dim, dtype=int), t, True, i)


def sched(**kw) -> ChunkSchedule:
    return ChunkSchedule(ScheduleConfig(control_hz=10.0, **kw), clock=lambda: 0.0)


def test_actions_are_due_at_t0_plus_i_dt_and_late_ones_repeat_the_previous():
    s = sched()
    assert s.tick(0.0).source == "none"  # nothing received yet: send nothing
    s.begin_chunk(0, 3)
    s.push(0, act(0, 1.0, t=1.0))
    assert s.deadline(0, 2) == pytest.approx(1.2)
    c = s.tick(1.05)
    assert (c.source, c.index, c.action[0]) == ("chunk", 0, 1.0)
    late = s.tick(1.1)  # action 1 due but not final yet
    assert (late.source, late.index, late.action[0]) == ("late", 1, 1.0)
    s.push(0, act(1, 2.0, t=1.12))
    assert s.tick(1.15).action[0] == 2.0
    s.push(0, act(2, 3.0, t=1.16))
    assert s.tick(1.2).action[0] == 3.0
    held = s.tick(1.31)  # chunk over, queue empty
    assert (held.source, held.action[0]) == ("hold", 3.0)


def test_replace_drops_the_rest_of_the_old_chunk():
    s = sched(on_new_chunk="replace")
    s.begin_chunk(0, 5)
    for i in range(5):
        s.push(0, act(i, 10 + i, t=0.0))
    assert s.tick(0.1).action[0] == 11
    s.begin_chunk(1, 5)
    s.push(1, act(0, 20, t=0.15))
    assert s.tick(0.16).action[0] == 20 and s.tick(0.16).chunk_id == 1


def test_hold_finishes_the_old_chunk_before_the_new_one_starts():
    s = sched(on_new_chunk="hold")
    s.begin_chunk(0, 3)
    for i in range(3):
        s.push(0, act(i, 10 + i, t=0.0))
    s.begin_chunk(1, 3)
    s.push(1, act(0, 20, t=0.05))
    assert s.deadline(1, 0) == pytest.approx(0.3)
    assert [s.tick(t).action[0] for t in (0.0, 0.1, 0.2, 0.3)] == [10, 11, 12, 20]


def test_a_chunk_started_at_its_observation_skips_the_actions_whose_time_passed():
    """Chunk 1 was decoded from an observation at 0.3 s and arrives at 0.42 s: its action 0 was
    planned for 0.3 s and action 1 for 0.4 s, so action 1 runs at once and action 0 never does;
    with arrival starts action 0 would run at 0.42 s."""
    for start, expected in (("observation", [12, 21, 22, 22]), ("arrival", [12, 20, 21, 22])):
        s = sched(chunk_start=start)
        s.begin_chunk(0, 3, observed_at=0.0)
        for i in range(3):
            s.push(0, act(i, 10 + i, t=0.01))
        assert s.deadline(0, 1) == pytest.approx(0.1 if start == "observation" else 0.11)
        assert s.tick(0.15).action[0] == 11
        s.begin_chunk(1, 3, observed_at=0.3)
        for i in range(3):
            s.push(1, act(i, 20 + i, t=0.42))
        assert s.deadline(1, 2) == pytest.approx(0.5 if start == "observation" else 0.62)
        assert [s.tick(t).action[0] for t in (0.25, 0.43, 0.53, 0.63)] == expected, start


def test_observation_starts_need_the_observation_time_and_no_hold():
    with pytest.raises(ValueError, match="chunk_start"):
        ScheduleConfig(chunk_start="image")
    with pytest.raises(ValueError, match="on_new_chunk='hold'"):
        ScheduleConfig(chunk_start="observation", on_new_chunk="hold")
    with pytest.raises(ValueError, match="observed_at"):
        sched(chunk_start="observation").begin_chunk(0, 3)


@pytest.mark.parametrize("mode", ["replace", "hold", "blend"])
def test_planned_until_is_the_end_of_the_last_scheduled_slot(mode):
    s = sched(on_new_chunk=mode)
    assert s.planned_until() is None
    s.begin_chunk(0, 3)
    assert s.planned_until() is None  # announced, not started
    s.push(0, act(0, 1.0, t=1.0))
    assert s.planned_until() == pytest.approx(1.3)  # the rest of the chunk is planned, final or not
    s.begin_chunk(1, 3)
    s.push(1, act(0, 2.0, t=1.15))
    # replace/blend: the new chunk runs from 1.15; hold: it starts when the old one ends (1.3)
    assert s.planned_until() == pytest.approx(1.6 if mode == "hold" else 1.45)
    s.reset()
    assert s.planned_until() is None


def test_blend_averages_overlapping_chunks_favouring_the_newer():
    s = sched(on_new_chunk="blend", blend_decay=0.5)
    s.begin_chunk(0, 4)
    for i in range(4):
        s.push(0, act(i, 0.0, t=0.0))
    s.begin_chunk(1, 4)
    s.push(1, act(0, 3.0, t=0.1))
    c = s.tick(0.1)
    assert c.source == "blend" and c.action[0] == pytest.approx((1.0 * 3.0 + 0.5 * 0.0) / 1.5)


def test_empty_queue_zero_keeps_listed_dims_and_stale_hold_turns_to_zero():
    s = sched(on_empty="zero", keep_dims_on_zero=(1,))
    s.begin_chunk(0, 1)
    s.push(0, StreamedAction(0, np.array([0.5, -1.0]), np.zeros(2, int), 0.0, True, 0))
    s.tick(0.0)
    z = s.tick(0.2)
    assert z.source == "zero" and z.action.tolist() == [0.0, -1.0]

    h = sched(on_empty="hold", max_hold_s=0.5)
    h.begin_chunk(0, 1)
    h.push(0, act(0, 2.0, t=0.0))
    h.tick(0.0)
    assert h.tick(0.3).source == "hold" and h.tick(0.7).source == "zero"


def test_bad_pushes_and_config():
    s = sched()
    with pytest.raises(KeyError, match="begin_chunk"):
        s.push(3, act(0, 1.0, 0.0))
    s.begin_chunk(0, 2)
    with pytest.raises(ValueError, match="outside chunk"):
        s.push(0, act(2, 1.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        s.push(0, act(0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="control_hz"):
        ScheduleConfig(control_hz=0)
    with pytest.raises(ValueError, match="on_new_chunk"):
        ScheduleConfig(on_new_chunk="merge")


def test_concurrent_push_and_tick():
    s = sched()
    s.begin_chunk(0, 2000)
    sources = []

    def producer():
        for i in range(2000):
            s.push(0, act(i, float(i), t=0.0))

    th = threading.Thread(target=producer)
    th.start()
    for k in range(2000):
        sources.append(s.tick(k * 0.1).source)
    th.join()
    assert set(sources) <= {"chunk", "late", "none"} and s.tick(199.95).action[0] == 1999.0
