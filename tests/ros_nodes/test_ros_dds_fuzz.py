"""Whatever arrives on the wire, the DDS input path keeps going.

In-process: a reader and a raw writer in one participant on loopback, the raw writer putting bytes
on the wire that no well-behaved publisher would (`ddspy_write` skips the struct's serializer).
Across processes: `serve` with a tiny random model while this test floods its image and
instruction topics with random samples and random bytes; it must keep publishing throughout.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import time

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from cyclonedds._clayer import ddspy_write  # noqa: E402

from ros_nodes.dds import msgs  # noqa: E402
from ros_nodes.dds.transport import DdsGraph, loopback_config  # noqa: E402

_DOMAINS = itertools.count(180 + (os.getpid() * 7) % 40)

XCDR1_LE = b"\x00\x01\x00\x00"


def cdr_string(raw: bytes) -> bytes:
    """An XCDR1 std_msgs/String sample whose `data` is `raw` (any bytes, not necessarily UTF-8)."""
    body = struct.pack("<I", len(raw) + 1) + raw + b"\x00"
    return XCDR1_LE + body + b"\x00" * (-len(body) % 4)


def write_raw(writer, payload: bytes) -> int:
    """Put `payload` on the wire as one sample of `writer`'s topic; < 0 when Cyclone refuses it."""
    return ddspy_write(writer._ref, payload)


@pytest.fixture()
def graph():
    d = next(_DOMAINS)
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
    assert write_raw(w, cdr_string(b"\xff\xfe not utf-8")) == 0
    w.write(msgs.String(data="after"))
    assert spin_until(graph, lambda: "after" in got and bad)
    assert got == ["before", "after"]
    assert bad == [("instruction", "UnicodeDecodeError")] and graph.bad_samples == 1


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
        accepted += write_raw(wi if i % 2 else ws, payload) == 0
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
