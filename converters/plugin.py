"""The plugin registry and the small records a plugin hands to the shared machinery.

A plugin is one class in `archs/`, registered with `@register`. It answers, for one model family:
what the checkpoint looks like (hyperparameters, expected tensors), how text tensors map to GGUF,
how its encoders are wrapped for ONNX export, and what the board config and prompt rules are.
The shared code (`convert.py`, `text_gguf.py`, `onnx_export.py`, `reference.py`) stays architecture-blind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from smt_convert.runtime.errors import SmtError

PLUGINS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a plugin reachable by its CLI name and its HF `architectures` values."""
    if cls.name in PLUGINS:
        raise ValueError(f"plugin {cls.name} registered twice")
    PLUGINS[cls.name] = cls
    return cls


def _load_builtin_plugins() -> None:
    # Importing the package modules runs their @register decorators.
    from smt_convert.archs import paddleocr_vl, qwen3_5, qwen3_asr  # noqa: F401  (they register themselves)


def get_plugin(name: str):
    _load_builtin_plugins()
    cls = PLUGINS.get(name)
    if cls is None:
        raise SmtError(f"unknown architecture '{name}' (supported: {', '.join(sorted(PLUGINS))})")
    return cls()


def all_plugins() -> list:
    _load_builtin_plugins()
    return [PLUGINS[n]() for n in sorted(PLUGINS)]


def detect_plugin(config: dict, config_path) -> object:
    """Pick the plugin for a checkpoint from its config.json `architectures` (then the plugin's own test)."""
    _load_builtin_plugins()
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise SmtError(f"{config_path}: architectures: expected a list of class names")
    for cls in PLUGINS.values():
        if any(a in cls.hf_architectures for a in archs):
            return cls()
    if not archs:  # only an unlabelled config is identified by its shape
        for cls in PLUGINS.values():
            if cls.matches(config):
                return cls()
    known = sorted(a for cls in PLUGINS.values() for a in cls.hf_architectures)
    shown = ", ".join(archs) if archs else "none"
    raise SmtError(f"{config_path}: architectures: {shown} is not supported (supported: {', '.join(known)})")


@dataclass
class TextTensor:
    """One tensor of the text GGUF: which checkpoint tensors it is made from and how."""

    name: str                                  # GGUF tensor name, e.g. "blk.0.attn_q.weight"
    sources: tuple[str, ...]                   # checkpoint tensor names
    shape: tuple[int, ...]                     # numpy-order shape of the result
    transform: Callable[..., np.ndarray] | None = None  # f(*arrays) -> array; None means the single source as is

    def build(self, load: Callable[[str], np.ndarray]) -> np.ndarray:
        arrays = [load(s) for s in self.sources]
        out = self.transform(*arrays) if self.transform else arrays[0]
        if tuple(out.shape) != tuple(self.shape):
            raise SmtError(f"tensor {self.name}: transform produced {list(out.shape)}, planned {list(self.shape)}")
        return out


@dataclass
class EncoderOutput:
    """One ONNX file of the bundle, as the plan describes it before export."""

    role: str            # "audio-frontend", "audio-backend", "vision"
    file: str            # file name inside the bundle
    params: int          # parameters it carries (for inspect)
    inputs: list[dict]   # planned I/O contract: [{"name", "shape", "dtype"}]
    outputs: list[dict]


@dataclass
class Plan:
    """Everything a conversion will write, known before any tensor data is read; `inspect` prints it."""

    plugin: object
    hparams: object
    stem: str
    outtype: str
    onnx_dtype: str
    text_file: str
    text_arch: str
    modality: str                              # "audio", "image" or "text" (no encoder)
    golden_file: str | None                    # golden input file name inside golden/ (None: text only)
    text_tensors: list[TextTensor]
    text_types: dict[str, str]                 # GGUF name -> ggml type name chosen for it
    text_bytes: int                            # planned GGUF tensor data size
    encoders: list[EncoderOutput]
    dropped: dict[str, str]                    # checkpoint tensors not converted, with the reason
    tokenizer: object                          # converters.tokenizer.TokenizerSource
    params: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
