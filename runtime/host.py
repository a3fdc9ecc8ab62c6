"""Which host preprocessing the runtime applies before the encoder: the board's own, or Hugging Face's.

- `board` (the default): what SpacemiT's llama.cpp fork does on the device (`board_image`, `board_audio`):
  what a bundle will meet, so goldens are computed with it.
- `hf`: the Hugging Face-faithful path (`image.resize_rgb` with Pillow, `audio.log_mel` equal to
  `Qwen3ASRFeatureExtractor`): what the model was trained with; bundles written before the host was
  recorded in the manifest used it.

Only the host step differs: normalisation (PaddleOCR), the 100-frame chunks and `t_out` are shared.
"""

from __future__ import annotations

import numpy as np

from .audio import MelParams
from .errors import SmtError

HOSTS = ("board", "hf")
DEFAULT_HOST = "board"
LEGACY_HOST = "hf"  # a manifest without preprocessing.host was written by the hf path


def check_host(name: str) -> str:
    if name not in HOSTS:
        raise SmtError(f"--host: '{name}' is not one of {', '.join(HOSTS)}")
    return name


def recorded_host(manifest: dict) -> str:
    """The host path a bundle's goldens were computed with ("hf" for bundles older than the record)."""
    return manifest.get("preprocessing", {}).get("host", LEGACY_HOST)


def audio_features(wave: np.ndarray, params: MelParams, host: str) -> np.ndarray:
    """Log-mel [num_mel_bins, frames] float32 on the chosen host path."""
    if check_host(host) == "board":
        from .board_audio import board_log_mel

        return board_log_mel(wave, params)
    from .audio import log_mel

    return log_mel(wave, params)


def image_pixels(image: np.ndarray, width: int, height: int, host: str) -> np.ndarray:
    """uint8 [H0, W0, 3] RGB -> float32 [1, 3, height, width] raw 0..255 on the chosen host path."""
    if check_host(host) == "board":
        from .board_image import board_resize_rgb

        return board_resize_rgb(image, width, height)
    from .image import resize_rgb

    return resize_rgb(image, width, height)


def audio_warnings(wave: np.ndarray, preprocessing: dict) -> list[str]:
    """One line per board-only behaviour this clip meets (quiet input, extra or missing frames), for `run`."""
    from .board_audio import clip_facts, clip_warnings

    params = MelParams.from_dict(preprocessing)
    facts = clip_facts(np.asarray(wave, dtype=np.float32), params, int(preprocessing.get("n_window", 50)))
    return clip_warnings(facts, params)
