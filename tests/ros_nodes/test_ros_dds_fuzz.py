"""Whatever arrives on the wire, the DDS input path keeps going.

In-process: a reader and a raw writer in one participant on loopback, the raw writer putting bytes
on the wire that no well-behaved publisher would (`write_serialized` skips the struct's serializer).
Across processes: `serve` with a tiny random model while this test floods its image and
instruction topics with random samples and random bytes; it must keep publishing throughout.
"""

from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest
from domains import claim_domain_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("cyclonedds")

from cyclonedds.core import DDSException  # noqa: E402

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.dds.transport import DdsGraph, loopback_config, write_serialized  # noqa: E402

XCDR1_LE = b"\x00\x01\x00\x00"


def cdr_string(raw: bytes) -> bytes:
    """An XCDR1 std_msgs/String sample whose `data` is `raw` (any bytes, not necessarily UTF-8)."""
    body = struct.pack("<I", len(raw) + 1) + raw + b"\x00"
    return XCDR1_LE + body + b"\x00" * (-len(body) % 4)


def write_raw(writer, payload: bytes) -> bool:
    """Put `payload` on the wire as one sample of `writer`'s topic; False when Cyclone refuses it."""
    try:
        write_serialized(writer, payload)
    except DDSException:
        return False
    return True


@pytest.fixture()
def graph():
    d = claim_domain_id()
    g = DdsGraph(d, loopback_config(d))
    yield g
    g.close()


def spin_until(g: DdsGraph, cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        g.spin_once(0.05)
        if cond():
            return True
    return False


@pytest.mark.timeout(60)
def test_an_undecodable_sample_is_dropped_alone_and_reported(graph):
    got: list[str] = []
    bad: list[tuple[str, str]] = []
    graph.on_bad_sample = lambda topic, e: bad.append((topic, type(e).__name__))
    graph.reader("instruction", msgs.String, "default", callback=lambda s: got.append(s.data))
    w = graph.writer("instruction", msgs.String, "default")
    time.sleep(0.3)  # reader and writer match
    w.write(msgs.String(data="before"))
    assert write_raw(w, cdr_string(b"\xff\xfe not utf-8"))
    w.write(msgs.String(data="after"))
    assert spin_until(graph, lambda: "after" in got and bad)
    assert got == ["before", "after"]
    assert bad == [("instruction", "UnicodeDecodeError")] and graph.bad_samples == 1


@pytest.mark.timeout(60)
def test_a_sample_shorter_than_it_claims_is_dropped_alone(graph, monkeypatch):
    """Cyclone itself refuses such CDR at both ends; were one to reach Python, its struct.error is
    one bad sample like any other decode error."""
    real = msgs.String.deserialize.__func__

    def deserialize(cls, data, *a, **kw):
        sample = real(cls, data, *a, **kw)
        if sample.data == "short":
            raise struct.error("unpack_from requires a buffer of at least 4 bytes")
        return sample

    monkeypatch.setattr(msgs.String, "deserialize", classmethod(deserialize))
    got: list[str] = []
    graph.reader("instruction", msgs.String, "default", callback=lambda s: got.append(s.data))
    w = graph.writer("instruction", msgs.String, "default")
    time.sleep(0.3)
    for text in ("a", "short", "b"):
        w.write(msgs.String(data=text))
    assert spin_until(graph, lambda: "b" in got)
    assert got == ["a", "b"] and graph.bad_samples == 1
    with pytest.raises(DDSException):  # what Cyclone does with a length past the end
        write_serialized(w, XCDR1_LE + struct.pack("<I", 100) + b"short\x00")


@pytest.mark.timeout(60)
def test_a_raising_callback_is_counted_not_raised(graph):
    graph.reader("instruction", msgs.String, "default", callback=lambda s: 1 / 0)
    w = graph.writer("instruction", msgs.String, "default")
    time.sleep(0.3)
    w.write(msgs.String(data="x"))
    assert spin_until(graph, lambda: graph.callback_errors == 1)


@pytest.mark.timeout(60)
def test_random_bytes_on_image_and_instruction_topics(graph):
    """2000 random and mutated samples: every one is delivered or counted, spin_once never raises."""
    rng = random.Random(1234)
    valid_img = msgs.Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12)).serialize()
    valid_str = msgs.String(data="pick up the cube").serialize()
    delivered = {"img": 0, "str": 0}
    graph.reader("camera/image_raw", msgs.Image, "sensor_data", callback=lambda s: delivered.__setitem__("img", 1))
    graph.reader("instruction", msgs.String, "default", depth=1000, callback=lambda s: delivered.__setitem__("str", 1))
    wi = graph.writer("camera/image_raw", msgs.Image, "sensor_data")
    ws = graph.writer("instruction", msgs.String, "default", depth=1000)
    time.sleep(0.3)
    accepted = 0
    for i in range(2000):
        base = valid_img if i % 2 else valid_str
        kind = rng.randrange(3)
        if kind == 0:
            payload = XCDR1_LE + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        elif kind == 1:
            payload = base[: rng.randrange(4, len(base) + 1)]
        else:
            b = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                j = rng.randrange(4, len(b))
                b[j] = rng.randrange(256)
            payload = bytes(b)
        payload += b"\x00" * (-len(payload) % 4)
        accepted += write_raw(wi if i % 2 else ws, payload)
        if i % 50 == 0:
            graph.spin_once(0.0)
    for _ in range(20):
        graph.spin_once(0.05)
    assert accepted > 100 and graph.bad_samples > 0 and graph.callback_errors == 0
    # The topics still work after the flood.
    wi.write(msgs.Image(height=1, width=1, encoding="mono8", step=1, data=b"\x07"))
    ws.write(msgs.String(data="still here"))
    delivered.update(img=0, str=0)
    assert spin_until(graph, lambda: delivered["img"] and delivered["str"])
    np.testing.assert_equal(graph.callback_errors, 0)


