"""Media kinds a bundle can take, each with its golden file name and how that file is read and written.

Shared code (conversion, goldens, `verify`) asks the modality object instead of branching on "audio"/"image".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from smt_convert.runtime.errors import SmtError


def _load_audio(path: Path) -> np.ndarray:
    from smt_convert.runtime.audio import load_audio

    return load_audio(path)


def _save_audio(media: np.ndarray, path: Path) -> None:
    import soundfile

    soundfile.write(path, np.asarray(media, dtype=np.float32), 16000, subtype="FLOAT")


def _load_image(path: Path) -> np.ndarray:
    from smt_convert.runtime.image import load_image

    return load_image(path)


def _save_image(media: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(media, dtype=np.uint8)).save(path)


@dataclass(frozen=True)
class Modality:
    name: str  # "audio", "image", "text"
    golden_file: str | None  # golden input inside golden/ (None: no media)
    cli_flag: str | None  # the `run` option that takes it
    load: Callable[[Path], Any] | None = None
    save: Callable[[Any, Path], None] | None = None

    @property
    def has_media(self) -> bool:
        return self.golden_file is not None


MODALITIES = {
    "audio": Modality("audio", "input.wav", "--audio", _load_audio, _save_audio),
    "image": Modality("image", "input.png", "--image", _load_image, _save_image),
    "text": Modality("text", None, None),
}


def modality(name: str) -> Modality:
    found = MODALITIES.get(name)
    if found is None:
        raise SmtError(f"modality: '{name}' is not one of {', '.join(MODALITIES)}")
    return found
