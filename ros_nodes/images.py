"""sensor_msgs/Image <-> numpy, for both transports (rclpy messages and Cyclone DDS structs).

The policy wants HxWx3 uint8 RGB. Cameras publish rgb8, bgr8, rgba8, bgra8 or mono8 (8-bit
encodings; anything else is rejected, not guessed). Every check names what was wrong, because a
rejected image is logged once and then silently dropped: the message must be enough to fix the camera.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
"""Supported encodings -> channels per pixel (all 8-bit)."""

MAX_SIDE = 8192
"""Larger images are rejected as corrupt rather than allocated."""


class ImageError(ValueError):
    """An image that cannot be used; `cause` is a short stable key for once-per-cause logging.

    Causes come from a fixed set (never from the message's text), so a sender cycling through bogus
    values cannot grow the once-per-cause log.
    """

    def __init__(self, cause: str, message: str):
        super().__init__(message)
        self.cause = cause


def _quote(text: str, limit: int = 40) -> str:
    """`repr` of sender-supplied text, cut to `limit` characters (it ends up in a log line)."""
    r = repr(text)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(text)} characters)"


def _as_uint8(data: Any) -> np.ndarray:
    """View a message's byte payload (bytes, array.array('B'), list of ints, numpy) as uint8."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def image_to_rgb(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: Any,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an Image message's fields into a new (height, width, 3) uint8 RGB array.

    Args:
        expected_size: (height, width) the policy was configured for; 0 in either means any.

    Raises:
        ImageError: unsupported encoding, inconsistent sizes, or a size other than expected.
    """
    channels = ENCODINGS.get(encoding)
    if channels is None:
        raise ImageError(
            "encoding",
            f"unsupported image encoding {_quote(encoding)} (supported: {', '.join(ENCODINGS)})",
        )
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ImageError("size:invalid", f"image size {width}x{height} is empty or larger than {MAX_SIDE}")
    if expected_size is not None:
        eh, ew = expected_size
        if (eh and eh != height) or (ew and ew != width):
            raise ImageError(
                "size:unexpected",
                f"image is {width}x{height} but the node expects {ew or 'any'}x{eh or 'any'} "
                "(parameters image_width/image_height)",
            )
    row = width * channels
    if step < row:
        raise ImageError("step", f"image step {step} is smaller than width*channels = {row} for {encoding}")
    buf = _as_uint8(data)
    if buf.size != step * height:
        raise ImageError(
            "data-length", f"image data has {buf.size} bytes, expected step*height = {step}*{height} = {step * height}"
        )
    px = buf.reshape(height, step)[:, :row].reshape(height, width, channels)
    if encoding == "rgb8":
        return px.copy()
    if encoding == "bgr8":
        return px[..., ::-1].copy()
    if encoding == "rgba8":
        return px[..., :3].copy()
    if encoding == "bgra8":
        return px[..., 2::-1].copy()
    return np.repeat(px, 3, axis=2)  # mono8


def image_msg_to_rgb(msg: Any, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """`image_to_rgb` over a message object with sensor_msgs/Image fields (either transport)."""
    return image_to_rgb(int(msg.height), int(msg.width), str(msg.encoding), int(msg.step), msg.data, expected_size)


def rgb_to_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """Encode an HxWx3 uint8 RGB array as Image fields (height, width, encoding, is_bigendian, step, data bytes)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
    if encoding == "rgb8":
        px = rgb
    elif encoding == "bgr8":
        px = rgb[..., ::-1]
    elif encoding == "rgba8":
        px = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        px = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        px = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)[..., None]
    else:
        raise ValueError(f"unsupported encoding {encoding!r} (supported: {', '.join(ENCODINGS)})")
    h, w, c = px.shape
    return {
        "height": h,
        "width": w,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": w * c,
        "data": np.ascontiguousarray(px).tobytes(),
    }
