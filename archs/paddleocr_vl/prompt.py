"""How PaddleOCR-VL is prompted and fed: the prompt template, boundary tokens, position rule, host
preprocessing record, and the deterministic golden / check images.

Positions are M-RoPE: the image's N tokens laid out on the merged grid get (n, n + y, n + x), text continues
at n + max(ny, nx) (`runtime.positions.mrope_positions`, which the tests show equals HF's `get_rope_index`).
"""

from __future__ import annotations

import numpy as np

from smt_convert.archs.paddleocr_vl.config import Hparams
from smt_convert.converters.validate import board_grid_notes
from smt_convert.runtime.positions import guess_grid

PROMPT = "<|begin_of_sentence|>User: <__media__>{prompt}\nAssistant:\n"
IMAGE_START, IMAGE_END, IMAGE_PLACEHOLDER = "<|IMAGE_START|>", "<|IMAGE_END|>", "<|IMAGE_PLACEHOLDER|>"
STOP_TOKENS = ["</s>", "<|end_of_sentence|>"]


def prompt_record(hp: Hparams) -> dict:
    return {
        "template": PROMPT,
        "template_fields": {"prompt": "OCR:"},
        "media_marker": "<__media__>",
        "media_start": IMAGE_START,
        "media_end": IMAGE_END,
        "media_placeholder": IMAGE_PLACEHOLDER,
        "media_placeholder_id": hp.image_token_id,
        "positions": "mrope",
        "stop_tokens": list(STOP_TOKENS),
    }


def preprocessing(hp: Hparams) -> dict:
    v = hp.vision
    ny, nx = v.grid
    board_guess = guess_grid(ny * nx)
    return {
        "host": "decode RGB, antialiased bilinear resize to exactly HxW, x*rescale_factor, (x-mean)/std",
        "image_size": list(v.image_size),
        "grid": [ny, nx],
        "vision_preprocess": dict(v.preprocess),
        "from": v.preprocessor_source,
        "board_grid_guess": list(board_guess),
        "board_guess_matches": list(board_guess) == [ny, nx],
    }


def plan_notes(hp: Hparams) -> list[str]:
    notes = board_grid_notes(*hp.vision.grid)
    if hp.vision.preprocessor_source != "preprocessor_config.json":
        notes.append("preprocessor_config.json not found: vision_preprocess uses transformers' defaults")
    return notes


def raw_check_images(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic uint8 [H, W, 3] RGB test images: document-like, photo-like, random, gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    # document: off-white page, dark "text lines" of varying length made of glyph-like strokes, a table rule
    doc = np.full((height, width, 3), 245.0) + rng.normal(0, 3, (height, width, 3))
    line_h = max(3, height // 14)
    for top in range(line_h, height - line_h, 2 * line_h):
        end = int(width * rng.uniform(0.5, 0.95))
        glyphs = rng.random(width) < 0.55
        band = doc[top : top + line_h, width // 12 : end]
        band[:, glyphs[: band.shape[1]]] = rng.uniform(10, 60)
    doc[height * 2 // 3, :, :] = [30, 60, 160]
    photo = np.stack(
        [
            200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08) + 30 * c
            for c, (cy, cx) in enumerate(rng.random((3, 2)))
        ],
        axis=-1,
    )
    photo += 20 * np.sin(40 * xx + 25 * yy)[..., None] + rng.normal(0, 8, photo.shape)
    images = {
        "document": doc,
        "photo": photo,
        "random": rng.uniform(0, 255, (height, width, 3)),
        "gradient": np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy], axis=-1),
    }
    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in images.items()}