# ---- the runner's input callbacks: any field values ------------------------------------------------

_u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.one_of(st.integers(0, 40), _u32),
    width=st.one_of(st.integers(0, 40), _u32),
    encoding=st.one_of(st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", ""]), st.text(max_size=30)),
    step=st.one_of(st.integers(0, 200), _u32),
    data=st.binary(max_size=4000),
    text=st.one_of(st.text(max_size=50), st.text(min_size=1990, max_size=2100)),
)
def test_runner_inputs_never_raise(clock, fake_policy, height, width, encoding, step, data, text):
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner

    r = PolicyRunner(PolicyParams(instruction="go", warmup=False), lambda p: fake_policy, clock=clock, threaded=False)
    r.configure()
    r.activate()
    msg = msgs.Image(height=height, width=width, encoding=encoding, step=step, data=data)
    ok = r.on_image_msg(msg)
    assert ok == (r.images_received == 1)
    assert r.on_instruction(text) == (bool(text.strip()) and len(text) <= r.MAX_INSTRUCTION_CHARS)
    if ok:
        assert r.process_pending() and fake_policy.calls[-1]["pixels"].shape == (height, width, 3)
    assert int(r.status().values["bad_inputs"]) == r.causes.total()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.one_of(st.sampled_from(["a", "b"]), st.text(max_size=5), st.integers()), max_size=4),
    positions=st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
        st.lists(st.one_of(st.floats(), st.text(max_size=3), st.none()), max_size=4),
    ),
)
def test_runner_joint_states_never_raise(clock, fake_policy, names, positions):
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner

    params = PolicyParams(instruction="go", warmup=False, use_joint_state=True, joint_names=("a", "b"))
    r = PolicyRunner(params, lambda p: fake_policy, clock=clock, threaded=False)
    r.configure()
    ok = r.on_joint_state(names, positions)
    assert ok == (r.bad_inputs() == 0)
    if ok:
        assert np.isfinite(r._joint_pos).all() and r._joint_pos.shape == (2,)


# ---- `serve` with a real (tiny, random) model, flooded on loopback -----------------------------------


