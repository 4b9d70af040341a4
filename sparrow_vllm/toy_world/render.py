"""Frames of a toy-world scene: [T, H, W, 3] uint8 RGB on a black background."""

from __future__ import annotations

import numpy as np

from sparrow_vllm.toy_world.scene import COLOURS, Scene, Shape

TRAVEL = 0.45  # fraction of the shape area a shape moves during its event
DIGIT_STRIP = 0.25  # the digit's strip at the left edge, as a fraction of the width
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Seven-segment layout: a top, b top-right, c bottom-right, d bottom, e bottom-left,
# f top-left, g middle.
_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abfgcd"]


def _draw_shape(frame: np.ndarray, shape: Shape, cx: float, cy: float, size: int) -> None:
    h, w, _ = frame.shape
    left = int(DIGIT_STRIP * w)
    ys, xs = np.mgrid[0:h, 0:w]
    dx, dy = xs - (left + cx * (w - left)), ys - cy * h
    xs_ok = xs >= left
    r = size / 2
    if shape.kind == "square":
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape.kind == "circle":
        mask = dx**2 + dy**2 <= r**2
    else:  # triangle pointing up
        mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    frame[mask & xs_ok] = COLOURS[shape.colour]


def _draw_digit(frame: np.ndarray, digit: int, size: int) -> None:
    h = size
    w = size // 2 + 2
    t = max(2, size // 8)
    x0, y0 = 3, (frame.shape[0] - size) // 2
    mid = y0 + size // 2
    boxes = {
        "a": (y0, y0 + t, x0, x0 + w),
        "d": (y0 + h - t, y0 + h, x0, x0 + w),
        "g": (mid - t // 2, mid - t // 2 + t, x0, x0 + w),
        "f": (y0, mid, x0, x0 + t),
        "e": (mid, y0 + h, x0, x0 + t),
        "b": (y0, mid, x0 + w - t, x0 + w),
        "c": (mid, y0 + h, x0 + w - t, x0 + w),
    }
    for seg in _SEGMENTS[digit]:
        top, bottom, left, right = boxes[seg]
        frame[top:bottom, left:right] = 255


def render(scene: Scene, num_frames: int, size: int = 112) -> np.ndarray:
    """The scene over `num_frames` frames of size x size pixels."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    shape_px = int(size * 0.36)
    for t in range(num_frames):
        time = (t + 0.5) / num_frames
        for shape in scene.shapes:
            if not shape.appear <= time < shape.vanish:
                continue
            progress = (time - shape.appear) / (shape.vanish - shape.appear) * TRAVEL
            sx, sy = _STEP[shape.direction]
            _draw_shape(
                frames[t], shape, shape.start[0] + sx * progress, shape.start[1] + sy * progress,
                shape_px,
            )
        _draw_digit(frames[t], scene.digit, int(size * 0.4))
    return frames
