"""Host image preprocessing as the SMT board does it: decode to RGB, antialiased bilinear resize, float32 NCHW.

The board host decodes the file to 8-bit RGB and resizes it (bilinear, antialiased on downscale) to exactly
the encoder's static H x W, ignoring the aspect ratio. For the Qwen3-VL family (Qwen3.5 included) it then
feeds the raw 0..255 values: normalisation is inside the ONNX graph. PaddleOCR hosts normalise with
`vision_preprocess` (`normalize` below).

Resizing uses Pillow's `Image.resize(..., Image.BILINEAR)`: a separable triangle filter whose support is
scaled by the downscale factor, i.e. antialiased when shrinking and plain bilinear when enlarging, rounded
back to uint8 (as an 8-bit host image is). Other libraries' "bilinear" (OpenCV INTER_LINEAR, torch
interpolate without antialias) sample 2x2 pixels and alias on downscale; values can differ by a few
levels near edges. EXIF orientation is not applied (the host decoder does not either).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SmtError, first_line

MAX_PIXELS = 64_000_000  # checked from the header, before decoding: 8000 x 8000 is far beyond any encoder input


def load_image(path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB (alpha dropped, palette/grey expanded)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SmtError(f"{path}: image: file not found")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise SmtError(
                    f"{path}: image: {width}x{height} is larger than {MAX_PIXELS // 1_000_000} megapixels "
                    "(resize it first)"
                )
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SmtError(f"{path}: image: cannot decode ({first_line(exc, 200)})") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SmtError(f"{path}: image: decoded to shape {arr.shape}, expected [H, W, 3]")
    return np.ascontiguousarray(arr)


def _as_rgb_uint8(img) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"image must be uint8 (or numeric 0..255), got {arr.dtype}")
    return np.ascontiguousarray(arr)


def resize_rgb(img, width: int, height: int) -> np.ndarray:
    """uint8 [H0, W0, 3] RGB -> float32 [1, 3, height, width] raw 0..255, antialiased bilinear resize.

    An image already of the target size is passed through unchanged.
    """
    from PIL import Image

    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    arr = _as_rgb_uint8(img)
    if arr.shape[:2] != (height, width):
        arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)


def normalize(x, rescale_factor: float = 1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> np.ndarray:
    """`(x * rescale_factor - mean) / std` per channel on [1, 3, H, W] or [3, H, W] float input (PaddleOCR host)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected [1, 3, H, W] or [3, H, W], got {x.shape}")
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if np.any(std == 0):
        raise ValueError("image_std must not contain 0")
    return np.ascontiguousarray((x * np.float32(rescale_factor) - mean) / std, dtype=np.float32)
