"""The golden inputs every bundle is checked with: a spoken English sentence and a rendered page of known text
(`converters/goldens/`, made once by scripts/make_goldens.py), so that on real weights the card shows the model
working (its transcript or reading of a known input), not an answer to a synthetic signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDENS = Path(__file__).resolve().parent / "goldens"
SPEECH, PAGE = GOLDENS / "speech-en.wav", GOLDENS / "page-en.png"


def speech() -> np.ndarray:
    """espeak-ng saying SPEECH_TEXT: float32 mono 16 kHz, 3.1 s (two full 100-frame chunks and a partial one)."""
    import soundfile as sf

    wave, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    return wave


def page() -> np.ndarray:
    """A 1024x768 page of PAGE_TEXT (DejaVu Sans) as uint8 [H, W, 3]: every vision input size resizes it."""
    from PIL import Image

    with Image.open(PAGE) as image:
        return np.asarray(image.convert("RGB"))


def text_of(modality: str) -> str | None:
    """What the golden input says ("audio") or shows ("image"): what a real model should answer with."""
    path = {"audio": SPEECH, "image": PAGE}.get(modality)
    return path.with_suffix(".txt").read_text(encoding="utf-8").strip() if path else None
