import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ros_nodes.images import ENCODINGS, ImageError, image_to_rgb, rgb_to_fields


def rgb(h=4, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_color_encodings_round_trip(encoding):
    img = rgb()
    f = rgb_to_fields(img, encoding)
    out = image_to_rgb(f["height"], f["width"], f["encoding"], f["step"], f["data"])
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_bgr8_swaps_channels():
    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)
    out = image_to_rgb(1, 1, "bgr8", 3, bgr.tobytes())
    assert out[0, 0].tolist() == [30, 20, 10]


def test_mono8_becomes_grey_rgb():
    mono = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = image_to_rgb(2, 3, "mono8", 3, mono.tobytes())
    assert out.shape == (2, 3, 3) and np.array_equal(out[..., 0], mono) and np.array_equal(out[..., 2], mono)


def test_row_padding_is_dropped_and_payload_types_accepted():
    img = rgb(3, 2)
    padded = np.zeros((3, 8), np.uint8)
    padded[:, :6] = img.reshape(3, 6)
    for data in (padded.tobytes(), array.array("B", padded.tobytes()), list(padded.tobytes()), padded):
        assert np.array_equal(image_to_rgb(3, 2, "rgb8", 8, data), img)


@pytest.mark.parametrize(
    "args,cause",
    [
        ((4, 5, "rgb16", 30, b"\0" * 120), "encoding"),
        ((4, 5, "32FC1", 20, b"\0" * 80), "encoding"),
        ((0, 5, "rgb8", 15, b""), "size:invalid"),
        ((4, 5, "rgb8", 10, b"\0" * 40), "step"),
        ((4, 5, "rgb8", 15, b"\0" * 59), "data-length"),
    ],
)
def test_bad_images_raise_with_a_cause(args, cause):
    with pytest.raises(ImageError) as e:
        image_to_rgb(*args)
    assert e.value.cause == cause and str(e.value)


def test_causes_never_contain_sender_text():
    """Bogus encodings and sizes map to a few fixed causes; the message quotes the value, cut short."""
    causes = set()
    for i in range(500):
        for args in (
            (4, 5, f"bogus-{i}", 15, b""),
            (5 + i, 5, "rgb8", 15, b""),
        ):
            with pytest.raises(ImageError) as e:
                image_to_rgb(*args, expected_size=(4, 5))
            causes.add(e.value.cause)
    assert causes == {"encoding", "size:unexpected"}
    with pytest.raises(ImageError) as e:
        image_to_rgb(4, 5, "x" * 100_000, 15, b"")
    assert len(str(e.value)) < 200 and "100000 characters" in str(e.value)


def test_expected_size():
    f = rgb_to_fields(rgb(4, 5))
    args = (f["height"], f["width"], f["encoding"], f["step"], f["data"])
    assert image_to_rgb(*args, expected_size=(4, 0)).shape == (4, 5, 3)
    with pytest.raises(ImageError, match="expects 6xany") as e:
        image_to_rgb(*args, expected_size=(0, 6))
    assert e.value.cause == "size:unexpected" and "is 5x4" in str(e.value)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), enc=st.sampled_from(sorted(ENCODINGS)), pad=st.integers(0, 5))
def test_decoding_any_valid_layout_gives_hxwx3(h, w, enc, pad):
    step = w * ENCODINGS[enc] + pad
    out = image_to_rgb(h, w, enc, step, bytes(step * h))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
