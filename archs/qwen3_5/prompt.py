"""How a Qwen3.5 prompt is built (by the runtime and the board), the host preprocessing the manifest records, and
the deterministic golden image."""

from __future__ import annotations

import numpy as np

from smt_convert.archs.qwen3_5.config import ImageModel, VisionHparams
from smt_convert.converters.validate import board_grid_notes
from smt_convert.runtime.positions import guess_grid

IMAGE_PROMPT = "<|im_start|>user\n<__media__>{prompt}<|im_end|>\n<|im_start|>assistant\n"
TEXT_PROMPT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def prompt_record(hp: ImageModel) -> dict:
    """Image prompts: `<|vision_start|>` + N rows + `<|vision_end|>`, M-RoPE positions (runtime/positions.py)."""
    record = {
        "template_fields": {"prompt": "Describe the image." if hp.vision else "Hello"},
        "stop_tokens": ["<|im_end|>", "<|endoftext|>"],
        "positions": "mrope",
    }
    if hp.vision is None:
        return {**record, "template": TEXT_PROMPT}
    return {
        **record,
        "template": IMAGE_PROMPT,
        "media_marker": "<__media__>",
        "media_start": "<|vision_start|>",
        "media_end": "<|vision_end|>",
        "media_placeholder": "<|image_pad|>",
        "media_placeholder_id": hp.image_token_id,
    }


def preprocessing(hp: ImageModel) -> dict:
    """The host only decodes and resizes; normalisation is in the graph. The board guesses the grid from N."""
    if hp.vision is None:
        return {}
    v = hp.vision
    ny, nx = v.grid
    guess = guess_grid(ny * nx)
    return {
        "host": "decode RGB, antialiased bilinear resize to exactly HxW, raw 0..255 float32 NCHW",
        "image_size": list(v.image_size),
        "grid": [ny, nx],
        "board_grid_guess": list(guess),
        "board_guess_matches": list(guess) == [ny, nx],
        "in_graph_normalisation": {
            "rescale_factor": v.rescale_factor,
            "image_mean": list(v.image_mean),
            "image_std": list(v.image_std),
            "from": v.preprocessor_source,
        },
    }


def golden_image(height: int, width: int) -> np.ndarray:
    """A deterministic picture with structure at several scales (gradients, a disc, stripes, noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / max(width, 1) * 6.0)
    g = 255 * y / max(height - 1, 1)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(height, width) * 0.25) ** 2
    b = np.where(disc, 230.0, 40.0) + 30 * ((x // 8 + y // 8) % 2)
    noise = np.random.default_rng(7).normal(0, 6, (height, width, 3))
    return np.clip(np.stack([r, g, b], -1) + noise, 0, 255).astype(np.uint8)


def vision_model_block(v: VisionHparams, model_path: str) -> dict:
    """config.json's `vision_model`: the file and the static input size the board checks."""
    h, w = v.image_size
    size = {"input_size": h} if h == w else {"input_width": w, "input_height": h}
    return {"model_path": model_path, **size}


def vision_notes(v: VisionHparams) -> list[str]:
    """Plan notes about the vision input: a grid the board would guess differently, default normalisation."""
    notes = board_grid_notes(*v.grid)
    if v.preprocessor_source == "defaults":
        notes.append(
            "preprocessor_config.json not found: the vision graph normalises with the family's defaults "
            "(rescale 1/255, mean 0.5, std 0.5)"
        )
    return notes