def random_sample_fields(rng: np.random.Generator) -> msgs.Image:
    """An Image with random (type-valid) field values: mostly wrong, sometimes a small valid image."""
    enc = rng.choice(["rgb8", "bgr8", "mono8", "rgba8", "yuv422", "", "\u00e9\u4e2d", "x" * int(rng.integers(1, 300))])
    h, w = (int(v) for v in rng.integers(0, 24, 2))
    if rng.random() < 0.2:
        h, w = (int(v) for v in rng.integers(0, 2**32, 2, dtype=np.uint64))
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4}.get(str(enc), 3)
    step = w * ch + int(rng.integers(0, 3)) if rng.random() < 0.7 else int(rng.integers(0, 2**32, dtype=np.uint64))
    n = step * h if rng.random() < 0.5 and step * h < 20000 else int(rng.integers(0, 3000))
    return msgs.Image(height=h, width=w, encoding=str(enc), step=step % 2**32, data=rng.bytes(n))


def random_instruction(rng: np.random.Generator) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return ""
    if kind == 1:
        return " \t\n" * int(rng.integers(1, 5))
    if kind == 2:
        return "pick " * int(rng.integers(401, 1000))  # over MAX_INSTRUCTION_CHARS
    alphabet = "abc xyz\u00e9\u4e2d\U0001f916!\n"
    return "".join(rng.choice(list(alphabet), int(rng.integers(1, 120))))


def random_raw(rng: np.random.Generator, valid: bytes) -> bytes:
    if rng.random() < 0.5:
        return XCDR1_LE + rng.bytes(int(rng.integers(0, 120)))
    b = bytearray(valid)
    for j in rng.integers(4, len(b), int(rng.integers(1, 6))):
        b[j] = int(rng.integers(256))
    return bytes(b)


@pytest.mark.timeout(180)
def test_serve_keeps_publishing_under_random_inputs(tiny_vla_dir):
    """~8 s of random field values and random bytes on the image and instruction topics, valid images
    at 10 Hz in between: the server never exits, commands keep arriving, bad inputs are counted."""
    from test_ros_dds_loopback import Robot, finish, serve_cfg, start_proc

    from ros_nodes.messages import build_image

    domain = claim_domain_id()
    cfg = serve_cfg(
        domain,
        model_path=str(tiny_vla_dir),
        instruction="pick up the cube",
        command_type="array",
        control_hz=20.0,
        image_timeout_s=1.5,
        diagnostics_hz=4.0,
        threads=1,
    )
    server = start_proc("serve", cfg, {"real": True})
    robot = Robot(domain, "forward_command_controller/commands", msgs.Float64MultiArray)
    arrivals: list[float] = []
    robot.g.reader(
        "forward_command_controller/commands",
        msgs.Float64MultiArray,
        "default",
        callback=lambda s: arrivals.append(time.monotonic()),
    )
    rng = np.random.default_rng(7)
    good = build_image(msgs, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (0, 0))
    valid_img, valid_str = good.serialize(), msgs.String(data="pick up the cube").serialize()
    try:
        assert robot.pump(120, until=lambda: len(robot.commands) >= 10, image=good), "no commands from the server: " + (
            server.stderr.read()[-3000:] if server.poll() is not None else ""
        )
        t0 = time.monotonic()
        sent = 0
        next_good = t0
        while time.monotonic() < t0 + 8.0:
            assert server.poll() is None, server.stderr.read()[-3000:]
            k = rng.integers(4)
            if k == 0:
                robot.image.write(random_sample_fields(rng))
            elif k == 1:
                robot.instruction.write(msgs.String(data=random_instruction(rng)))
            elif k == 2:
                write_raw(robot.image, random_raw(rng, valid_img))
            else:
                write_raw(robot.instruction, random_raw(rng, valid_str))
            sent += 1
            if time.monotonic() >= next_good:
                robot.image.write(good)
                next_good += 0.1
            robot.g.spin_once(0.005)
        t1 = time.monotonic()
        robot.instruction.write(msgs.String(data="pick up the cube"))
        robot.pump(2.0, image=good)
        assert server.poll() is None, server.stderr.read()[-3000:]
        during = [t for t in arrivals if t0 <= t <= t1]
        gaps = np.diff([t0, *during, t1])
        assert sent > 200 and len(during) > 0 and gaps.max() < 3.0, f"largest gap without a command: {gaps.max():.2f} s"
        d = robot.last_diag()
        assert int(d["bad_inputs"]) > 0 and d["model_errors"] == "0", d
        stats = finish(server, timeout=60)
        assert int(stats["model_errors"]) == 0 and int(stats["bad_inputs"]) > 0 and int(stats["chunks_done"]) > 0
    finally:
        robot.close()
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)
