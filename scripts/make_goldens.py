"""Make the golden inputs a bundle is checked with, once (the files are committed; this records how).

- speech-en.wav: a short English sentence spoken by espeak-ng (`apt-get install espeak-ng`), 16 kHz mono 16-bit,
  peak 0.5, its length kept off a multiple of the 160-sample hop (the board's extra-frame case has its own tests);
- page-en.png: a page of known text rendered with DejaVu Sans (`fonts-dejavu-core`), 1024x768.
Each with its text in a .txt file beside it: what a converted real model should transcribe or read.

    python scripts/make_goldens.py converters/goldens
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageDraw, ImageFont

SPEECH = "The quick brown fox jumps over the lazy dog."
PAGE = ["SpacemiT K1 test page", "The quick brown fox jumps", "over the lazy dog.", "Invoice 2026-12-04: 42.50 EUR"]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
RATE = 16000


def speech(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), SPEECH], check=True)
        wave, rate = sf.read(raw, dtype="float32")
    wave = soxr.resample(wave, rate, RATE, quality="HQ")
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    wave = wave[loud[0]: loud[-1] + RATE // 10]   # starts on the voice (the board and hf paths pad it differently)
    if len(wave) % 160 == 0:
        wave = np.concatenate([wave, np.zeros(75, np.float32)])
    wave = 0.5 * wave / np.abs(wave).max()
    sf.write(out / "speech-en.wav", wave, RATE, subtype="PCM_16")
    (out / "speech-en.txt").write_text(SPEECH + "\n")


def page(out: Path) -> None:
    image = Image.new("RGB", (1024, 768), (250, 250, 247))
    draw = ImageDraw.Draw(image)
    title, body = ImageFont.truetype(FONT, 56), ImageFont.truetype(FONT, 48)
    top = 90
    for i, line in enumerate(PAGE):
        draw.text((70, top), line, fill=(20, 20, 20), font=title if i == 0 else body)
        top += 150
    draw.line((70, 190, 954, 190), fill=(40, 70, 160), width=4)
    image.save(out / "page-en.png", optimize=True)
    (out / "page-en.txt").write_text("\n".join(PAGE) + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "converters/goldens")
    target.mkdir(parents=True, exist_ok=True)
    speech(target)
    page(target)
