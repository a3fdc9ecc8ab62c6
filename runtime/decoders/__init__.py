"""One numpy decoder per GGUF architecture."""

from smt_convert.runtime.decoders.paddleocr import PaddleOCRDecoder
from smt_convert.runtime.decoders.qwen35 import Qwen35Decoder
from smt_convert.runtime.decoders.qwen3vl import Qwen3VLDecoder
from smt_convert.runtime.errors import SmtError, where

# general.architecture -> decoder class taking a GGUFModel.
DECODERS = {
    "qwen3vl": Qwen3VLDecoder,
    "qwen3vlmoe": Qwen3VLDecoder,
    "qwen35": Qwen35Decoder,
    "qwen35moe": Qwen35Decoder,
    "paddleocr": PaddleOCRDecoder,
}


def load_decoder(model, budget: int | str | None = None, threads: int | None = None):
    """Build the decoder for `model.arch`, or say which architectures this runtime knows.
    `budget` (bytes, or "768M"/"2G") and `threads`: see runtime/weights.py (defaults from the environment)."""
    cls = DECODERS.get(model.arch)
    if cls is None:
        known = ", ".join(sorted(DECODERS))
        raise SmtError(f"{where(model.path, 'general.architecture')}: unsupported '{model.arch}' (known: {known})")
    return cls(model, budget=budget, threads=threads)
