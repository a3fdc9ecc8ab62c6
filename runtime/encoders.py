"""The encoders a bundle can hold, found by the board-config block they serve (as `DECODERS` is keyed by the GGUF
architecture): `audio_model` -> Qwen3-ASR's split audio encoder, `vision_model` -> the static vision session. Each
entry opens its sessions from that block and makes its host input from one medium, so the pipeline never asks
which family or which modality it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class EncoderEntry:
    block: str  # the config.json block it serves
    open: Callable[[Any, dict, int | None], Any]  # (bundle, block, threads) -> encoder with .encode(features)
    features: Callable[[Any, Any, str], np.ndarray]  # (runner, media, host) -> the encoder's host input


def _open_audio(bundle, block: dict, threads: int | None):
    from smt_convert.runtime.audio_encoder import SplitAudioEncoder

    return SplitAudioEncoder(
        bundle.path(block["frontend_model_path"]),
        bundle.path(block["backend_model_path"]),
        intra_op_num_threads=threads,
    )


def _audio_features(runner, media, host: str) -> np.ndarray:
    """Mono 16 kHz samples -> log-mel features, on the board's or Hugging Face's host path."""
    from smt_convert.runtime import host as hosts
    from smt_convert.runtime.audio import MelParams, load_audio

    params = MelParams.from_dict(runner.manifest["preprocessing"])
    wave = load_audio(media, params.sample_rate) if isinstance(media, (str, Path)) else media
    return hosts.audio_features(np.asarray(wave, dtype=np.float32), params, host)


def _open_vision(bundle, block: dict, threads: int | None):
    from smt_convert.runtime.vision_encoder import VisionEncoder

    return VisionEncoder(bundle.path(block["model_path"]), intra_op_num_threads=threads)


def image_size(runner) -> tuple[int, int]:
    """(H, W) of the vision input, as the board reads it from config.json (the session checks it on load)."""
    block = runner.bundle.config.get("vision_model", {})
    if "input_size" in block:
        return int(block["input_size"]), int(block["input_size"])
    if "input_height" in block and "input_width" in block:
        return int(block["input_height"]), int(block["input_width"])
    return runner.encoder().input_size


def _image_features(runner, media, host: str) -> np.ndarray:
    """An image -> resized [1,3,H,W] pixels: raw 0..255, or normalised when config.json has vision_preprocess."""
    from smt_convert.runtime import host as hosts
    from smt_convert.runtime.image import load_image, normalize

    image = load_image(media) if isinstance(media, (str, Path)) else media
    height, width = image_size(runner)
    pixels = hosts.image_pixels(image, width, height, host)
    norm = runner.bundle.config.get("vision_preprocess")
    if norm:
        pixels = normalize(pixels, norm.get("rescale_factor", 1.0), norm["image_mean"], norm["image_std"])
    return pixels


ENCODERS = {
    "audio_model": EncoderEntry("audio_model", _open_audio, _audio_features),
    "vision_model": EncoderEntry("vision_model", _open_vision, _image_features),
}


def encoder_entry(config: dict) -> EncoderEntry | None:
    """The entry for the encoder block config.json carries (None: a text-only bundle)."""
    return next((entry for block, entry in ENCODERS.items() if isinstance(config.get(block), dict)), None)
