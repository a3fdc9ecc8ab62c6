"""The SMT board's own image resize, in numpy: what `smt_vision_preprocess_if_image` does after decoding.

Facts read from SpacemiT's llama.cpp fork (`tools/mtmd/smt-vision-preprocess.cpp`, `resize_rgb_u8_antialias`):

- separable triangle filter, horizontal pass then vertical, scale = in / out and support = max(scale, 1)
  (antialiased when shrinking, plain bilinear when enlarging), all in float32;
- output pixel o is centred at (o + 0.5) * scale - 0.5; taps i from ceil(centre - support) to
  floor(centre + support), weight max(0, 1 - |i - centre| / support), normalised by their float32 sum;
- a tap outside the image reads the edge pixel (clamped index), with its weight;
- the horizontal pass stays float32 (no rounding), the vertical pass rounds half away from zero and clamps
  to 0..255 once;
- an image already of the target size goes through the same filter (whose weights are then 0, 1, 0).

Pillow (`image.resize_rgb`, the hf host path) rounds to uint8 between its passes and drops out-of-range
taps, renormalising the rest: on a downscale the outer one-pixel ring differs by up to 15 levels, inside by
at most 1. The sums here run in the board's order (tap by tap, in float32), so the result is the board's up
to the compiler's use of fused multiply-add.
"""

from __future__ import annotations

import numpy as np

from .image import _as_rgb_uint8


def contributions(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices [out, K] (clamped into the image) and float32 weights [out, K] (0 for padding taps)."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = max(scale, f32(1.0))
    centre = (np.arange(out_size, dtype=f32) + f32(0.5)) * scale - f32(0.5)
    left = np.ceil(centre - support).astype(np.int64)
    right = np.floor(centre + support).astype(np.int64)
    taps = int((right - left).max()) + 1
    index = left[:, None] + np.arange(taps)[None, :]
    valid = index <= right[:, None]
    distance = (index.astype(f32) - centre[:, None]) / support
    weight = np.where(valid, np.maximum(f32(0.0), f32(1.0) - np.abs(distance)), f32(0.0)).astype(f32)
    total = np.zeros(out_size, dtype=f32)
    for k in range(taps):  # the board's order: one tap after the other, in float32
        total = total + weight[:, k]
    # never 0: the tap nearest the centre is at most 0.5 / support away, so weighs at least 0.5
    return np.clip(index, 0, in_size - 1), weight / total[:, None]


def _filter_axis(data: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sum of the taps along `axis`, accumulated tap by tap in float32 from 0 (as the board does)."""
    out_shape = list(data.shape)
    out_shape[axis] = index.shape[0]
    acc = np.zeros(out_shape, dtype=np.float32)
    shape = [1] * data.ndim
    shape[axis] = index.shape[0]
    for k in range(index.shape[1]):
        acc += np.take(data, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return acc


def board_resize_uint8(img, width: int, height: int) -> np.ndarray:
    """uint8 [H0, W0, 3] RGB -> uint8 [height, width, 3], the board's resize (always filtered, even same size)."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    src = _as_rgb_uint8(img).astype(np.float32)
    x_index, x_weight = contributions(src.shape[1], width)
    y_index, y_weight = contributions(src.shape[0], height)
    rows = _filter_axis(src, x_index, x_weight, axis=1)  # [H0, width, 3] float32, not rounded
    acc = _filter_axis(rows, y_index, y_weight, axis=0)  # [height, width, 3] float32
    rounded = np.floor(acc.astype(np.float64) + 0.5)  # std::round: half away from zero (acc >= 0)
    return np.clip(rounded, 0, 255).astype(np.uint8)


def board_resize_rgb(img, width: int, height: int) -> np.ndarray:
    """uint8 [H0, W0, 3] RGB -> float32 [1, 3, height, width] raw 0..255, as the board feeds its encoder."""
    out = board_resize_uint8(img, width, height)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None], dtype=np.float32)
